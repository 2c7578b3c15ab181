"""OPID against GRPO, with the paper's ablations, as learning curves: a resumable (method x seed) matrix.

Every cell trains from the same SFT warm-started checkpoint (made once, by the run file's ``sft``
section, on training tasks), with held-out evaluations during training (the run file's
``environment.eval`` split, at step 0 and every ``training.eval_steps``). Each cell is one
``train.py`` process; when it finishes, its metrics and evaluations are written to
``<results>/<method>-seed<k>.json`` and its checkpoints are deleted (``--keep-models`` keeps them).

    python benchmarks/learning_curves.py --config configs/benchmarks/learning_curves_fetch.yaml
    python benchmarks/learning_curves.py --config ... --matrix grpo=1,opid=1 --cells opid-seed0
    python benchmarks/learning_curves_report.py      # curves, table and tests over what has finished

Rerunning the command is how it resumes: a cell whose JSON exists is skipped, an interrupted one
continues from its last complete checkpoint (its metrics cut back to that step), a cell with no
complete checkpoint starts again. Cells run in seed order (seed 0 of every method first), so a
matrix stopped early is balanced across methods.

Methods (the paper's ablations, as overrides of the run file):
  grpo          skill weights 0 and no skill extractor (the baseline)
  opid          critical-first routing, both skill weights (the method)
  episode_only  the episode skill on every step (skill_coef_step 0)
  step_only     step skills on critical steps only (skill_coef_episode 0)
  additive      no routing: both skill deltas on critical steps (skill_routing additive)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: method -> overrides of the run file (section -> fields)
METHODS: dict[str, dict[str, dict[str, Any]]] = {
    "grpo": {"skill_extractor": {"name": "none"}, "training": {"skill_coef_episode": 0.0, "skill_coef_step": 0.0}},
    "opid": {"training": {"skill_routing": "critical_first"}},
    "episode_only": {"training": {"skill_routing": "critical_first", "skill_coef_step": 0.0}},
    "step_only": {"training": {"skill_routing": "critical_first", "skill_coef_episode": 0.0}},
    "additive": {"training": {"skill_routing": "additive"}},
}
DEFAULT_MATRIX = "grpo=3,opid=3,episode_only=2,step_only=2,additive=2"
RESULT_FORMAT = 1
#: Fields that change how a step is computed but not what it computes, left out of the setting's
#: digest: the loss over rows in chunks of `max_rows_per_forward` equals the one-graph loss (to
#: float rounding; tests/test_dropin_losses.py), it only bounds the activations held at once.
EXECUTION_ONLY = {"training": ("max_rows_per_forward",)}


def parse_matrix(spec: str) -> list[tuple[str, int]]:
    """``"grpo=3,opid=3"`` -> the cells [(method, seed)], seed 0 of every method first."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        method, _, count = item.partition("=")
        if method not in METHODS:
            raise SystemExit(f"--matrix: unknown method {method!r}; choose from {sorted(METHODS)}")
        if not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--matrix: {item!r} needs a positive seed count, e.g. {method}=2")
        counts[method] = int(count)
    if not counts:
        raise SystemExit("--matrix: name at least one method, e.g. grpo=1")
    return [(m, seed) for seed in range(max(counts.values())) for m in counts if seed < counts[m]]


