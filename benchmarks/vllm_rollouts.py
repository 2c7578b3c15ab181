"""Rollout and step throughput: transformers `generate` vs a vLLM engine (colocated, server), turn-
synchronous vs asynchronous episodes, and OPID vs GRPO step time with the skill prompts re-scored
on the trainer or on the engine. Same model, same tasks, one run.

Each case runs in its own process (a colocated engine sets up torch.distributed for its process);
the server cases share one CPU vLLM server started by this script. Rollout cases play
``--episodes`` fetch episodes of up to ``--turns`` turns and ``--tokens`` tokens per turn, once to
warm up and ``--repeats`` times measured; step cases train ``--steps`` OPID/GRPO steps of
``--step-episodes`` episodes on the colocated engine and drop the first (engine warm-up).
``--parts`` runs the rollout or the step part alone (each part's ratios are within that part).
Medians everywhere; ratios are against the transformers rollout and the GRPO step measured in the
same run. The last line printed is the JSON summary, also written
to ``--output``.

    OMP_NUM_THREADS=1 python benchmarks/vllm_rollouts.py                       # embedded SmolLM2-135M
    OMP_NUM_THREADS=1 python benchmarks/vllm_rollouts.py --model tiny --repeats 2   # seconds, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROLLOUT_CASES = ("transformers", "colocate", "server", "server_async")
STEP_CASES = ("grpo", "opid_trainer_scoring", "opid_vllm_scoring")


def build_trainer(args: argparse.Namespace, case: str, output_dir: str, episodes: int):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from opid_trl import OPIDConfig, OPIDTrainer

    engine = {"transformers": None, "server": "server", "server_async": "server"}.get(case, "colocate")
    skills = case.startswith("opid")
    config = OPIDConfig(
        output_dir=output_dir,
        per_device_train_batch_size=episodes,
        num_generations=4,
        max_steps=args.steps,
        max_completion_length=args.tokens,
        max_turns=args.turns,
        history_length=2,
        max_prompt_length=1024,
        max_rows_per_forward=8,
        learning_rate=1e-6,
        beta=0.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        use_vllm=engine is not None,
        vllm_mode=engine or "colocate",
        vllm_server_base_url=args.server_url,
        async_episodes=case == "server_async",
        skill_coef_episode=1e-3 if skills else 0.0,
        skill_coef_step=1e-3 if skills else 0.0,
        skill_logprob_backend="vllm" if case == "opid_vllm_scoring" else "trainer",
        log_analyses=False,
    )
    tasks = Dataset.from_list([{"seed": i} for i in range(max(episodes * (args.steps + 1), 64))])
    return OPIDTrainer(model=args.model_dir, args=config, train_dataset=tasks,
                       processing_class=AutoTokenizer.from_pretrained(args.model_dir), environment="fetch",
                       skill_extractor="rule_based" if skills else None)


class DecodeSlots:
    """Wraps a backend's `sample`: the generated lengths of every call. A turn-synchronous call (one
    turn of the batch) lasts as long as its longest generation, so ``1 - sum(lengths) / (n * max)``
    of its decode slots are idle: the straggler cost that asynchronous episodes remove (their calls
    hold one prompt each)."""

    def __init__(self, backend) -> None:
        self.calls: list[list[int]] = []
        sample = backend.sample

        def recorded(prompt_ids, max_new_tokens=None):
            samples = sample(prompt_ids, max_new_tokens)
            self.calls.append([len(s.token_ids) for s in samples])
            return samples

        backend.sample = recorded

    def idle_share(self, since: int = 0) -> float:
        """Idle share of the decode slots of the calls after the first ``since``."""
        calls = [c for c in self.calls[since:] if c]
        slots = sum(len(c) * max(c) for c in calls)
        return 1.0 - sum(sum(c) for c in calls) / slots if slots else 0.0


def run_rollout_case(args: argparse.Namespace, case: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, case, tmp, args.episodes)
        backend, runner = trainer.generation_backend, trainer._runner
        slots = DecodeSlots(backend)
        trainer.model.eval()
        times, steps, tokens = [], [], []
        warm_calls = 0
        for repeat in range(args.repeats + 1):
            tasks = [{"seed": 1000 * repeat + i // 4} for i in range(args.episodes)]
            start = time.perf_counter()
            with backend.session():
                episodes = runner.play(tasks, [i // 4 for i in range(args.episodes)],
                                      [f"{repeat}-{i}" for i in range(args.episodes)], backend,
                                      asynchronous=case == "server_async")
            elapsed = time.perf_counter() - start
            if repeat == 0:
                warm_calls = len(slots.calls)
                continue  # warm-up: engine compilation, first weight sync
            times.append(elapsed)
            steps.append(sum(len(ep.steps) for ep in episodes))
            tokens.append(sum(len(ids) for ep in episodes for ids in ep.completion_ids))
        trainer.accelerator.end_training()
    return {
        "rollout_s": statistics.median(times),
        "env_steps_per_s": statistics.median(s / t for s, t in zip(steps, times)),
        "tokens_per_s": statistics.median(k / t for k, t in zip(tokens, times)),
        "env_steps": statistics.median(steps),
        "tokens": statistics.median(tokens),
        "decode_slots_idle_frac": slots.idle_share(warm_calls),
    }


def run_step_case(args: argparse.Namespace, case: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, case, tmp, args.step_episodes)
        trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h][1:]  # the first step warms the engine up
        trainer.accelerator.end_training()
    median = lambda key: statistics.median(h.get(key, 0.0) for h in history)  # noqa: E731
    return {
        "step_s": median("step_time"),
        "rollout_s": median("time/rollout"),
        "skill_scoring_s": median("time/skill_scoring"),
        "analysis_s": median("time/analysis"),
        "rows": median("env/rows"),
        "steps_measured": len(history),
    }


def run_case_process(args: argparse.Namespace, case: str) -> dict:
    command = [sys.executable, __file__, "--case", case, "--model-dir", args.model_dir]
    for name in ("episodes", "step_episodes", "turns", "tokens", "repeats", "steps"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.server_url:
        command += ["--server-url", args.server_url]
    from opid_trl.generation.vllm_cpu import engine_environment

    proc = subprocess.run(command, env=engine_environment(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resolve_model(name: str, directory: str) -> str:
    if name == "tiny":
        from opid_trl.testing import save_tiny_vllm_model

        return str(save_tiny_vllm_model(directory))
    from opid_trl.runs.embedded import resolve_model as resolve

    return resolve(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="an embedded model name, a folder, or 'tiny'")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="training steps per step case (the first is dropped)")
    parser.add_argument("--step-episodes", type=int, default=4, help="episodes per training step in the step cases")
    parser.add_argument("--parts", nargs="+", choices=["rollout", "step"], default=["rollout", "step"],
                        help="run only some parts; a part run alone replaces that part in an existing --output")
    parser.add_argument("--rollout-cases", nargs="+", choices=ROLLOUT_CASES, default=list(ROLLOUT_CASES),
                        help="rollout cases to run (ratios against transformers need it among them)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "vllm_rollouts.json"))
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--server-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case is not None:  # one case, in this process
        result = run_rollout_case(args, args.case) if args.case in ROLLOUT_CASES else run_step_case(args, args.case)
        print(json.dumps(result))
        return

    from opid_trl.generation.vllm_cpu import running_server
    from opid_trl.testing import free_port

    output = Path(args.output)
    summary = json.loads(output.read_text()) if output.exists() and len(args.parts) < 2 else {}
    summary.update({
        "model": args.model,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}",
        # the colocated engine is TRL's (vLLM's default dtype: a float32 checkpoint runs in bfloat16);
        # the server runs float32, as `opid_trl.generation.vllm_cpu.server_command` starts it by default
        "engine_dtype": {"colocate": "auto (bfloat16 for a float32 checkpoint)", "server": "float32"},
    })
    summary.setdefault("results", {})
    summary.setdefault("ratios", {})
    with tempfile.TemporaryDirectory() as tmp:
        args.model_dir = resolve_model(args.model, tmp) if not os.path.isdir(args.model) else args.model
        if "rollout" in args.parts:
            rollout = {}
            with running_server(args.model_dir, free_port(), os.path.join(tmp, "server.log"),
                                extra_args=("--max-num-seqs", str(args.episodes * 2))) as url:
                args.server_url = url
                for case in args.rollout_cases:
                    rollout[case] = run_case_process(args, case)
                    print(case, rollout[case], flush=True)
            args.server_url = None
            summary["results"]["rollout"] = rollout
            summary["rollout_setting"] = {k: getattr(args, k) for k in ("episodes", "turns", "tokens", "repeats")}
            if "transformers" in rollout:
                base = rollout["transformers"]["env_steps_per_s"]
                summary["ratios"].update({f"rollout_speedup_{case}_vs_transformers": rollout[case]["env_steps_per_s"] / base
                                          for case in rollout if case != "transformers"})
            if "server" in rollout and "server_async" in rollout:
                summary["ratios"]["async_vs_sync_server"] = (rollout["server_async"]["env_steps_per_s"]
                                                             / rollout["server"]["env_steps_per_s"])
            write(output, summary)
        if "step" in args.parts:
            step = {}
            for case in STEP_CASES:
                step[case] = run_case_process(args, case)
                print(case, step[case], flush=True)
            summary["results"]["step"] = step
            summary["step_setting"] = {"episodes": args.step_episodes, "turns": args.turns, "tokens": args.tokens,
                                       "steps": args.steps, "engine": "colocate"}
            summary["ratios"].update({
                "opid_trainer_scoring_vs_grpo_step": step["opid_trainer_scoring"]["step_s"] / step["grpo"]["step_s"],
                "opid_vllm_scoring_vs_grpo_step": step["opid_vllm_scoring"]["step_s"] / step["grpo"]["step_s"],
            })
            write(output, summary)
    print(json.dumps(summary))


def write(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
