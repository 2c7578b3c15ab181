"""Checkpoints that are complete or absent, and the choice of the checkpoint a run resumes from.

`Trainer._save_checkpoint` (transformers 5.24) writes straight into ``checkpoint-N``: no temporary
folder, no rename. A process killed during that write (preemption, OOM killer, ``kill -9``) leaves a
folder that `get_last_checkpoint` still returns and that then fails to load, or worse, loads: with
no ``trainer_state.json`` the trainer restarts at step 0 on the loaded weights, and with no
``optimizer.pt`` it silently continues on a fresh optimizer. So:

* `CheckpointCompletionCallback` writes ``checkpoint_complete.json`` (every file of the checkpoint
  with its size) once transformers has written everything, and clears a stale one before a folder
  is written again;
* `checkpoint_problem` says why a folder is not a usable checkpoint (its marker does not match the
  files, or, for a folder without a marker, a file the trainer writes last is missing or a file is
  cut short);
* `find_resume_checkpoint` picks the newest complete checkpoint, and `set_aside` moves the
  incomplete newer ones out of the way (`last_complete_checkpoint` does both, for `train.py
  --resume` and for `OPIDTrainer.train(resume_from_checkpoint=True)` alike, through
  `resolve_resume_checkpoint`).

Durability against power loss (fsync) is not covered: the files are complete once the process that
wrote them has exited, whatever killed it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

from opid_trl.files import write_text_atomic

COMPLETE_MARKER = "checkpoint_complete.json"
#: Written by `Trainer._save_checkpoint` after the weights, optimizer, scheduler and RNG states.
TRAINER_STATE = "trainer_state.json"
#: Where the incomplete checkpoints skipped by a resume are moved (outside transformers'
#: ``checkpoint-*`` pattern, so neither `get_last_checkpoint` nor checkpoint rotation sees them).
INCOMPLETE_DIR = "incomplete-checkpoints"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")

logger = logging.getLogger(__name__)


def _files(folder: Path) -> dict[str, int]:
    """Every regular file under ``folder`` (relative POSIX path -> size), the marker (and a
    temporary one left by a crash) excepted."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(COMPLETE_MARKER)}


def write_complete_marker(folder: str | Path, global_step: int) -> Path:
    """Record ``folder`` as complete: the marker lists its files and sizes, written to a temporary
    name and renamed, so a marker is either whole or absent."""
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    write_text_atomic(marker, json.dumps({"global_step": global_step, "files": _files(folder)}, indent=1))
    return marker


def _truncated(path: Path) -> str | None:
    """Why a weights / state file is cut short, from its own framing (cheap: headers and tails only)."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is cut short ({size} bytes)"
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                return f"{path.name} is cut short (inside its header)"
            try:
                header = json.loads(f.read(header_len))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return f"{path.name} is cut short (unreadable header)"
        expected = 8 + header_len + end
        return None if size == expected else f"{path.name} is {size} bytes, its header says {expected}"
    if path.suffix in _TORCH_SUFFIXES:
        # torch.save writes a zip archive whose directory is at the end: a cut file has none.
        return None if zipfile.is_zipfile(path) else f"{path.name} is cut short ({size} bytes, no zip directory)"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except ValueError:
            return f"{path.name} is cut short (invalid JSON)"
    return None


def _has_optimizer(folder: Path) -> bool:
    """The optimizer-state test of `Trainer._load_optimizer_and_scheduler` (which otherwise goes on
    with a fresh optimizer without a word), plus DeepSpeed's ``global_step*`` folder."""
    return ((folder / "optimizer.pt").is_file() or (folder / "optimizer.bin").is_file()
            or any(p.is_dir() and ("optimizer" in p.name or p.name.startswith("global_step"))
                   for p in folder.iterdir()))


def checkpoint_problem(folder: str | Path, expect_optimizer: bool = True) -> str | None:
    """Why ``folder`` cannot be resumed from, or ``None`` when it is a complete checkpoint.

    With a marker, the folder must hold every file the marker lists, at its size. Without one (a
    checkpoint of an older run, or one whose process died between the last file and the marker)
    the trainer state, written after every other file, must be there and no file may be cut short.
    ``expect_optimizer``: the run saves optimizer states (it is not ``save_only_model``).
    """
    folder = Path(folder)
    try:
        if not folder.is_dir():
            return "no such checkpoint folder"
        marker = folder / COMPLETE_MARKER
        if marker.is_file():
            try:
                listed = json.loads(marker.read_text())["files"]
            except (ValueError, KeyError, TypeError):
                return f"{COMPLETE_MARKER} is unreadable"
            present = _files(folder)
            for name, size in listed.items():
                if name not in present:
                    return f"{name} is missing"
                if present[name] != size:
                    return f"{name} is {present[name]} bytes, {size} were written"
            return None
        if not (folder / TRAINER_STATE).is_file():
            return f"no {TRAINER_STATE}: the write stopped before its end"
        for path in sorted(folder.rglob("*")):
            if path.is_file() and (why := _truncated(path)):
                return why
        if expect_optimizer and not _has_optimizer(folder):
            return "no optimizer state"
        return None
    except OSError as exc:  # moved or deleted while being read (another rank set it aside)
        return f"unreadable ({exc.strerror or exc})"


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


