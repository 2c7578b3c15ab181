"""The output folder of a `train.py` run: one run at a time, an earlier run kept, and the settings a
resume must keep.

Without these, two runs on one ``training.output_dir`` both trained and exited 0, appending to the
same ``metrics.jsonl`` and audit and writing the same ``checkpoint-N``; a fresh run on a used folder
cut the earlier run's metrics and audit back to step 0 (they are cut to the step a run starts from)
and left its checkpoints for a later ``--resume`` to pick up; and a resume under a changed group
size, batch or model went ahead, training what no uninterrupted run would (or failing on a raw
``size mismatch``). So `train.py`, on the main process and before any model is loaded:

* holds an exclusive lock on ``<output_dir>/.opid-run.lock`` for the whole run (`lock_output_dir`);
* refuses a folder an earlier run has written to, unless the run resumes it or is told to move it
  aside (`earlier_run_files`, `move_aside`);
* saves the resolved configuration to ``run_config.json`` (`save_run_config`), and on a resume
  refuses the changes a resumed run cannot take (`resume_changes`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from opid_trl.files import write_text_atomic

LOCK_FILE = ".opid-run.lock"
#: Who holds the lock (pid, host, start time, command), written once it is held: the lock file
#: itself is filelock's (opened, truncated or removed by whoever tries to take it), so it cannot.
OWNER_FILE = ".opid-run.owner.json"
SAVED_CONFIG = "run_config.json"
#: Where `move_aside` puts an earlier run: ``<output_dir>/previous-<time>/``.
PREVIOUS_PREFIX = "previous-"

#: ``training`` fields a resumed run depends on. The group size and the batch layout decide which
#: rows form a group and a generation batch, and the sampler's order (seeds) which tasks the resume
#: skips; the token budgets and episode settings decide what a row is. Changed, the checkpoint goes
#: on training what no uninterrupted run would. Every other field (max_steps, saving, logging,
#: evaluation, reporting, max_rows_per_forward, ...) may change.
RESUME_TRAINING_FIELDS = (
    "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
    "num_iterations", "max_prompt_length", "max_completion_length", "history_length", "max_turns", "seed",
    "data_seed", "skill_routing", "model_init_kwargs",
)
#: ``training.model_init_kwargs`` keys that only change how the same weights are loaded.
LOADING_ONLY_MODEL_KWARGS = frozenset({"attn_implementation", "dtype", "torch_dtype", "device_map",
                                       "low_cpu_mem_usage"})


class RunDirError(RuntimeError):
    """The output folder cannot be used by this run; the message says why and what to do."""


# -- the lock


def lock_output_dir(output_dir: str | Path) -> FileLock:
    """Take the run's exclusive lock on ``output_dir`` (created if missing) without waiting.

    The lock is an OS file lock (``flock``): a killed run releases it with its process, so no stale
    lock outlives a crash. Raises `RunDirError` naming the folder and the holder's pid when another
    run holds it.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output_dir / LOCK_FILE)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise RunDirError(f"training.output_dir: {output_dir} is in use by another run ({_holder(output_dir)}); "
                          "wait for it to end, or give this run another training.output_dir") from None
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": sys.argv}
    _write_json(output_dir / OWNER_FILE, owner)
    return lock


def release_output_dir(lock: FileLock | None) -> None:
    """Release a lock of `lock_output_dir` (and forget its owner); ``None`` is a rank that holds none."""
    if lock is None or not lock.is_locked:
        return
    (Path(lock.lock_file).parent / OWNER_FILE).unlink(missing_ok=True)
    lock.release()


def _holder(output_dir: Path) -> str:
    try:
        owner = json.loads((output_dir / OWNER_FILE).read_text())
        return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its pid is not recorded yet; the lock is {output_dir / LOCK_FILE}"


# -- an earlier run in the folder


