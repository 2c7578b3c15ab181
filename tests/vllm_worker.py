"""Worker for the real-engine tests: trains OPID steps with vLLM rollouts and measures the engine.

Launched by tests/test_vllm.py in its own process (vLLM's in-process engine sets up
torch.distributed, which must not leak into the test session): ``python vllm_worker.py colocate``
or ``torchrun --nproc_per_node 2 vllm_worker.py server --server-url ...``. In server mode, rank 0
plays tasks that end after one step and rank 1 tasks that last three, so the two processes send
different numbers of requests and play different numbers of turns.

After training, the worker checks the engine against the trainer on fresh rollout rows:

- ``gap_before_sync``: sampler log-probs vs a trainer forward before the final weight sync (the
  engine still holds the previous step's weights: must be visibly non-zero);
- ``gap_after_sync``: the same after the sync (the engine samples with the trainer's weights);
- ``skill_delta_gap``: the skill advantage ``l_skill - l_old`` scored on the engine vs on the
  trainer, on the same rows and the same skill prompts, next to ``skill_delta_abs_max``, its size.

With ``--temperature`` other than 1, the sampler's log-probs are compared with the trainer's at
that temperature (vLLM's ``processed_logprobs``); the engine scores prompts without temperature
while the trainer's forward divides by it, so ``skill_delta_gap`` then measures the approximation
of engine scoring at that temperature.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dist_worker import ShapedFetch, fixed_skills  # noqa: E402


def pad(trainer, sequences: list[list[int]], side: str):
    """Token id lists -> (ids, mask) padded on ``side``, on the trainer's device."""
    from opid_trl.rollout.step_rows import pad_token_lists

    return pad_token_lists(sequences, trainer.processing_class.pad_token_id, side, trainer.accelerator.device)


