"""Where games come from: the official ALFWorld data when present, else a generated, cached set.

Both live in the usual ALFWORLD_DATA layout (``json_2.1.1/<split dir>/<task>/<trial>/`` with
``game.tw-pddl`` next to ``traj_data.json``), so one lister serves both. Generated sets are cached
per ``(split, seed)`` with a manifest: a training run (or every rank of a distributed one) asks
for N games, the first caller generates whatever is missing under a file lock, the others wait
and reuse it; asking for more games later only generates the new ones.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict
from typing import Any

from filelock import FileLock

from .scenes import SPLIT_DIRS

#: Bump when the generator changes what it writes, so that stale caches are not reused.
GENERATOR_VERSION = 1
#: Accepted split names -> generator split; "eval"-like names mean the unseen split.
SPLIT_ALIASES = {"train": "train", "seen": "seen", "valid_seen": "seen", "unseen": "unseen",
                  "valid_unseen": "unseen", "eval": "unseen", "validation": "unseen", "test": "unseen"}
#: Size of the official splits, used when a generated split is asked for without a size.
OFFICIAL_SIZES = {"train": 3553, "seen": 140, "unseen": 134}


def generated_split(split: str) -> str:
    """The generator's name (train/seen/unseen) for any accepted split name."""
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise ValueError(f"alfworld: unknown split {split!r}; choose one of {sorted(SPLIT_ALIASES)}") from None


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
    split_dir = os.path.join(os.path.expandvars(root), "json_2.1.1", SPLIT_DIRS[generated_split(split)])
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


def _lock(directory: str) -> FileLock:
    """The inter-process lock of a generated set (``<directory>/.lock``), creating the directory."""
    os.makedirs(directory, exist_ok=True)
    return FileLock(os.path.join(directory, ".lock"))


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


def generate_into(root: str, split: str, num_games: int, seed: int = 0, log_every: int = 0,
                  workers: int = 1) -> list[dict[str, Any]]:
    """Make ``root`` (an ALFWORLD_DATA-style directory) hold the first ``num_games`` games of
    ``(split, seed)``, generating only the missing ones; returns their manifest entries with
    absolute ``game_file`` paths. Safe to call from several processes at once (file lock)."""
    from . import generate

    split = generated_split(split)
    path = manifest_path(root, split, seed)
    records = _read_manifest(path)
    if len(records) < num_games:
        with _lock(root):
            records = _read_manifest(path)  # another process may have generated them meanwhile
            if len(records) < num_games:
                new = generate.generate_games(root, split, range(len(records), num_games), seed, log_every=log_every,
                                              workers=workers)
                records = records + [asdict(r) for r in new]
                with open(path + ".tmp", "w") as f:
                    json.dump({"version": GENERATOR_VERSION, "split": split, "seed": seed, "games": records}, f,
                              indent=1)
                os.replace(path + ".tmp", path)
    return [{**r, "game_file": os.path.join(os.path.abspath(root), r["game_file"])} for r in records[:num_games]]


def ensure_game_records(cache_dir: str, split: str, num_games: int, seed: int = 0, log_every: int = 0,
                        workers: int = 1) -> list[dict[str, Any]]:
    """Manifest entries of the first ``num_games`` cached games of ``(split, seed)``; see :func:`generate_into`."""
    split = generated_split(split)
    return generate_into(cache_root(cache_dir, split, seed), split, num_games, seed, log_every=log_every,
                         workers=workers)


def ensure_games(cache_dir: str | None, split: str, num_games: int, seed: int = 0, log_every: int = 0,
                 workers: int = 1) -> list[str]:
    """Paths of the first ``num_games`` generated games of ``(split, seed)``; generates once, then reuses."""
    records = ensure_game_records(cache_dir or default_cache_dir(), split, num_games, seed, log_every=log_every,
                                  workers=workers)
    return [r["game_file"] for r in records]


def task_rows(split: str = "train", num_games: int | None = None, seed: int = 0, cache_dir: str | None = None,
              data_root: str | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """Task rows ``{"game_file", "task_type"}`` for a split.

    Uses the official games when ``data_root``/``$ALFWORLD_DATA`` has them (a ``seed``-ed sample of
    ``num_games`` of them if given); otherwise the first ``num_games`` generated games of
    ``(split, seed)`` (default: as many as the official split has), generated into the cache on
    first use with ``workers`` processes (default: all CPUs).
    """
    official = official_game_files(split, data_root)
    if official:
        if num_games and num_games < len(official):  # a seeded subset that mixes the task types
            official = sorted(random.Random(seed).sample(official, num_games))
        rows = []
        for path in official:
            with open(os.path.join(os.path.dirname(path), "traj_data.json")) as f:
                rows.append({"game_file": path, "task_type": json.load(f)["task_type"]})
        return rows
    split = generated_split(split)
    records = ensure_game_records(cache_dir or default_cache_dir(), split, num_games or OFFICIAL_SIZES[split], seed,
                                  workers=workers or os.cpu_count() or 1)
    return [{"game_file": r["game_file"], "task_type": r["task_type"]} for r in records]


#: Constructor arguments of ALFWorldEnvironment that a task builder may be handed and ignores
#: (``data_root``, the other one, selects the games and is used by both).
_ENVIRONMENT_ONLY = {"success_reward", "action_parsing"}


def alfworld_tasks(split: str = "train", num_tasks: int | None = None, seed: int = 0, *,
                   cache_dir: str | None = None, data_root: str | None = None, workers: int | None = None,
                   **env_kwargs: Any):
    """A ``datasets.Dataset`` of task rows (see :func:`task_rows`): the registry's task builder.

    ``env_kwargs`` may repeat the environment's constructor arguments, so that the environment's
    kwargs can be handed over as they are: ``data_root`` picks the official games as it does for
    the environment, the others do not change the games and are ignored.
    """
    from datasets import Dataset

    unknown = set(env_kwargs) - _ENVIRONMENT_ONLY
    if unknown:
        raise TypeError(f"alfworld_tasks: unexpected arguments {sorted(unknown)}")
    return Dataset.from_list(task_rows(split, num_tasks, seed, cache_dir, data_root, workers))


def alfworld_dataset(split: str = "train", num_games: int | None = None, seed: int = 0,
                     cache_dir: str | None = None, data_root: str | None = None, workers: int | None = None):
    """Same as :func:`alfworld_tasks` (``num_games`` = ``num_tasks``)."""
    return alfworld_tasks(split, num_games, seed, cache_dir=cache_dir, data_root=data_root, workers=workers)