def earlier_run_files(output_dir: str | Path) -> list[str]:
    """The names in ``output_dir`` that only a run writes (``metrics.jsonl``, ``checkpoint-*``,
    ``analysis/``); empty for a new folder or one holding only what is made before a run: a warm
    start (``sft/``), a run file or a log (benchmarks/learning_curves.py writes those into a cell's
    folder first)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p.name for p in output_dir.iterdir()
                  if p.name in ("metrics.jsonl", "analysis") or (p.is_dir() and p.name.startswith("checkpoint-")))


def refuse_earlier_run(output_dir: str | Path) -> None:
    """`RunDirError` when ``output_dir`` holds an earlier run: a fresh run there would cut its metrics
    and audit and leave its checkpoints among the new ones."""
    found = earlier_run_files(output_dir)
    if found:
        shown = ", ".join(found[:4]) + (f", ... ({len(found)} in all)" if len(found) > 4 else "")
        raise RunDirError(f"training.output_dir: {output_dir} holds an earlier run ({shown}); pass --resume to "
                          f"continue it, --overwrite to move it aside into {output_dir}/{PREVIOUS_PREFIX}<time>/ "
                          "and start fresh, or give this run another training.output_dir")


def move_aside(output_dir: str | Path, keep: Iterable[str | Path] = ()) -> Path | None:
    """Move everything in ``output_dir`` into a new ``previous-<time>/`` folder there, and return it
    (``None`` when there was nothing to move).

    Moved, not deleted: nothing of the earlier run is lost. The lock, the folders of earlier moves
    and the paths in ``keep`` (the run file in use, when it lives there) stay where they are. The
    warm start moves too: it was made for the earlier run's settings, and is made again.
    """
    output_dir = Path(output_dir)
    kept = {Path(p).resolve() for p in keep}
    moving = [p for p in sorted(output_dir.iterdir()) if p.name not in (LOCK_FILE, OWNER_FILE)
              and not p.name.startswith(PREVIOUS_PREFIX) and p.resolve() not in kept]
    if not moving:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = output_dir / f"{PREVIOUS_PREFIX}{stamp}", 1
    while target.exists():
        target, n = output_dir / f"{PREVIOUS_PREFIX}{stamp}-{n}", n + 1
    target.mkdir()
    for path in moving:
        shutil.move(str(path), str(target / path.name))
    return target


# -- the configuration a resume must keep


def resolved_run_config(run, training_args) -> dict[str, Any]:
    """What ``run_config.json`` holds: the run file as loaded (`RunConfig`) and the values the run
    actually used (the model as loaded, every `OPIDConfig` field after its defaults and derivations),
    as plain JSON so that it compares equal to itself after a round trip."""
    record = {"run": dataclasses.asdict(run),
              "resolved": {"model": _model_identity(run.model), "training": training_args.to_dict()}}
    return json.loads(json.dumps(record, default=str))


def save_run_config(output_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config`` to ``<output_dir>/run_config.json`` through a temporary file and a rename, so
    a crash leaves the old file or the new one, never half of one."""
    path = Path(output_dir) / SAVED_CONFIG
    _write_json(path, {**config, "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    return path


def load_saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The configuration saved in ``run_dir`` (``None``: a run from before configurations were saved)."""
    path = Path(run_dir) / SAVED_CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise RunDirError(f"--resume: {path} is not valid JSON; restore it, or move it away to resume "
                          "without comparing the run file with the one the checkpoints were trained with") from None


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields a resume may not change that differ between ``saved`` and ``current`` (two
    `resolved_run_config` records), each as ``"name: old -> new"``."""
    def fields(config: dict[str, Any]) -> dict[str, Any]:
        run, resolved = config.get("run", {}), config.get("resolved", {})
        environment = run.get("environment", {})
        training = resolved.get("training", {})
        values = {"model": resolved.get("model"), "environment.name": environment.get("name"),
                  "environment.kwargs": environment.get("kwargs"), "environment.train": environment.get("train")}
        for name in RESUME_TRAINING_FIELDS:
            value = training.get(name)
            if name == "model_init_kwargs" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in LOADING_ONLY_MODEL_KWARGS} or None
            values[f"training.{name}"] = value
        return values

    old, new = fields(saved), fields(current)
    return [f"{name}: {_show(old[name])} -> {_show(new[name])}" for name in old if old[name] != new[name]]


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _model_identity(model: str) -> str:
    """The model as a comparable name: a local folder as its absolute path (so a relative path given
    from another working directory is the same model), an embedded name in lower case."""
    from opid_trl.runs.embedded import EMBEDDED_MODELS

    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve())
    return model.lower() if model.lower() in EMBEDDED_MODELS else model


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")
