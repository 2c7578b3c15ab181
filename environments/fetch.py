"""A small deterministic text game with an expert policy, for tests and smoke runs.

The agent stands in the first room of a corridor and must pick up one named item somewhere down
the corridor; other rooms hold distractor items. Episode length depends on how far the item is,
so a batch of tasks gives episodes of different lengths, which is what the trainer's batching
and distributed code must cope with. It needs no download and steps in microseconds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from .base import AgentEnvironment, PromptView, reference_prompt

ITEMS = ("apple", "key", "book", "lamp", "cup", "coin", "map", "pen", "ring", "sock")


def make_fetch_task(seed: int, min_rooms: int = 2, max_rooms: int = 4) -> dict[str, Any]:
    """The task row for ``seed``: corridor length, target item and its room, distractors."""
    rng = random.Random(seed)
    num_rooms = rng.randint(min_rooms, max_rooms)
    items = rng.sample(ITEMS, num_rooms)
    target_room = rng.randint(1, num_rooms - 1)
    return {
        "seed": seed,
        "num_rooms": num_rooms,
        "room_items": items,
        "target_room": target_room,
        "target": items[target_room],
    }


SPLIT_SEED_OFFSET = {"train": 0, "test": 1_000_000, "eval": 1_000_000}


#: Constructor arguments of FetchEnvironment that the task builder may be handed and ignores.
_ENVIRONMENT_ONLY = ("action_parsing", "task_types")


def fetch_tasks(split: str = "train", num_tasks: int | None = None, seed: int = 0, min_rooms: int = 2,
                max_rooms: int = 4, **env_kwargs: Any):
    """A dataset of fetch task rows; train and test seeds never overlap.

    ``env_kwargs`` may repeat the environment's constructor arguments (none of them changes the
    game, so they are ignored); anything else is an error.
    """
    from datasets import Dataset

    unknown = sorted(set(env_kwargs) - set(_ENVIRONMENT_ONLY))
    if unknown:
        raise TypeError(f"fetch_tasks: unexpected arguments {unknown}")
    if split not in SPLIT_SEED_OFFSET:
        raise ValueError(f"fetch: unknown split {split!r}; choose one of {sorted(SPLIT_SEED_OFFSET)}")
    base = SPLIT_SEED_OFFSET[split] + seed * 10_000
    return Dataset.from_list([make_fetch_task(base + i, min_rooms, max_rooms) for i in range(num_tasks or 256)])


class FetchEnvironment(AgentEnvironment):
    """Walk down a corridor and take the named item. Reward 10 on success.

    Args:
        action_parsing: "strict" (default) or "reference" (see ``environments.base``).
        task_types: "single" (default: every task is of type ``fetch``) or "distance" (type
            ``fetch-d<k>``, k the rooms to walk: success and length per type then show how
            performance falls with the horizon, as per-type tables do for ALFWorld).
    """

    default_history_length = 2
    default_max_turns = 8
    TASK_TYPES = ("single", "distance")

    def __init__(self, action_parsing: str = "strict", task_types: str = "single") -> None:
        super().__init__(action_parsing)
        if task_types not in self.TASK_TYPES:
            raise ValueError(f"task_types: must be one of {self.TASK_TYPES}, not {task_types!r}")
        self._task_types = task_types
        self._task: dict[str, Any] = {}
        self._room = 0
        self._steps = 0
        self._max_steps: int | None = None

    def reset(self, task: Mapping[str, Any]) -> str:
        if "room_items" not in task:
            task = {**make_fetch_task(int(task["seed"])), **task}
        self._task = dict(task)
        self._room = 0
        self._steps = 0
        self._max_steps = task.get("max_steps")
        self.task_description = f"take the {task['target']}."
        self.task_type = "fetch" if self._task_types == "single" else f"fetch-d{self._task['target_room']}"
        self._update_actions()
        return self._describe()

    def _describe(self) -> str:
        item = self._task["room_items"][self._room]
        return f"You are in room {self._room}. You see a {item}." if item else f"You are in room {self._room}."

    def _update_actions(self) -> None:
        actions = []
        if self._room < self._task["num_rooms"] - 1:
            actions.append("go east")
        if self._room > 0:
            actions.append("go west")
        if self._task["room_items"][self._room]:
            actions.append(f"take {self._task['room_items'][self._room]}")
        actions.append("look")
        self.admissible_actions = tuple(actions)

    def execute(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        won = False
        if action == "go east" and "go east" in self.admissible_actions:
            self._room += 1
            observation = self._describe()
        elif action == "go west" and "go west" in self.admissible_actions:
            self._room -= 1
            observation = self._describe()
        elif action.startswith("take ") and action in self.admissible_actions:
            item = action[len("take ") :]
            won = item == self._task["target"]
            observation = f"You take the {item}." + ("" if won else " It is not what you were asked for.")
            self._task["room_items"] = list(self._task["room_items"])
            self._task["room_items"][self._room] = None
        elif action == "look":
            observation = self._describe()
        else:
            observation = "Nothing happens."
        self._update_actions()
        return observation, 10.0 if won else 0.0, won, won, {"won": won}

    def step(self, text: str):  # noqa: D102 - every answer, ill-formed or not, counts towards max_steps
        result = super().step(text)
        self._steps += 1
        if self._max_steps is not None and self._steps >= self._max_steps:
            result.done = True
        return result

    def render_prompt(self, view: PromptView, history_length: int) -> str:
        actions = "[" + ", ".join(f"'{a}'" for a in view.admissible_actions) + "]"
        task = f"You are an expert agent exploring a corridor of rooms. Your task is to: {view.task}"
        return reference_prompt([task], view, history_length, actions)

    def expert_action(self) -> str:
        """The optimal next action: walk to the target's room (back west after an overshoot), then take it."""
        if self._room == self._task["target_room"]:
            return f"take {self._task['target']}"
        return "go east" if self._room < self._task["target_room"] else "go west"
