"""Does the skill signal carry information? Measure it on a few batches before a long run.

Plays ``--batches`` training batches of a run file with the policy frozen (learning rate 0, so
every batch measures the same starting policy), with `skill_signal_diagnostics` on: the
environment's expert labels every played step good or bad, and every step's A_skill, A_ep and
A_OPID are recorded. Then writes ``<results>/<name>.json`` and prints a table: per slice (all
scored steps, by routing kind, by outcome, by the extractor's rule) the AUC of each score for good
above bad steps with a 95% interval that resamples whole episodes, the skill share of the update
(sum |lambda A_skill| / sum |A_ep|, before and after clip/normalization), and the AUC that
A_ep + lambda A_skill would have at other skill weights.

    python benchmarks/skill_signal.py --config configs/benchmarks/learning_curves_fetch.yaml --name fetch-rule_based
    python benchmarks/skill_signal.py --model outputs/learning_curves/sft --batches 4 training.skill_coef_step=0.5

``--model`` defaults to the run file's own SFT warm start, made once under ``--work-dir`` (the
learning-curve harness's, so both measure the same starting policy). Dotted overrides change the
run file (extractor, routing, skill weights, clip/normalization, sampling temperature).
Choose settings on training tasks only: this plays the run file's training split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.learning_curves import Matrix, git_commit, machine, write_json  # noqa: E402

#: Skill weights at which the AUC of A_ep + lambda A_skill is reported (1e-3: the reference's).
WEIGHTS = (0.0, 1e-3, 1e-2, 0.1, 0.5, 1.0, 3.6, 10.0)
#: What the measurement forces on the run file: a frozen policy, no evaluation, no checkpoint.
FORCED = {"learning_rate": 0.0, "skill_signal_diagnostics": True, "eval_strategy": "no", "eval_on_start": False,
          "save_strategy": "no", "heatmap_rows": 0}


def run_file(config: Path, model: str, work: Path, batches: int) -> Path:
    """The measurement's run file: the given one, from ``model``, with `FORCED` and ``batches`` steps."""
    import yaml

    data: dict[str, Any] = {"base": str(config.resolve()), "model": model, "sft": None,
                            "training": {**FORCED, "max_steps": batches, "output_dir": str(work)}}
    work.mkdir(parents=True, exist_ok=True)
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _shown(model: str) -> str:
    """A model folder inside the repository by its repository-relative path (results name no path
    of the machine that made them); a hub id or an outside folder as given."""
    path = Path(model).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else model


def collect(work: Path) -> list[dict[str, Any]]:
    """Every step record the trainer wrote under ``work/skill_signal``."""
    records = []
    for path in sorted((work / "skill_signal").glob("step-*-rank*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/benchmarks/learning_curves_fetch.yaml")
    parser.add_argument("--model", help="the policy to measure (default: the run file's SFT warm start)")
    parser.add_argument("--batches", type=int, default=1, help="training batches to play (default 1)")
    parser.add_argument("--name", required=True, help="result name: <results>/<name>.json")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs/learning_curves",
                        help="where the warm start is (or is made) and the measurement runs (not committed)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/skill_signal")
    parser.add_argument("--resamples", type=int, default=1000, help="episode-bootstrap resamples per interval")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the run file, e.g. training.temperature=0.7")
    args = parser.parse_args(argv)

    from opid_trl.skills.signal import load_signals, markdown_table, summarize

    matrix = Matrix(args.config, args.work_dir, args.results, args.overrides, args.model)
    model = args.model or matrix.warm_start()
    work = args.work_dir.resolve() / "skill_signal" / args.name
    if work.exists():
        import shutil

        shutil.rmtree(work)
    command = [sys.executable, str(ROOT / "train.py"), "--config", str(run_file(args.config, model, work, args.batches)),
               *args.overrides]
    started = time.perf_counter()
    with (work / "train.log").open("w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode
    if code != 0:
        raise SystemExit(f"train.py failed (exit {code}); see {work / 'train.log'}")
    records = collect(work)
    report = summarize(load_signals(records), resamples=args.resamples, weights=WEIGHTS)
    result = {"name": args.name, "setting": matrix.setting, "model": _shown(model), "batches": args.batches,
              "forced": FORCED, "skill_extractor": dataclasses.asdict(matrix.run.skill_extractor), "commit": git_commit(),
              "machine": machine(), "seconds": time.perf_counter() - started, "report": report, "steps": records}
    write_json(args.results / f"{args.name}.json", result)
    print(markdown_table(report))
    print("A_ep + lambda A_skill, AUC by lambda: " + ", ".join(f"{k}: {v:.3f}"
                                                                for k, v in report["opid_auc_by_weight"].items()))
    print(f"-> {args.results / (args.name + '.json')} ({len(records)} steps, {time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