@dataclass
class ResumeChoice:
    """The checkpoint to resume from (``None``: start from scratch) and the newer ones skipped."""

    checkpoint: str | None
    #: (folder, why it is incomplete), newest first.
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_resume_checkpoint(output_dir: str | Path, expect_optimizer: bool = True) -> ResumeChoice:
    """The newest complete checkpoint of ``output_dir`` (the role of `get_last_checkpoint`, which
    takes the newest folder whatever its state)."""
    skipped = []
    for folder in checkpoint_folders(output_dir):
        why = checkpoint_problem(folder, expect_optimizer)
        if why is None:
            return ResumeChoice(str(folder), skipped)
        skipped.append((folder, why))
    return ResumeChoice(None, skipped)


def set_aside(folder: str | Path) -> Path:
    """Move an incomplete checkpoint to ``<output_dir>/incomplete-checkpoints/`` and return where.

    Left in place it would be written over when training reaches its step again (a mix of old and
    new files, with a directory mtime that checkpoint rotation takes for old), so it goes; moved
    rather than deleted, for the user to inspect.
    """
    folder = Path(folder)
    target_dir = folder.parent / INCOMPLETE_DIR
    target_dir.mkdir(exist_ok=True)
    target, n = target_dir / folder.name, 1
    while target.exists():
        target, n = target_dir / f"{folder.name}.{n}", n + 1
    shutil.move(str(folder), str(target))
    return target


def require_complete(folder: str | Path, expect_optimizer: bool = True) -> str:
    """``folder`` (as a string) once it is a complete checkpoint; a `ValueError` naming it and why
    otherwise: a checkpoint asked for by name is refused rather than loaded half."""
    why = checkpoint_problem(folder, expect_optimizer)
    if why is not None:
        raise ValueError(f"{folder} is not a complete checkpoint: {why}")
    return str(folder)


def last_complete_checkpoint(output_dir: str | Path, expect_optimizer: bool, should_save: bool,
                             say: Callable[[str], None] = logger.warning) -> ResumeChoice:
    """`find_resume_checkpoint`, with the incomplete newer checkpoints moved aside (`set_aside`) and
    named through ``say``, on the processes that write checkpoints (``should_save``: one per node
    that saves); every process waits for the moves, so none reads a folder while it moves."""
    from accelerate import PartialState

    choice = find_resume_checkpoint(output_dir, expect_optimizer)
    if should_save:
        for folder, why in choice.skipped:
            try:
                moved = set_aside(folder)
            except FileNotFoundError:  # moved by the saving process of another node (shared disk)
                continue
            say(f"skipping {folder.name}, incomplete ({why}): moved to {moved}")
    PartialState().wait_for_everyone()
    return choice


def resolve_resume_checkpoint(resume: str | os.PathLike | bool, args) -> str:
    """The checkpoint `OPIDTrainer.train(resume_from_checkpoint=resume)` loads, for ``resume`` not
    None or False.

    ``True``: the newest complete checkpoint of ``args.output_dir``, the torn newer ones moved
    aside (`get_last_checkpoint`, which `Trainer.train` uses, takes the newest folder whatever its
    state); a `ValueError` when there is none, as `Trainer.train` raises when there is no checkpoint.
    A path: itself, once it is a complete checkpoint (`require_complete`).
    """
    expect_optimizer = not args.save_only_model
    if resume is not True:
        return require_complete(resume, expect_optimizer)
    choice = last_complete_checkpoint(args.output_dir, expect_optimizer, args.should_save)
    if choice.checkpoint is None:
        skipped = "".join(f"; {folder.name} is incomplete ({why})" for folder, why in choice.skipped)
        raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint in {args.output_dir}{skipped}")
    return choice.checkpoint


class CheckpointCompletionCallback(TrainerCallback):
    """Marks each checkpoint complete once transformers has written all of it.

    ``on_save`` comes right after `Trainer._save_checkpoint` returns, so the marker is the last
    file of a checkpoint. Before a step whose checkpoint folder already exists (a resume from an
    older checkpoint reaches it again) its marker and trainer state are removed first: a crash
    during the rewrite then leaves a folder that is rejected, not one whose old marker vouches for
    half-new files. (With ``save_strategy="best"`` the save is only decided after the evaluation,
    too late for that; such a folder keeps its old marker until it is rewritten.)
    """

    def _checkpoint_dir(self, args, state) -> Path:
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"

    def _clear_before_rewrite(self, args, state, control) -> None:
        if not (control.should_save and args.should_save and args.save_strategy != SaveStrategy.BEST):
            return
        folder = self._checkpoint_dir(args, state)
        for name in (COMPLETE_MARKER, TRAINER_STATE):
            (folder / name).unlink(missing_ok=True)

    def on_step_end(self, args, state, control, **kwargs):
        self._clear_before_rewrite(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._clear_before_rewrite(args, state, control)

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        # Every rank writes its own RNG state: the marker must list them all.
        PartialState().wait_for_everyone()
        folder = self._checkpoint_dir(args, state)
        if args.should_save and folder.is_dir():
            write_complete_marker(folder, state.global_step)
