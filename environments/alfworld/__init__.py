"""ALFWorld on the real engine (TextWorld PddlEnv + fast-downward), with an offline game generator.

Importing this package needs neither alfworld nor textworld; building a game or playing one does
(``pip install 'opid-trl[alfworld]'``). Register :class:`ALFWorldEnvironment` under "alfworld"
with :func:`alfworld_tasks` as its task builder: official games from ``$ALFWORLD_DATA`` when
present, otherwise games generated once into a cache (:func:`ensure_games`).
"""

from .data import (
    alfworld_dataset,
    alfworld_tasks,
    default_cache_dir,
    ensure_game_records,
    ensure_games,
    generate_into,
    official_game_files,
    task_rows,
)
from .env import ALFWorldEnvironment, task_type_of
from .scenes import HELD_OUT_TARGETS, SPLIT_DIRS, TASK_TYPES

__all__ = [
    "ALFWorldEnvironment",
    "HELD_OUT_TARGETS",
    "SPLIT_DIRS",
    "TASK_TYPES",
    "alfworld_dataset",
    "alfworld_tasks",
    "default_cache_dir",
    "ensure_game_records",
    "ensure_games",
    "generate_into",
    "official_game_files",
    "task_rows",
    "task_type_of",
]