def cell_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+modified" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def split_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A cell's metrics records -> (training steps, held-out evaluations), each in step order, numbers
    only; a step logged twice (an evaluation repeated after a resume) keeps its last record."""
    numeric = lambda r: {k: v for k, v in r.items() if isinstance(v, (int, float))}  # noqa: E731
    train = {r["step"]: r for r in records if "loss" in r and "env/success_rate" in r}
    evals = {r["step"]: r for r in records if "eval_env/success_rate" in r}
    return [numeric(train[s]) for s in sorted(train)], [numeric(evals[s]) for s in sorted(evals)]


def write_json(path: Path, data: Any) -> None:
    """Write through a temporary file and a rename: a killed harness never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class Matrix:
    """The run file, the shared warm start, and the cells' folders and result files."""

    def __init__(self, config: Path, work_dir: Path, results: Path, overrides: list[str], model: str | None) -> None:
        from opid_trl.runs.run_config import load_run_config

        self.config, self.work_dir, self.results = config.resolve(), work_dir.resolve(), results
        self.overrides = list(overrides)
        if model is not None:
            self.overrides.append(f"model={model}")
        self.run = load_run_config(self.config, self.overrides)  # fails here, naming the field, if invalid
        self.setting = {"config": os.path.relpath(self.config, ROOT), "overrides": self.overrides,
                        "resolved_sha256": self._digest()}

    def _digest(self) -> str:
        resolved = {k: v for k, v in dataclasses.asdict(self.run).items() if k != "source"}
        for section, names in EXECUTION_ONLY.items():
            resolved[section] = {k: v for k, v in resolved[section].items() if k not in names}
        return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # ------------------------------------------------------------ warm start
    def warm_start(self) -> str:
        """The SFT warm-started model every cell starts from (trained once, then reused)."""
        from opid_trl.runs.embedded import resolve_model
        from opid_trl.runs.run_config import build_training_args, check_model
        from train import warm_start

        base = resolve_model(check_model(self.run))
        if self.run.sft is None:
            return base
        args = build_training_args(self.run)
        args.output_dir = str(self.work_dir)  # the warm start lands in <work_dir>/<sft.output_subdir>
        started = time.perf_counter()
        target = Path(self.work_dir) / self.run.sft.output_subdir
        record = json.loads(json.dumps({"sft": dataclasses.asdict(self.run.sft), "model": base,
                                        "environment": dataclasses.asdict(self.run.environment)}))
        if (target / "config.json").exists():  # reused, but only for the run file that made it
            made = json.loads((target / "warm_start.json").read_text()) if (target / "warm_start.json").exists() else {}
            if {k: made.get(k) for k in record} != record:
                raise SystemExit(f"{target} was warm-started for another setting ({ {k: made.get(k) for k in record} }); "
                                 "remove it or pass another --work-dir")
            return str(target)
        path = warm_start(self.run, base, args, skip=False)
        write_json(Path(path) / "warm_start.json", {**record, "seconds": time.perf_counter() - started,
                                                     "setting": self.setting})
        return path

    # ------------------------------------------------------------ cells
    def result_path(self, method: str, seed: int) -> Path:
        return self.results / f"{cell_name(method, seed)}.json"

    def cell_dir(self, method: str, seed: int) -> Path:
        return self.work_dir / "cells" / cell_name(method, seed)

    def finished(self, method: str, seed: int) -> bool:
        path = self.result_path(method, seed)
        if not path.exists():
            return False
        result = json.loads(path.read_text())
        if result.get("setting", {}).get("resolved_sha256") != self.setting["resolved_sha256"]:
            raise SystemExit(f"{path} was produced by another setting ({result.get('setting')}); move the results "
                             f"folder aside or pass --results for this one ({self.setting})")
        return True

    def run_file(self, method: str, seed: int, model_path: str) -> Path:
        """The cell's run file: the benchmark's, then the method's overrides, the seed and the folder."""
        import yaml

        cell = self.cell_dir(method, seed)
        overrides = METHODS[method]
        training = {**overrides.get("training", {}), "output_dir": str(cell), "seed": seed}
        data: dict[str, Any] = {"base": str(self.config), "model": model_path, "sft": None, "training": training}
        if "skill_extractor" in overrides:
            data["skill_extractor"] = overrides["skill_extractor"]
        cell.mkdir(parents=True, exist_ok=True)
        path = cell / "run.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def run_cell(self, method: str, seed: int, model_path: str, keep_models: bool) -> dict[str, Any]:
        from opid_trl.checkpoints import find_resume_checkpoint

        cell = self.cell_dir(method, seed)
        attempts_file = cell / "attempts.json"
        attempts = json.loads(attempts_file.read_text()) if attempts_file.exists() else []
        resume = find_resume_checkpoint(cell).checkpoint if cell.exists() else None
        if resume is None and cell.exists():  # nothing to continue from: start the cell again
            shutil.rmtree(cell)
            attempts = []
        if resume is not None and self.steps_done(Path(resume)) >= self.max_steps:
            # train.py finished but the harness stopped before collecting: resuming would train
            # one step more (the Trainer checks max_steps after a step), so collect what is there
            print(f"[{cell_name(method, seed)}] trained to step {self.max_steps} already: collecting", flush=True)
            return self.finish(method, seed, attempts, keep_models)
        run_file = self.run_file(method, seed, model_path)
        command = [sys.executable, str(ROOT / "train.py"), "--config", str(run_file)]
        if resume is not None:
            command += ["--resume", str(resume)]
        command += [o for o in self.overrides if not o.startswith("model=")]
        if resume is not None:  # the step-0 evaluation belongs to the first attempt only
            command.append("training.eval_on_start=false")
        print(f"[{cell_name(method, seed)}] {'resuming from ' + Path(resume).name if resume else 'starting'}",
              flush=True)
        # recorded before the run, so that a killed attempt is on record (seconds and returncode stay null)
        attempts.append({"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git_commit(),
                         "resumed_from": Path(resume).name if resume else None, "seconds": None, "returncode": None})
        write_json(attempts_file, attempts)
        started = time.perf_counter()
        with (cell / "train.log").open("a") as log:
            code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        attempts[-1].update(seconds=time.perf_counter() - started, returncode=code)
        write_json(attempts_file, attempts)
        if code != 0:
            raise SystemExit(f"[{cell_name(method, seed)}] train.py failed (exit {code}); see {cell / 'train.log'}")
        return self.finish(method, seed, attempts, keep_models)

    @property
    def max_steps(self) -> int:
        return int(self.run.training["max_steps"])

    @staticmethod
    def steps_done(checkpoint: Path) -> int:
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])

    def finish(self, method: str, seed: int, attempts: list[dict[str, Any]], keep_models: bool) -> dict[str, Any]:
        """Write the cell's result, then (unless ``keep_models``) delete its checkpoints and model."""
        result = self.collect(method, seed, attempts)
        write_json(self.result_path(method, seed), result)
        if not keep_models:
            cell = self.cell_dir(method, seed)
            for folder in [*cell.glob("checkpoint-*"), cell / "final"]:
                shutil.rmtree(folder, ignore_errors=True)
        return result

    def collect(self, method: str, seed: int, attempts: list[dict[str, Any]]) -> dict[str, Any]:
        """The cell's result: every logged training step and held-out evaluation, and where it ran
        (``wall_seconds`` adds up the attempts that ended: a killed one's time is not known)."""
        from opid_trl.reporting.metrics_log import read_metrics

        records = read_metrics(self.cell_dir(method, seed) / "metrics.jsonl")
        # a step past max_steps can only come from a resume of a finished run: not part of the cell
        train, evals = split_records([r for r in records if r.get("step", 0) <= self.max_steps])
        return {
            "format": RESULT_FORMAT, "method": method, "seed": seed, "overrides": METHODS[method],
            "setting": self.setting, "commit": attempts[-1]["commit"] if attempts else git_commit(), "machine": machine(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": sum(a["seconds"] or 0.0 for a in attempts), "attempts": attempts,
            "train": train, "eval": evals,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/benchmarks/learning_curves_fetch.yaml")
    parser.add_argument("--matrix", default=DEFAULT_MATRIX, help=f"method=seeds,... (default {DEFAULT_MATRIX})")
    parser.add_argument("--cells", default="", help="run only these cells (comma-separated, e.g. opid-seed0)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs/learning_curves",
                        help="warm start, checkpoints and logs (not committed)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/learning_curves",
                        help="one JSON per finished cell (committed)")
    parser.add_argument("--model", help="start from this model instead of the run file's (e.g. a test model)")
    parser.add_argument("--keep-models", action="store_true", help="keep each cell's checkpoints and final model")
    parser.add_argument("--collect-only", action="store_true",
                        help="write the results of the named --cells from their metrics, without training (for "
                             "cells whose training ended but whose result was not written)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the run file, e.g. training.max_steps=2")
    args = parser.parse_args(argv)

    cells = parse_matrix(args.matrix)
    if args.cells:
        wanted = set(filter(None, args.cells.split(",")))
        unknown = wanted - {cell_name(m, s) for m, s in cells}
        if unknown:
            raise SystemExit(f"--cells: {sorted(unknown)} not in the matrix {args.matrix}")
        cells = [(m, s) for m, s in cells if cell_name(m, s) in wanted]
    matrix = Matrix(args.config, args.work_dir, args.results, args.overrides, args.model)
    if args.collect_only:
        if not args.cells:
            raise SystemExit("--collect-only: name the cells (--cells)")
        for method, seed in cells:
            attempts_file = matrix.cell_dir(method, seed) / "attempts.json"
            attempts = json.loads(attempts_file.read_text()) if attempts_file.exists() else []
            matrix.finish(method, seed, attempts, args.keep_models)
            print(f"[{cell_name(method, seed)}] collected -> {matrix.result_path(method, seed)}", flush=True)
        return 0
    todo = [(m, s) for m, s in cells if not matrix.finished(m, s)]
    for m, s in cells:
        if (m, s) not in todo:
            print(f"[{cell_name(m, s)}] finished: {matrix.result_path(m, s)}", flush=True)
    if not todo:
        return 0
    model_path = matrix.warm_start()
    for method, seed in todo:
        result = matrix.run_cell(method, seed, model_path, args.keep_models)
        final = result["eval"][-1]["eval_env/success_rate"] if result["eval"] else float("nan")
        print(f"[{cell_name(method, seed)}] done in {result['wall_seconds']:.0f}s: held-out success {final:.3f} "
              f"-> {matrix.result_path(method, seed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
