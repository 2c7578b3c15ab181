"""What OPID costs over GRPO per training step, against its physical limit.

The only work OPID must add to GRPO is one no-grad forward over the rows it re-scores under a
skill (plus the analysis, here the rule-based extractor, which is cheap and overlapped). This script
trains one OPID trainer whose optimizer steps alternate between GRPO (skill weights 0: no analysis,
no extra pass) and OPID (skill weights on), so both settings share the process, the model, the
tasks and the machine's drift. Per workload it prints the median step time of each, OPID's extra
time, the measured time of the skill forward passes inside the OPID steps, their ratio (target:
<= 1.2), and a breakdown of the step (rollout, analysis wait, old-policy pass, skill scoring, the
rest: loss forward/backward and optimizer). The learning rate is 0 so that every step samples from
the same policy. A random tiny model rarely ends an episode early, so every step plays the same
number of rows.

The ``tools`` workload is a TRL agent pipeline instead (`tools=[multiply]`, TRL's own tool-call
loop, the tiny model's first turn scripted to call the tool, `opid_trl.testing.scripted_model`):
every conversation has two assistant turns around a tool result, and OPID scores each turn's skill
after its own context (`opid_trl.skills.conversation`); the skill passes are the same no-grad
log-prob passes, so the same ratio applies.

    OMP_NUM_THREADS=1 python benchmarks/opid_overhead.py --steps 8
    OMP_NUM_THREADS=1 python benchmarks/opid_overhead.py --steps 8 --output benchmarks/results/opid_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from opid_trl import OPIDConfig, OPIDTrainer  # noqa: E402
from opid_trl.skills.extractors import RuleBasedSkillExtractor  # noqa: E402
from opid_trl.testing import save_tiny_model  # noqa: E402

#: name -> (episodes per step, turns per episode, tokens per turn); ``tools``: 8 conversations of TRL's tool loop
WORKLOADS = {"8x4": (8, 4, 24), "16x4": (16, 4, 24), "tools": (8, 2, 40)}
BREAKDOWN = ("time/rollout", "time/analysis_wait", "time/old_policy", "time/skill_scoring")
SKILL_COEF = 1e-3


class AlternateGRPOAndOPID(TrainerCallback):
    """Even optimizer steps run GRPO, odd ones OPID; records each step's wall time."""

    def __init__(self, trainer: OPIDTrainer) -> None:
        self.trainer = trainer
        self.times: list[tuple[str, float]] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        coef = SKILL_COEF if state.global_step % 2 else 0.0
        args.skill_coef_episode = args.skill_coef_step = coef
        self.trainer.skill_forward_seconds = 0.0
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        kind = "opid" if args.skill_coef_episode else "grpo"
        self.times.append((kind, time.perf_counter() - self._start))


