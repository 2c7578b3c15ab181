"""Worker for the multi-process tests: trains a few OPID steps under DDP or DeepSpeed ZeRO-2/3.

Launched by tests/test_distributed.py with ``torchrun --nproc_per_node 2``. Rank 0 plays tasks
that end after one step and rank 1 tasks that last three, so the ranks run different numbers of
turns and produce different numbers of rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from environments import FetchEnvironment  # noqa: E402
from opid_trl import EpisodeSkills, OPIDConfig, OPIDTrainer  # noqa: E402


class ShapedFetch(FetchEnvironment):
    """Fetch with a reward that depends on the sampled text, so that a random model's episodes get
    different outcomes and the outcome advantage (hence the loss) is not zero."""

    def step(self, text):
        result = super().step(text)
        result.reward += float(len(text) % 3)
        return result


def fixed_skills(trajectories):
    """Deterministic skills so every rank runs both skill passes."""
    return [EpisodeSkills("Walk east until the target is here, then take it.", {0: "Go east now."})
            for _ in trajectories]


def policy_extractor():
    from opid_trl.skills.extractors import PolicySkillExtractor

    return PolicySkillExtractor(max_new_tokens=4, max_record_chars=400)


def careful_skills(trajectories):
    """Skills for the "carefully" tasks only (rank 1's): rank 0 scores nothing, and still runs every
    pass rank 1 runs (on a placeholder)."""
    return [EpisodeSkills("Read the tool result before answering.", {1: "Answer with the result."})
            if "carefully" in t.task else None for t in trajectories]


def tool_pipeline(model_dir: str) -> dict:
    """TRL's `tools` rollout (`tests.test_dropin_tools`): rank 0's prompts are answered in one turn, rank 1's
    call the tool first, so rank 0 leaves TRL's tool loop at once while rank 1 generates again (under
    ZeRO-3 a generation gathers the weights from every rank: without `generation.tool_loop` this hangs)."""
    from opid_trl.testing import first_turn_asking, scripted_model, tool_call, tool_tokenizer

    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        return a * b

    tokenizer = tool_tokenizer(model_dir)
    model = scripted_model(model_dir, tokenizer, first_turn_asking("Multiply", tool_call("multiply", a=3, b=4)))
    prompts = [f"Say {i}." if i % 4 < 2 else f"Multiply {i} by 4 carefully." for i in range(16)]
    return dict(model=model, processing_class=tokenizer, tools=[multiply], skill_extractor=careful_skills,
                reward_funcs=lambda completions, **kwargs: [len(c[-1]["content"]) / 10 for c in completions],
                train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts]))


def deepspeed_config(stage: int) -> dict:
    zero = {"stage": stage}
    if stage == 3:
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=0,
                    stage3_gather_16bit_weights_on_model_save=True)
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--backend", choices=["ddp", "zero2", "zero3"], required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--variant", choices=["default", "steps_per_generation", "policy_extractor", "tools"],
                        default="default", help="steps_per_generation: two micro-steps per generation (rows padded "
                        "to a multiple of them on every rank); policy_extractor: the policy as its own skill "
                        "extractor (ranks ask it different numbers of analyses); tools: TRL's tool-call rollout, "
                        "rank 0 answering in one turn and rank 1 in two")
    args = parser.parse_args()

    tasks = []
    for i in range(8):  # alternating short / long tasks; with no shuffling rank 0 gets short, rank 1 long
        tasks.append({"seed": i, "max_steps": 1 if i % 2 == 0 else 3})
    config = OPIDConfig(
        output_dir=os.path.join(os.path.dirname(args.output), f"run-{args.backend}"),
        per_device_train_batch_size=4 if args.variant == "tools" else 2,
        num_generations=2,
        max_steps=2,
        max_completion_length=160 if args.variant == "tools" else 8,
        **({} if args.variant == "tools" else {"max_turns": 4}),
        max_prompt_length=512,
        max_rows_per_forward=2,
        learning_rate=1e-3,
        beta=0.01,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        shuffle_dataset=False,
        use_cpu=True,
        bf16=False,
        seed=0,
        deepspeed=deepspeed_config(2 if args.backend == "zero2" else 3) if args.backend != "ddp" else None,
        **({"steps_per_generation": 2} if args.variant == "steps_per_generation" else {}),
    )
    if args.variant == "tools":
        trainer = OPIDTrainer(args=config, **tool_pipeline(args.model))
    else:
        trainer = OPIDTrainer(
            model=args.model,
            args=config,
            train_dataset=Dataset.from_list(tasks),
            processing_class=AutoTokenizer.from_pretrained(args.model),
            environment=ShapedFetch,
            skill_extractor=policy_extractor() if args.variant == "policy_extractor" else fixed_skills,
        )
    trainer.train()
    if trainer.accelerator.is_main_process:
        history = [h for h in trainer.state.log_history if "loss" in h]
        result = {
            "losses": [h["loss"] for h in history],
            "grad_norms": [h["grad_norm"] for h in history],
            "rows": [h.get("env/rows") for h in history],
            "episode_length": [h.get("env/episode_length") for h in history],
            "skill_abs_max": [h.get("skill/adv_abs_max") for h in history],
            "step_rows_scored": [h.get("skill/step_rows_scored") for h in history],
            "tool_calls": [h.get("tools/call_frequency") for h in history],
            "joined_tool_rounds": getattr(getattr(trainer, "tool_loop_sync", None), "joined_rounds", None),
            "finite": all(math.isfinite(h["loss"]) for h in history),
            "world_size": trainer.accelerator.num_processes,
        }
        with open(args.output, "w") as f:
            json.dump(result, f)
    # Tear the process group down before the interpreter exits: left to process teardown, gloo's
    # threads can abort the process ("terminate called without an active exception").
    trainer.accelerator.end_training()
    # Even so, DeepSpeed's ZeRO-2 teardown still aborts now and then after everything is written:
    # the result is on disk, so leave without the interpreter's finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
