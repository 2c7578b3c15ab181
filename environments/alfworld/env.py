"""ALFWorld as an OPID environment: one real-engine game per episode, the reference prompt.

A task row names a game file (``{"game_file": path}``, official or generated). The prompt follows
the reference ALFWorld template (task, step count, the last K observation/action pairs, the
current observation, the admissible actions, the ``<think>/<action>`` instructions); "help" is not
offered, as in the reference. Reward is 10 when the game is won, which also ends the episode; the
step cap is the trainer's ``max_turns`` (30 by default, as in the reference runs).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ..base import AgentEnvironment, PromptView, reference_prompt
from .scenes import TASK_TYPES

_TASK_RE = re.compile(r"Your task is to: (.*)", re.DOTALL)


def task_type_of(game_file: str) -> str | None:
    """The task type of a game: its traj_data.json, else the ALFRED directory name."""
    traj = os.path.join(os.path.dirname(game_file), "traj_data.json")
    if os.path.exists(traj):
        with open(traj) as f:
            return json.load(f).get("task_type")
    parent = os.path.basename(os.path.dirname(os.path.dirname(game_file)))
    return next((t for t in TASK_TYPES if parent.startswith(t)), None)


class ALFWorldEnvironment(AgentEnvironment):
    """An ALFWorld text game (TextWorld PddlEnv + fast-downward), one game per ``reset``.

    Args:
        success_reward: reward of the winning step (10 in the reference).
        data_root: directory that relative ``game_file`` paths are resolved against; the task
            builder lists the official games under it, so give it to both.
        action_parsing: "strict" (default) or "reference" (see ``environments.base``): in
            "reference" mode an ill-formed answer's action, or the last 30 characters of a tagless
            one, is still sent to the game (usually "Nothing happens.").
    """

    default_history_length = 5
    default_max_turns = 30

    def __init__(self, success_reward: float = 10.0, data_root: str | None = None,
                 action_parsing: str = "strict") -> None:
        super().__init__(action_parsing)
        self.success_reward = float(success_reward)
        self.data_root = data_root
        self.game_file: str | None = None
        self._engine = None  # created at the first reset: the trainer's probe instance never plays
        self._plan: list[str] = []
        self._plan_position: int | None = None

    def _resolve(self, task: Mapping[str, Any]) -> str:
        path = task.get("game_file") or task.get("gamefile")
        if not path:
            raise KeyError("an ALFWorld task row needs a 'game_file'")
        if self.data_root and not os.path.isabs(path):
            path = os.path.join(self.data_root, path)
        return str(path)

    def reset(self, task: Mapping[str, Any]) -> str:
        if self._engine is None:
            from .engine import Engine

            self._engine = Engine()
        self.game_file = self._resolve(task)
        state = self._engine.load(self.game_file)
        intro = state["feedback"]
        match = _TASK_RE.search(intro)
        self.task_description = match.group(1).strip() if match else ""
        self.task_type = task.get("task_type") or task_type_of(self.game_file)
        self._update_actions()
        self._plan, self._plan_position = self.walkthrough(), 0
        return intro.strip()

    def _update_actions(self) -> None:
        self.admissible_actions = tuple(a for a in self._engine.admissible_commands if a != "help")

    def execute(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        admissible = action in self.admissible_actions
        if self._plan_position is not None:
            on_plan = self._plan_position < len(self._plan) and action == self._plan[self._plan_position]
            self._plan_position = self._plan_position + 1 if on_plan else None
        state = self._engine.step(action)
        won = bool(state["won"])
        self._update_actions()
        info = {"won": won, "task_type": self.task_type, "admissible": admissible}
        return state["feedback"].strip(), self.success_reward if won else 0.0, won, won, info

    def render_prompt(self, view: PromptView, history_length: int) -> str:
        actions = "[" + "\n ".join(f"'{a}'" for a in view.admissible_actions) + "]"
        task = f"You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: {view.task}"
        return reference_prompt([task], view, history_length, actions, history_separator=" ")

    def expert_action(self) -> str | None:
        """The next action of the game's expert plan while the episode has followed it so far."""
        if self._plan_position is None or self._plan_position >= len(self._plan):
            return None
        return self._plan[self._plan_position]

    def walkthrough(self) -> list[str]:
        """The expert plan stored in the current game file (fast-downward's, for generated games)."""
        if self.game_file is None:
            raise RuntimeError("reset() first")
        with open(self.game_file) as f:
            return list(json.load(f).get("walkthrough") or [])

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