def timed_logps(trainer: OPIDTrainer) -> None:
    """Time every no-grad log-prob pass the trainer runs outside the loss (with beta 0 and aligned
    steps, inside an OPID step these are exactly the skill passes)."""
    original = trainer._logps

    def logps(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            trainer.skill_forward_seconds += time.perf_counter() - start

    trainer._logps = logps


def fetch_trainer(model_dir: str, out: str, episodes: int, turns: int, tokens: int, steps: int) -> OPIDTrainer:
    """OPID on `fetch` episodes (step rows), the rule-based extractor."""
    config = OPIDConfig(output_dir=out, per_device_train_batch_size=episodes, num_generations=4,
                        max_steps=2 * steps + 3, max_completion_length=tokens, max_turns=turns, learning_rate=0.0,
                        beta=0.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False,
                        seed=0, skill_coef_episode=SKILL_COEF, skill_coef_step=SKILL_COEF, log_analyses=False)
    return OPIDTrainer(model=model_dir, args=config, environment="fetch",
                       train_dataset=Dataset.from_list([{"seed": i} for i in range(4 * steps + 8)]),
                       skill_extractor=RuleBasedSkillExtractor())


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a * b


def tools_trainer(model_dir: str, out: str, episodes: int, turns: int, tokens: int, steps: int) -> OPIDTrainer:
    """OPID on TRL's tool-call loop: every conversation calls `multiply` (scripted), then answers freely
    within ``tokens`` tokens after the tool result (``turns`` = 2 assistant turns)."""
    from opid_trl.testing import first_turn_asking, scripted_model, tool_call, tool_tokenizer

    tokenizer = tool_tokenizer(model_dir)
    model = scripted_model(model_dir, tokenizer, first_turn_asking("Multiply", tool_call("multiply", a=3, b=4)))
    config = OPIDConfig(output_dir=out, per_device_train_batch_size=episodes, num_generations=4,
                        max_steps=2 * steps + 3, max_completion_length=120 + tokens, max_tool_calling_iterations=turns - 1,
                        learning_rate=0.0, beta=0.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                        bf16=False, seed=0, skill_coef_episode=SKILL_COEF, skill_coef_step=SKILL_COEF,
                        log_analyses=False)
    prompts = [{"prompt": [{"role": "user", "content": f"Multiply {i} by 4."}]} for i in range(4 * steps + 8)]
    return OPIDTrainer(model=model, args=config, train_dataset=Dataset.from_list(prompts), processing_class=tokenizer,
                       tools=[multiply], reward_funcs=lambda completions, **kw: [len(c[-1]["content"]) / 10
                                                                                 for c in completions],
                       skill_extractor=RuleBasedSkillExtractor())


def skill_forward_seconds(trainer: OPIDTrainer) -> list[float]:
    """Per skill stage (one per OPID step), the seconds of the no-grad passes the trainer ran in
    that step up to it (`timed_logps`): with beta 0 and aligned steps, the skill passes."""
    trainer.skill_forward_seconds = 0.0
    timed_logps(trainer)
    seconds: list[float] = []
    original_add = trainer.skill_stage.add

    def add_skills(*args, **kwargs):
        scored = original_add(*args, **kwargs)
        seconds.append(trainer.skill_forward_seconds)
        return scored

    trainer.skill_stage.add = add_skills
    return seconds


def run_workload(trainer: OPIDTrainer, episodes: int, turns: int, tokens: int) -> dict:
    forward_seconds = skill_forward_seconds(trainer)
    clock = AlternateGRPOAndOPID(trainer)
    trainer.add_callback(clock)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h][2:]  # drop one warm-up step of each
    times = clock.times[2:]
    forward_seconds = forward_seconds[1:]
    rows = statistics.median(h.get("env/rows", episodes) for h in logs)
    result: dict = {"episodes": episodes, "turns": turns, "tokens_per_turn": tokens, "rows": rows}
    for kind in ("grpo", "opid"):
        kind_logs = [h for h, (k, _) in zip(logs, times) if k == kind]
        step = statistics.median(t for k, t in times if k == kind)
        parts = {name: statistics.median(h.get(name, 0.0) for h in kind_logs) for name in BREAKDOWN}
        parts["loss_and_optimizer"] = step - sum(parts.values())
        result[kind] = {"step_seconds": step, "breakdown": parts}
    result["opid_extra_seconds"] = result["opid"]["step_seconds"] - result["grpo"]["step_seconds"]
    # Each OPID step against the mean of the GRPO steps around it: slow drift of the machine cancels.
    paired = [t - (times[i - 1][1] + times[i + 1][1]) / 2 for i, (k, t) in enumerate(times)
              if k == "opid" and 0 < i < len(times) - 1]
    result["opid_extra_seconds_paired"] = statistics.median(paired) if paired else result["opid_extra_seconds"]
    result["skill_forward_seconds"] = statistics.median(forward_seconds)
    result["extra_over_skill_forward"] = result["opid_extra_seconds"] / result["skill_forward_seconds"]
    result["paired_extra_over_skill_forward"] = result["opid_extra_seconds_paired"] / result["skill_forward_seconds"]
    return result


def report(name: str, r: dict) -> None:
    what = "conversations of TRL's tool loop" if name == "tools" else "episodes"
    print(f"workload {name}: {r['episodes']} {what} x {r['turns']} turns, {r['tokens_per_turn']} tokens/turn, "
          f"{r['rows']:.0f} rows per step")
    print(f"  median step time   GRPO {r['grpo']['step_seconds']:.3f} s   OPID {r['opid']['step_seconds']:.3f} s")
    print(f"  OPID extra time    {r['opid_extra_seconds']:.3f} s")
    print(f"  skill forward      {r['skill_forward_seconds']:.3f} s (one no-grad pass over the re-scored rows)")
    print(f"  extra / forward    {r['extra_over_skill_forward']:.2f}  (target <= 1.2)")
    print(f"  paired: extra {r['opid_extra_seconds_paired']:.3f} s, / forward {r['paired_extra_over_skill_forward']:.2f}"
          "  (each OPID step minus the mean of its two GRPO neighbours, median)")
    for kind in ("grpo", "opid"):
        parts = "  ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in r[kind]["breakdown"].items())
        print(f"  {kind} breakdown     {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="measured steps of each setting per workload")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(save_tiny_model(Path(tmp) / "model", hidden_size=args.hidden_size, num_layers=args.layers))
        for name in args.workloads:
            build = tools_trainer if name == "tools" else fetch_trainer
            trainer = build(model_dir, os.path.join(tmp, name), *WORKLOADS[name], steps=args.steps)
            results[name] = run_workload(trainer, *WORKLOADS[name])
            report(name, results[name])
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": f"tiny Llama, {args.layers} layers, hidden {args.hidden_size}", "steps": args.steps,
                   "workloads": results}
        args.output.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
