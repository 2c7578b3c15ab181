"""OPID's training step on a CPU vLLM engine against transformers `generate`, at the quickstart's size.

Every case trains the quickstart's settings (``configs/quickstart_cpu.yaml``: 4 fetch episodes of
up to 4 turns x 32 tokens per step, the rule-based extractor; ``configs/quickstart_cpu_vllm.yaml``
for the engine: colocated, skill prompts scored on the engine) from the embedded model, without
the SFT warm start and with learning rate 0 (every step samples from the same policy). Optimizer
steps alternate between GRPO (skill weights 0) and OPID, so both share the process and the
machine's drift (as in ``benchmarks/opid_overhead.py``). The first GRPO and OPID steps are
warm-up and dropped; medians of the rest. Each case runs in its own process (the colocated engine
sets up torch.distributed):

- ``transformers``: the plain quickstart;
- ``engine``: the engine quickstart (bfloat16 engine, vLLM's default for a float32 checkpoint;
  128-token KV blocks, the CPU default); skill scoring reads the rollout's prefix cache;
- ``engine_no_prefix_reuse``: the same, scoring as before (every scored row a full prefill);
- ``engine_float32_blocks32``: ``vllm_dtype: float32`` (the trainer's dtype) and ``vllm_block_size: 32``.

Per case: the GRPO and OPID step times, their breakdown, OPID's extra time against one no-grad
trainer forward over the rows OPID re-scores (on the engine path that forward is run after each
OPID step as a yardstick, and its time is taken out of the step), the tokens the engine computed
per scored row, the sampler-vs-trainer log-prob gap, and the idle share of the engine's decode
slots (a turn waits for the longest generation of its batch). Ratios are within this run.

    OMP_NUM_THREADS=1 python benchmarks/vllm_step_cost.py --pairs 3
    OMP_NUM_THREADS=2 python benchmarks/vllm_step_cost.py --pairs 3 --cases engine transformers \
        --output benchmarks/results/vllm_step_cost_2threads.json     # as the quickstart runs: both cores
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
sys.path.insert(0, str(ROOT / "benchmarks"))

CASES = {
    "engine": ("quickstart_cpu_vllm.yaml", {}),
    "transformers": ("quickstart_cpu.yaml", {}),
    "engine_no_prefix_reuse": ("quickstart_cpu_vllm.yaml", {}),
    "engine_float32_blocks32": ("quickstart_cpu_vllm.yaml", {"vllm_dtype": "float32", "vllm_block_size": 32}),
}
LOGGED = ("time/rollout", "time/analysis_wait", "time/old_policy", "time/skill_scoring", "env/rows",
          "sampling/logp_gap_max", "sampling/logp_gap_mean", "skill/engine_prefill_tokens_per_row",
          "skill/engine_prefix_cached_frac", "skill/episode_rows_scored", "skill/step_rows_scored")


def engine_yardstick(trainer) -> dict[int, float]:
    """On the engine path: after each OPID skill stage, time one no-grad trainer forward over the
    skill prompts the engine scored (what the trainer path would have paid). Returns the dict the
    seconds go in, by optimizer step."""
    from opid_trl.rollout.step_rows import pad_token_lists

    backend, seconds, scored = trainer.generation_backend, {}, []
    score = backend.score

    def recorded(prompt_ids, completion_ids, reuse_prefix=True):
        if reuse_prefix:  # skill prompts (l_old's rescoring, when any, goes without the cache)
            scored.extend(zip(prompt_ids, completion_ids))
        return score(prompt_ids, completion_ids, reuse_prefix)

    backend.score = recorded
    add = trainer.skill_stage.add

    def add_then_measure(*args, **kwargs):
        result = add(*args, **kwargs)
        if scored:
            pad, device = trainer.processing_class.pad_token_id, trainer.accelerator.device
            start = time.perf_counter()
            trainer._logps(*pad_token_lists([list(p) for p, _ in scored], pad, "left", device),
                           *pad_token_lists([list(c) for _, c in scored], pad, "right", device))
            seconds[trainer.state.global_step] = time.perf_counter() - start
            scored.clear()
        return result

    trainer.skill_stage.add = add_then_measure
    return seconds


#: ``--smoke``: the test suite's tiny model, 2 turns of up to 8 tokens (the plumbing only)
SMOKE = {"max_completion_length": 8, "max_turns": 2}


def run_case(case: str, pairs: int, smoke: bool = False) -> dict:
    from opid_overhead import AlternateGRPOAndOPID, skill_forward_seconds
    from vllm_rollouts import DecodeSlots

    from opid_trl import OPIDTrainer
    from opid_trl.runs.embedded import resolve_model
    from opid_trl.runs.run_config import build_skill_extractor, build_tasks, build_training_args, load_run_config
    from opid_trl.testing import save_tiny_vllm_model

    if case == "engine_no_prefix_reuse":
        import opid_trl.generation.vllm as vllm_backends

        vllm_backends.prefix_reads_supported = lambda: False
    config_file, overrides = CASES[case]
    run = load_run_config(ROOT / "configs" / config_file)
    with tempfile.TemporaryDirectory() as tmp:
        args = build_training_args(run, output_dir=tmp, max_steps=2 + 2 * pairs, learning_rate=0.0,
                                   eval_strategy="no", save_strategy="no", report_to=[], logging_steps=1, **overrides,
                                   **(SMOKE if smoke else {}))
        model = str(save_tiny_vllm_model(Path(tmp) / "tiny")) if smoke else resolve_model(run.model)
        trainer = OPIDTrainer(model=model, args=args, train_dataset=build_tasks(run, "train"),
                              environment=run.environment.name, environment_kwargs=run.environment.kwargs,
                              skill_extractor=build_skill_extractor(run))
        engine = args.skill_logprob_backend == "vllm"
        if engine:
            yardstick = engine_yardstick(trainer)
        else:
            forward = skill_forward_seconds(trainer)  # beta 0, aligned: an OPID step's only no-grad passes
        slots = DecodeSlots(trainer.generation_backend)
        clock = AlternateGRPOAndOPID(trainer)
        trainer.add_callback(clock)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        trainer.accelerator.end_training()
    times = list(clock.times)  # one per optimizer step, in order
    if engine:  # the yardstick ran inside OPID steps: take it out of their time
        times = [(kind, seconds - yardstick.get(step, 0.0)) for step, (kind, seconds) in enumerate(times)]
        forward = [yardstick[step] for step in sorted(yardstick)]
    result: dict = {"case": case, "config": config_file, "overrides": overrides}
    for kind in ("grpo", "opid"):
        measured = [(t, h) for (k, t), h in list(zip(times, logs))[2:] if k == kind]
        result[kind] = {"step_s": statistics.median(t for t, _ in measured), "steps_measured": len(measured)}
        for key in LOGGED:
            values = [h[key] for _, h in measured if key in h]
            if values:
                result[kind][key] = statistics.median(values)
    result["opid_extra_s"] = result["opid"]["step_s"] - result["grpo"]["step_s"]
    result["skill_forward_s"] = statistics.median(forward[1:]) if len(forward) > 1 else float("nan")
    result["extra_over_skill_forward"] = result["opid_extra_s"] / result["skill_forward_s"]
    if slots is not None:
        result["decode_slots_idle_frac"] = slots.idle_share()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="measured GRPO/OPID step pairs per case (after a warm-up pair)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "vllm_step_cost.json"))
    parser.add_argument("--smoke", action="store_true", help="the tiny test model at tiny lengths (plumbing only)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:  # one case, in this process
        print(json.dumps(run_case(args.case, args.pairs, args.smoke)))
        return

    from opid_trl.generation.vllm_cpu import engine_environment

    output = Path(args.output)
    summary = json.loads(output.read_text()) if output.exists() else {}
    summary.update({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}",
        "pairs": args.pairs,
        "model": "tiny (smoke)" if args.smoke else "the run file's (embedded SmolLM2-135M-Instruct), no SFT warm start",
    })
    results = summary.setdefault("results", {})
    for case in args.cases:
        command = [sys.executable, __file__, "--case", case, "--pairs", str(args.pairs), *(["--smoke"] if args.smoke else [])]
        proc = subprocess.run(command, env=engine_environment(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"case {case} failed:\n{proc.stderr[-4000:]}")
        results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(case, json.dumps(results[case]), flush=True)
        summary["ratios"] = ratios(results)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def ratios(results: dict) -> dict:
    """The targets' ratios, from the cases run so far."""
    out = {}
    step = lambda case, kind="opid": results[case][kind]["step_s"]  # noqa: E731
    if "transformers" in results and "engine" in results:
        out["engine_opid_step_vs_transformers_opid_step"] = step("engine") / step("transformers")  # target <= 0.6
    for case in results:
        out[f"{case}_opid_vs_grpo_step"] = step(case) / step(case, "grpo")
        out[f"{case}_extra_over_skill_forward"] = results[case]["extra_over_skill_forward"]  # target <= 1.2
    if "engine" in results and "engine_no_prefix_reuse" in results:
        before = results["engine_no_prefix_reuse"]["opid"].get("skill/engine_prefill_tokens_per_row")
        after = results["engine"]["opid"].get("skill/engine_prefill_tokens_per_row")
        if before and after:
            out["engine_prefill_tokens_per_row_after_vs_before"] = after / before
    return out


if __name__ == "__main__":
    main()
