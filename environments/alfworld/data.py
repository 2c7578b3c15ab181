"""Where games come from: the official ALFWorld data when present, else a generated, cached set.

Both live in the usual ALFWORLD_DATA layout (``json_2.1.1/<split dir>/<task>/<trial>/`` with
``game.tw-pddl`` next to ``traj_data.json``), so one lister serves both. Generated sets are cached
per ``(split, seed)`` with a manifest: a training run (or every rank of a distributed one) asks
for N games, the first caller generates whatever is missing under a file lock, the others wait
and reuse it; asking for more games later only generates the new ones.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from .scenes import SPLIT_DIRS

#: Bump when the generator changes what it writes, so that stale caches are not reused.
GENERATOR_VERSION = 1
_OFFICIAL_SPLITS = {"train": "train", "seen": "valid_seen", "valid_seen": "valid_seen",
                    "unseen": "valid_unseen", "valid_unseen": "valid_unseen"}


def default_cache_dir() -> str:
    """``$OPID_ALFWORLD_CACHE``, else ``~/.cache/opid_trl/alfworld``."""
    return os.environ.get("OPID_ALFWORLD_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "opid_trl", "alfworld")


def official_game_files(split: str = "train", data_root: str | None = None) -> list[str]:
    """Game files of an official ALFWorld split (``$ALFWORLD_DATA`` by default), sorted.

    Like ALFWorld's own loader, skips trials without a game file, the movable-receptacle and
    sliced variants it does not support, and games marked unsolvable.
    """
    root = data_root or os.environ.get("ALFWORLD_DATA")
    if not root:
        return []
    split_dir = os.path.join(os.path.expandvars(root), "json_2.1.1", _OFFICIAL_SPLITS.get(split, split))
    games = []
    for directory, _, files in os.walk(split_dir):
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        if "movable" in directory or "Sliced" in directory:
            continue
        path = os.path.join(directory, "game.tw-pddl")
        with open(path) as f:
            if json.load(f).get("solvable") is False:
                continue
        games.append(path)
    return sorted(games)


@contextmanager
def _locked(directory: str) -> Iterator[None]:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_root(cache_dir: str, split: str, seed: int) -> str:
    """Directory of the generated set ``(split, seed)`` inside ``cache_dir`` (an ALFWORLD_DATA root)."""
    return os.path.join(cache_dir, f"gen-v{GENERATOR_VERSION}-{split}-seed{seed}")


def manifest_path(root: str, split: str, seed: int) -> str:
    return os.path.join(root, f"manifest-{split}-seed{seed}-v{GENERATOR_VERSION}.json")


def _read_manifest(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["games"]


def generate_into(root: str, split: str, num_games: int, seed: int = 0, log_every: int = 0) -> list[dict[str, Any]]:
    """Make ``root`` (an ALFWORLD_DATA-style directory) hold the first ``num_games`` games of
    ``(split, seed)``, generating only the missing ones; returns their manifest entries with
    absolute ``game_file`` paths. Safe to call from several processes at once (file lock)."""
    from . import generate

    if split not in SPLIT_DIRS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_DIRS)}")
    path = manifest_path(root, split, seed)
    records = _read_manifest(path)
    if len(records) < num_games:
        with _locked(root):
            records = _read_manifest(path)  # another process may have generated them meanwhile
            if len(records) < num_games:
                new = generate.generate_games(root, split, range(len(records), num_games), seed, log_every=log_every)
                records = records + [asdict(r) for r in new]
                with open(path + ".tmp", "w") as f:
                    json.dump({"version": GENERATOR_VERSION, "split": split, "seed": seed, "games": records}, f,
                              indent=1)
                os.replace(path + ".tmp", path)
    return [{**r, "game_file": os.path.join(os.path.abspath(root), r["game_file"])} for r in records[:num_games]]


def ensure_game_records(cache_dir: str, split: str, num_games: int, seed: int = 0,
                        log_every: int = 0) -> list[dict[str, Any]]:
    """Manifest entries of the first ``num_games`` cached games of ``(split, seed)``; see :func:`generate_into`."""
    return generate_into(cache_root(cache_dir, split, seed), split, num_games, seed, log_every=log_every)


def ensure_games(cache_dir: str | None, split: str, num_games: int, seed: int = 0, log_every: int = 0) -> list[str]:
    """Paths of the first ``num_games`` generated games of ``(split, seed)``; generates once, then reuses."""
    records = ensure_game_records(cache_dir or default_cache_dir(), split, num_games, seed, log_every=log_every)
    return [r["game_file"] for r in records]


def task_rows(split: str = "train", num_games: int | None = None, seed: int = 0, cache_dir: str | None = None,
              data_root: str | None = None) -> list[dict[str, Any]]:
    """Task rows ``{"game_file", "task_type", "goal"}`` for a split.

    Uses the official games when ``data_root``/``$ALFWORLD_DATA`` has them (the first ``num_games``
    if given); otherwise generates ``num_games`` games into the cache.
    """
    official = official_game_files(split, data_root)
    if official:
        rows = []
        for path in official[:num_games] if num_games else official:
            with open(os.path.join(os.path.dirname(path), "traj_data.json")) as f:
                rows.append({"game_file": path, "task_type": json.load(f)["task_type"], "goal": ""})
        return rows
    if not num_games:
        raise ValueError("no official ALFWorld games found: pass num_games to generate some")
    records = ensure_game_records(cache_dir or default_cache_dir(), split, num_games, seed)
    return [{"game_file": r["game_file"], "task_type": r["task_type"], "goal": r["goal"]} for r in records]


def alfworld_dataset(split: str = "train", num_games: int | None = None, seed: int = 0,
                     cache_dir: str | None = None, data_root: str | None = None):
    """A ``datasets.Dataset`` of task rows (see :func:`task_rows`) for ``OPIDTrainer``."""
    from datasets import Dataset

    return Dataset.from_list(task_rows(split, num_games, seed, cache_dir, data_root))
