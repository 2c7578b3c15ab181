"""The environment protocol every OPID environment implements, and the pieces they share.

An environment is a text game played one step at a time. The trainer never looks inside it: it
asks for a prompt (the environment's own template over the task, a window of recent steps, the
current observation and the admissible actions), sends the model's raw text back, and reads the
reward, the end-of-episode flag and whether the answer was a well-formed action.

The prompt is rendered from a :class:`PromptView` snapshot rather than stored as text so that the
trainer can re-render it with a shorter history when it is over the token budget, and inject a
skill into the very same template afterwards.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_ACTION_RE = re.compile(r"<action>(.*?)</action>", re.DOTALL | re.IGNORECASE)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)

INSTRUCTION_LINE = "Now it's your turn to take an action."
FORMAT_INSTRUCTIONS = (
    "You should first reason step-by-step about the current situation. This reasoning process MUST be "
    "enclosed within <think> </think> tags.\n"
    "Once you've finished your reasoning, you should choose an admissible action for the current step and "
    "present it within <action> </action> tags."
)


@dataclass(frozen=True)
class HistoryEntry:
    """One past step as the agent saw it: the observation it acted on and the action it took."""

    observation: str
    action: str


@dataclass(frozen=True)
class PromptView:
    """Everything an environment needs to render the prompt of one step.

    ``history`` holds every earlier step of the episode, oldest first; the renderer keeps only the
    last ``history_length`` of them, and the trainer may ask for fewer when the prompt is too long.
    """

    task: str
    step: int
    observation: str
    admissible_actions: tuple[str, ...]
    history: tuple[HistoryEntry, ...] = ()


@dataclass
class StepResult:
    """What one environment step returns to the trainer."""

    observation: str
    reward: float
    done: bool
    won: bool
    action: str | None
    action_valid: bool
    admissible_actions: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


def parse_think_action(text: str) -> tuple[str | None, bool]:
    """Project a raw model answer onto an action, as the reference environments do.

    An answer is valid when it contains exactly one ``<action>...</action>`` block with non-empty
    content and a ``<think>...</think>`` block before it. The action is lower-cased and stripped
    (the ALFWorld and WebShop engines match actions case-insensitively). For an ill-formed answer
    the best-effort action (the content of the last action block, if any) is still returned so
    that it can be logged, but it is flagged invalid.
    """
    actions = _ACTION_RE.findall(text)
    if not actions:
        return None, False
    action = actions[-1].strip().lower()
    if not action:
        return None, False
    think = _THINK_RE.search(text)
    action_start = text.lower().rfind("<action>")
    valid = len(actions) == 1 and think is not None and think.end() <= action_start
    return action, valid


def render_history(history: Sequence[HistoryEntry], first_step: int) -> str:
    """Render past steps as the reference prompt does: numbered observation/action pairs.

    ``first_step`` is the 1-based number of the first entry shown, so that the numbers match the
    step counter even when older steps were dropped from the window.
    """
    lines = []
    for offset, entry in enumerate(history):
        number = first_step + offset
        lines.append(f"[Observation {number}: '{entry.observation}', Action {number}: '{entry.action}']")
    return "\n".join(lines)


def reference_prompt(task_lines: Sequence[str], view: PromptView, history_length: int, actions_text: str,
                     history_separator: str = "\n", instructions: str = FORMAT_INSTRUCTIONS) -> str:
    """The step prompt of the reference environments (verl-agent layout).

    ``task_lines`` open the prompt (one of them states the task: the episode skill goes after it),
    then the last ``history_length`` steps, the current observation, ``actions_text`` (the
    admissible actions, formatted by the environment), and the final instruction line before
    which a step skill goes.
    """
    kept, first = window(view.history, history_length)
    lines = list(task_lines)
    if kept:
        lines.append(
            f"Prior to this step, you have already taken {view.step} step(s). Below are the most recent "
            f"{len(kept)} observations and the corresponding actions you took:{history_separator}"
            f"{render_history(kept, first)}"
        )
    lines.append(f"You are now at step {view.step + 1} and your current observation is: {view.observation}")
    lines.append(f"Your admissible actions of the current situation are: {actions_text}.")
    lines += ["", INSTRUCTION_LINE, instructions]
    return "\n".join(lines)


def window(history: Sequence[HistoryEntry], history_length: int) -> tuple[tuple[HistoryEntry, ...], int]:
    """The last ``history_length`` entries and the 1-based step number of the first one kept."""
    kept = tuple(history[len(history) - history_length :]) if history_length > 0 else ()
    return kept, len(history) - len(kept) + 1


class AgentEnvironment(ABC):
    """Base class of every environment: one instance plays one episode at a time.

    Subclasses implement :meth:`reset`, :meth:`execute` (a well-formed action) and
    :meth:`render_prompt`. The base class turns the model's raw text into an action, applies the
    format check, and keeps an ill-formed answer from reaching the engine: the state is left as it
    was and the agent is told what went wrong, as the reference does.
    """

    #: Registered name (set by :func:`environments.register`).
    name: str = ""
    #: Number of past steps shown in the prompt when the config does not say otherwise.
    default_history_length: int = 2
    #: Default cap on the number of steps of an episode.
    default_max_turns: int = 30
    #: The line of the prompt before which a step-level skill is inserted.
    instruction_anchor: str = INSTRUCTION_LINE

    def __init__(self) -> None:
        self.task_description: str = ""
        self.task_type: str | None = None
        self.admissible_actions: tuple[str, ...] = ()

    @abstractmethod
    def reset(self, task: Mapping[str, Any]) -> str:
        """Start the episode described by ``task`` (a dataset row) and return the first observation.

        Must set :attr:`task_description`, :attr:`task_type` and :attr:`admissible_actions`. The same
        row must give the same game every time (the N episodes of a group play the same task).
        """

    @abstractmethod
    def execute(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Apply a well-formed action; return ``(observation, reward, done, won, info)``."""

    @abstractmethod
    def render_prompt(self, view: PromptView, history_length: int) -> str:
        """The user message of one step, showing the last ``history_length`` steps of ``view``."""

    def parse_action(self, text: str) -> tuple[str | None, bool]:
        """Project the raw answer onto an action; override for other output formats (e.g. search)."""
        return parse_think_action(text)

    def invalid_action_feedback(self) -> str:
        """Observation shown after an ill-formed answer."""
        return "Invalid action format. Put your reasoning in <think> </think> and one action in <action> </action>."

    def step(self, text: str) -> StepResult:
        """Play the model's raw answer ``text``."""
        action, valid = self.parse_action(text)
        if not valid:
            return StepResult(
                observation=self.invalid_action_feedback(),
                reward=0.0,
                done=False,
                won=False,
                action=action,
                action_valid=False,
                admissible_actions=self.admissible_actions,
            )
        observation, reward, done, won, info = self.execute(action)
        return StepResult(
            observation=observation,
            reward=float(reward),
            done=bool(done),
            won=bool(won),
            action=action,
            action_valid=True,
            admissible_actions=self.admissible_actions,
            info=info,
        )

    def expert_action(self) -> str | None:
        """The action an expert would take now (for SFT warm starts and tests), if the environment
        knows one; ``None`` otherwise."""
        return None

    def expert_response(self) -> str | None:
        """A complete expert answer for the current step (brief reasoning, then the action), in the
        environment's output format; ``None`` without an expert. SFT warm starts train on it."""
        action = self.expert_action()
        if action is None:
            return None
        return (f"<think>My task is to {self.task_description.rstrip('.')}. The most useful next action is "
                f"'{action}'.</think><action>{action}</action>")

    def close(self) -> None:
        """Release engine resources; called when the trainer is done with the instance."""