def tasks_for(mode: str) -> list[dict]:
    if mode == "server":  # alternating short / long tasks; with no shuffling rank 0 gets short, rank 1 long
        return [{"seed": i, "max_steps": 1 if i % 2 == 0 else 3} for i in range(8)]
    return [{"seed": i, "max_steps": 3} for i in range(16)]


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def prefix_reuse(backend, prompt_ids: list[list[int]], completions: list[list[int]], originals: list[list[int]]) -> dict:
    """Score the same rows reading the engine's prefix cache and not: tokens computed per row by
    each, what the cache should have served (the full blocks of the prefix shared with the prompt
    the engine generated from, ``originals``), and the largest difference of their log-probs. The
    cached pass goes first, so that the full pass cannot be what filled the cache."""
    import torch

    from opid_trl.generation.base import prefill_count

    llm = getattr(backend, "llm", None)  # a server never reads its prefix cache for scoring: no block reused
    block = llm.llm_engine.vllm_config.cache_config.block_size if llm is not None else None
    start = prefill_count(backend)
    reused = backend.score(prompt_ids, completions)
    middle = prefill_count(backend)
    full = backend.score(prompt_ids, completions, reuse_prefix=False)
    cost_reused, cost_full = middle.since(start), prefill_count(backend).since(middle)
    # the same rows again: their scored tokens are in the cache now, so each is scored a second time without it
    end = prefill_count(backend)
    again = backend.score(prompt_ids, completions)
    cost_again = prefill_count(backend).since(end)
    return {
        "computed_per_row_reused": cost_reused.computed / cost_reused.rows,
        "computed_per_row_full": cost_full.computed / cost_full.rows,
        "tokens_per_row": cost_full.tokens / cost_full.rows,
        "shared_prefix_per_row": sum(map(shared_prefix, prompt_ids, originals)) / len(originals),
        # what a prefix cache of whole blocks can serve: the shared prefix's full blocks
        "expected_computed_per_row_reused": statistics.mean(
            len(p) + len(c) - (shared_prefix(p, o) // block * block if block else 0)
            for p, c, o in zip(prompt_ids, completions, originals)),
        "block_size": block,
        "logp_gap": max((torch.tensor(a) - torch.tensor(b)).abs().max().item() for a, b in zip(reused, full)),
        "again_computed_per_row": cost_again.computed / cost_again.rows,
        "again_rescored_rows": cost_again.rescored,
        "again_logp_gap": max((torch.tensor(a) - torch.tensor(b)).abs().max().item() for a, b in zip(again, full)),
    }


def engine_vs_trainer(trainer, num_tasks: int = 4) -> dict:
    """Play fresh episodes on the engine and compare its log-probs with the trainer's on their rows."""
    import torch

    backend = trainer.generation_backend
    runner = trainer._runner
    tasks = [{"seed": 100 + i, "max_steps": 3} for i in range(num_tasks)]

    def gap(episodes) -> float:
        rows = [(ep, t) for ep in episodes for t in range(len(ep.steps))]
        prompts = [ep.prompt_ids[t] for ep, t in rows]
        completions = [ep.completion_ids[t] for ep, t in rows]
        trainer_logps = trainer._logps(*pad(trainer, prompts, "left"), *pad(trainer, completions, "right"))
        worst = 0.0
        for i, (ep, t) in enumerate(rows):
            sampled = torch.tensor(ep.sampling_logps[t])
            worst = max(worst, (trainer_logps[i, : len(sampled)].cpu() - sampled).abs().max().item())
        return worst

    trainer.model.eval()
    # Outside a session nothing is synced: the engine still holds the weights of the last rollout.
    before = runner.play(tasks, [0] * num_tasks, [f"b{i}" for i in range(num_tasks)], backend)
    with backend.session():  # global_step moved since the last rollout: this syncs
        after = runner.play(tasks, [0] * num_tasks, [f"a{i}" for i in range(num_tasks)], backend)
        rows = [(ep, t) for ep in after for t in range(len(ep.steps))]
        prompts = [ep.prompt_ids[t] for ep, t in rows]
        completions = [ep.completion_ids[t] for ep, t in rows]
        skill = "Walk east until the target is here, then take it."
        skill_prompts = trainer.policy.tokenize_user_messages([
            ep.skill_prompt(t, skill, None) for ep, t in rows])
        # the prefix cache the rollout left: episode skills sit after the task line, step skills late
        step_prompts = trainer.policy.tokenize_user_messages([ep.skill_prompt(t, None, skill) for ep, t in rows])
        reuse = {kind: prefix_reuse(backend, ids, completions, prompts)
                 for kind, ids in (("episode", skill_prompts), ("step", step_prompts))}
        engine_skill = backend.score(skill_prompts, completions)
        engine_old = backend.score(prompts, completions, reuse_prefix=False)
    completion_ids, completion_mask = pad(trainer, completions, "right")
    trainer_skill = trainer._logps(*pad(trainer, skill_prompts, "left"), completion_ids, completion_mask)
    trainer_old = trainer._logps(*pad(trainer, prompts, "left"), completion_ids, completion_mask)
    delta_gap, delta_max, score_gap = 0.0, 0.0, 0.0
    for i, completion in enumerate(completions):
        n = len(completion)
        engine_delta = torch.tensor(engine_skill[i]) - torch.tensor(engine_old[i])
        trainer_delta = (trainer_skill[i, :n] - trainer_old[i, :n]).cpu()
        delta_gap = max(delta_gap, (engine_delta - trainer_delta).abs().max().item())
        delta_max = max(delta_max, trainer_delta.abs().max().item())
        score_gap = max(score_gap, (torch.tensor(engine_old[i]) - trainer_old[i, :n].cpu()).abs().max().item())
    return {
        "prefix_reuse": reuse,
        "gap_before_sync": gap(before),
        "gap_after_sync": gap(after),
        "score_gap_after_sync": score_gap,
        "skill_delta_gap": delta_gap,
        "skill_delta_abs_max": delta_max,
        "rows_compared": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["colocate", "server"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--server-url", default=None)
    parser.add_argument("--skill-backend", choices=["trainer", "vllm"], default="vllm")
    parser.add_argument("--async-episodes", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", default="auto", help="vllm_dtype of a colocated engine")
    parser.add_argument("--block-size", type=int, default=None, help="vllm_block_size of a colocated engine")
    args = parser.parse_args()

    from conftest import tiny_config
    from datasets import Dataset
    from transformers import AutoTokenizer

    from opid_trl import OPIDTrainer

    config = tiny_config(
        Path(args.output).parent / f"run-{args.mode}",
        per_device_train_batch_size=4 if args.mode == "colocate" else 2,
        max_completion_length=12,
        max_turns=4,
        learning_rate=3e-3,
        beta=0.0,
        shuffle_dataset=False,
        use_vllm=True,
        vllm_mode=args.mode,
        vllm_server_base_url=args.server_url,
        vllm_server_timeout=120,
        skill_logprob_backend=args.skill_backend,
        async_episodes=args.async_episodes,
        temperature=args.temperature,
        vllm_dtype=args.dtype,
        vllm_block_size=args.block_size,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    trainer = OPIDTrainer(model=args.model, args=config, train_dataset=Dataset.from_list(tasks_for(args.mode)),
                          processing_class=tokenizer, environment=ShapedFetch, skill_extractor=fixed_skills)
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    checks = engine_vs_trainer(trainer)
    result = {
        "world_size": trainer.accelerator.num_processes,
        "losses": [h["loss"] for h in history],
        "finite": all(math.isfinite(h["loss"]) for h in history),
        "rows": [h["env/rows"] for h in history],
        "episode_length": [h["env/episode_length"] for h in history],
        "skill_abs_max": [h.get("skill/adv_abs_max", 0.0) for h in history],
        "sampling_gap_max": [h.get("sampling/logp_gap_max") for h in history],
        "weight_syncs": trainer.generation_backend.weight_syncs,
        "backend": type(trainer.generation_backend).__name__,
        **checks,
    }
    rank = trainer.accelerator.process_index
    with open(args.output if rank == 0 else f"{args.output}.rank{rank}", "w") as f:
        json.dump(result, f)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
