"""An episode being played, and afterwards its training rows: the record the rollout fills turn by
turn and every later stage reads (step rows, skill prompts, trajectories for the skill extractor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from environments.base import AgentEnvironment, HistoryEntry, PromptView
from opid_trl.algorithms.routing import inject
from opid_trl.trajectory import StepRecord, Trajectory


@dataclass
class Episode:
    """One episode being played, and afterwards its training rows (one per step)."""

    env: AgentEnvironment
    task_row: Mapping[str, Any]
    group_id: int
    trajectory_id: str
    observation: str = ""
    history: list[HistoryEntry] = field(default_factory=list)
    views: list[PromptView] = field(default_factory=list)
    #: How many history steps each step's prompt showed (the longest window that fit the budget).
    history_windows: list[int] = field(default_factory=list)
    #: Per step: how its prompt was cut to fit the budget (None, "observation" or "tokens").
    prompt_cuts: list[str | None] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)
    #: The sampler's log-prob of every token of ``completion_ids`` (None where the engine gives none).
    sampling_logps: list[list[float] | None] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    done: bool = False
    won: bool = False
    error: str | None = None
    #: The environment's task type, recorded at reset (the instance is reused afterwards).
    task_type: str | None = None
    #: The task statement, recorded at reset.
    task: str = ""
    #: Per step, with `EpisodeRunner.record_expert`: the environment's verdict on the played step
    #: against its expert's action at that state (`AgentEnvironment.step_label`: good, bad, or
    #: ``None`` where the expert had none). Never shown to a skill extractor: it is the oracle the
    #: skill-signal diagnostic measures skills against.
    step_labels: list[bool | None] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether the environment failed this episode (it raised, hung, or answered garbage)."""
        return self.error is not None

    @property
    def env_return(self) -> float:
        """Sum of environment rewards (invalid-action penalties not included)."""
        return sum(step.reward for step in self.steps)

    def skill_prompt(self, t: int, episode_skill: str | None, step_skill: str | None) -> str:
        """Step ``t``'s prompt with the skill(s) injected: the same template over the same history
        window (and the same cut observation) the policy saw, never re-fitted, so the log-prob
        shift is the skill's alone."""
        view = self.views[t]
        prompt = self.env.render_prompt(view, self.history_windows[t])
        return inject(prompt, episode_skill, step_skill, task=view.task, anchor=self.env.instruction_anchor)

    def to_trajectory(self, invalid_action_penalty: float, gamma: float) -> Trajectory:
        """The record shown to a skill extractor."""
        penalty = invalid_action_penalty * sum(not s.action_valid for s in self.steps)
        trajectory = Trajectory(
            trajectory_id=self.trajectory_id,
            group_id=self.group_id,
            task=self.task,
            steps=self.steps,
            outcome=self.env_return - penalty,
            success=self.won,
            task_type=self.task_type,
            response_format=self.env.response_format if self.env is not None else None,
            response_example=self.env.response_example if self.env is not None else None,
        )
        trajectory.fill_discounted_returns(gamma)
        return trajectory
