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
from typing import Any, NamedTuple

INSTRUCTION_LINE = "Now it's your turn to take an action."
FORMAT_INSTRUCTIONS = (
    "You should first reason step-by-step about the current situation. This reasoning process MUST be "
    "enclosed within <think> </think> tags.\n"
    "Once you've finished your reasoning, you should choose an admissible action for the current step and "
    "present it within <action> </action> tags."
)
#: One-sentence description of a well-formed answer in the think/action format (see
#: :attr:`AgentEnvironment.response_format`).
THINK_ACTION_RESPONSE_FORMAT = (
    "Reason inside <think> </think>, then give exactly one admissible action inside <action> </action>."
)
#: A well-formed think/action answer, ``{action}`` standing for the action (see
#: :attr:`AgentEnvironment.response_example`).
THINK_ACTION_RESPONSE_EXAMPLE = "<think>...</think><action>{action}</action>"


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
    #: What the next prompts show as this step's action (:attr:`HistoryEntry.action`), set by the
    #: environment according to its ``action_parsing`` mode; ``None`` when it does not say.
    history_text: str | None = None


#: How an environment turns a raw answer into an action (the ``action_parsing`` kwarg every
#: environment accepts). "strict" (the default) is stricter than the reference so that the
#: invalid-action penalty and rate measure the format the prompt asks for, and an ill-formed answer
#: never moves the game; "reference" reproduces the reference projections for like-for-like runs.
ACTION_PARSING_MODES = ("strict", "reference")

#: Characters of a tagless answer the reference sends to the engine (and keeps in the history)
#: when it finds no action block: the last 30 in ALFWorld, the last 20 in WebShop.
REFERENCE_TAIL_CHARS = 30

_CJK_RE = re.compile(r"[\u4e00-\u9fff]")
_ACTION_OPEN_RE = re.compile("<action>", re.IGNORECASE)


def check_action_parsing(mode: str) -> str:
    """``mode`` if it names an action-parsing mode; a ValueError naming the field otherwise."""
    if mode not in ACTION_PARSING_MODES:
        raise ValueError(f"action_parsing: expected one of {list(ACTION_PARSING_MODES)}, got {mode!r}")
    return mode


class TagBlock(NamedTuple):
    """One ``<tag>content</tag>`` block of an answer: its tag (lower case), span and content."""

    tag: str
    start: int
    end: int
    content: str


def tag_blocks(text: str, tags: Sequence[str]) -> list[TagBlock]:
    """The ``<tag>...</tag>`` blocks of ``text`` for any of ``tags`` (tags in any case), left to right,
    exactly those ``re.finditer(r"<(t1|t2)>(.*?)</\\1>", re.DOTALL | re.IGNORECASE)`` finds, in
    linear time.

    That regex retries from every later opening tag when one has no closing tag, which is
    quadratic on an answer that repeats an opening tag (a policy can write 64k tokens of
    ``<action>``: seconds to minutes per answer). Here an opening tag with no closing tag after it
    is skipped at once, known from where each tag's last closing tag is.
    """
    opening = re.compile("<(" + "|".join(re.escape(t) for t in tags) + ")>", re.IGNORECASE)
    closing = {t.lower(): re.compile(f"</{re.escape(t)}>", re.IGNORECASE) for t in tags}
    last_close = {t: max((m.start() for m in pattern.finditer(text)), default=-1) for t, pattern in closing.items()}
    blocks: list[TagBlock] = []
    position = 0
    while (opened := opening.search(text, position)) is not None:
        tag = opened.group(1).lower()
        if last_close[tag] < opened.end():  # never closed: the regex would fail here and move on
            position = opened.start() + 1
            continue
        closed = closing[tag].search(text, opened.end())
        blocks.append(TagBlock(tag, opened.start(), closed.end(), text[opened.end() : closed.start()]))
        position = closed.end()
    return blocks


def parse_think_action(text: str) -> tuple[str | None, bool]:
    """Project a raw model answer onto an action (the "strict" mode, stricter than the reference).

    An answer is valid when it contains exactly one ``<action>...</action>`` block with non-empty
    content and a ``<think>...</think>`` block before it (tags in any case). The action is
    lower-cased and stripped (the ALFWorld and WebShop engines match actions case-insensitively).
    For an ill-formed answer the best-effort action (the content of the last action block, if any)
    is still returned so that it can be logged, but it is flagged invalid and never executed.
    See :func:`parse_think_action_reference` for the reference's looser rule.
    """
    actions = tag_blocks(text, ("action",))
    if not actions:
        return None, False
    action = actions[-1].content.strip().lower()
    if not action:
        return None, False
    thinks = tag_blocks(text, ("think",))
    last_open = max((m.start() for m in _ACTION_OPEN_RE.finditer(text)), default=-1)
    valid = len(actions) == 1 and bool(thinks) and thinks[0].end <= last_open
    return action, valid


def parse_think_action_reference(text: str, tail_chars: int = REFERENCE_TAIL_CHARS) -> tuple[str, bool]:
    """Project a raw answer onto an action the way the reference ALFWorld/WebShop projections do.

    The action is the text between the first ``<action>`` and the first ``</action>`` (tags in any
    case), stripped and lower-cased; it may be empty, and later action blocks are ignored. Without
    both tags the answer is invalid and its action is the last ``tail_chars`` characters of the
    lower-cased answer. An answer with an action block is still invalid when it lacks a literal,
    lower-case ``<think>`` or ``</think>`` (anywhere, in any order) or contains a CJK ideograph.
    The action is always a string: in this mode even an invalid answer's action is played.
    """
    lowered = text.lower()
    start, end = lowered.find("<action>"), lowered.find("</action>")
    if start == -1 or end == -1:
        return lowered[-tail_chars:] if tail_chars > 0 else "", False
    action = lowered[start + len("<action>"):end].strip()
    valid = "<think>" in text and "</think>" in text and _CJK_RE.search(text) is None
    return action, valid


def render_history(history: Sequence[HistoryEntry], first_step: int) -> str:
    """Render past steps as the reference ALFWorld/WebShop prompts do: numbered observation/action
    pairs (the reference Search prompt lists "Step n:<action> <information>" lines instead).

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

    Subclasses implement :meth:`reset`, :meth:`execute` and :meth:`render_prompt`. The base class
    turns the model's raw text into an action and applies the format check according to
    ``action_parsing`` (see :data:`ACTION_PARSING_MODES`). In "strict" mode an ill-formed answer
    never reaches the engine: the state is left as it was and the agent is told what went wrong.
    In "reference" mode, as in the reference code, its best-effort action is played anyway and only
    flagged invalid (the trainer still applies the invalid-action penalty).
    """

    #: Registered name (set by :func:`environments.register`).
    name: str = ""
    #: Number of past steps shown in the prompt when the config does not say otherwise.
    default_history_length: int = 2
    #: Default cap on the number of steps of an episode.
    default_max_turns: int = 30
    #: The line of the prompt before which a step-level skill is inserted.
    instruction_anchor: str = INSTRUCTION_LINE
    #: "strict" or "reference" (see :data:`ACTION_PARSING_MODES`); set by the constructor.
    action_parsing: str = "strict"
    #: Tail of a tagless answer played in "reference" mode (the reference: 30 ALFWorld, 20 WebShop).
    reference_tail_chars: int = REFERENCE_TAIL_CHARS

    def __init__(self, action_parsing: str = "strict") -> None:
        self.action_parsing = check_action_parsing(action_parsing)
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
        """Apply an action; return ``(observation, reward, done, won, info)``.

        In "strict" mode only a well-formed answer's action arrives here; in "reference" mode an
        ill-formed answer's best-effort action does too (any string, possibly empty), so the
        engine must treat an unknown action as a no-op rather than fail.
        """

    @abstractmethod
    def render_prompt(self, view: PromptView, history_length: int) -> str:
        """The user message of one step, showing the last ``history_length`` steps of ``view``."""

    @property
    def response_format(self) -> str:
        """One sentence saying what a well-formed answer looks like in this environment.

        Format advice written about a trajectory (e.g. by the rule-based skill extractor after
        ill-formed answers) quotes it, so it must match :meth:`parse_action`: an environment with
        another output format overrides both.
        """
        return THINK_ACTION_RESPONSE_FORMAT

    @property
    def response_example(self) -> str:
        """A concrete well-formed answer, with ``{action}`` standing for an action as
        :meth:`parse_action` returns it: filled in, it must parse back to that action, valid.

        Format advice shows it rather than describing the format only: the description alone did
        not make well-formed answers likelier. Plain text around one ``{action}``, so that a
        trajectory can carry it as a template (`opid_trl.Trajectory.response_example`).
        """
        return THINK_ACTION_RESPONSE_EXAMPLE

    def parse_action(self, text: str) -> tuple[str | None, bool]:
        """Project the raw answer onto ``(action, valid)`` in the environment's ``action_parsing``
        mode; override for other output formats (e.g. search)."""
        if self.action_parsing == "reference":
            return parse_think_action_reference(text, self.reference_tail_chars)
        return parse_think_action(text)

    def executes(self, action: str | None, valid: bool) -> bool:
        """Whether :meth:`step` plays the parsed answer ``(action, valid)`` on the engine: a valid
        one always; an ill-formed one only in "reference" mode, when it has an action."""
        return valid or (self.action_parsing == "reference" and action is not None)

    def history_text(self, text: str, action: str | None) -> str:
        """What later prompts show as the action of the answer ``text`` (projected onto ``action``).

        "reference": the action that was played, exactly as the reference's memory stores it (for a
        tagless answer, its tail). "strict": the action when one was found, else the whole answer
        stripped, so that the model sees what it wrote.
        """
        if self.action_parsing == "reference":
            return action or ""
        return action if action else text.strip()

    def invalid_action_feedback(self) -> str:
        """Observation shown after an ill-formed answer."""
        return "Invalid action format. Put your reasoning in <think> </think> and one action in <action> </action>."

    def step(self, text: str) -> StepResult:
        """Play the model's raw answer ``text``."""
        action, valid = self.parse_action(text)
        if not self.executes(action, valid):
            return StepResult(
                observation=self.invalid_action_feedback(),
                reward=0.0,
                done=False,
                won=False,
                action=action,
                action_valid=False,
                admissible_actions=self.admissible_actions,
                history_text=self.history_text(text, action),
            )
        observation, reward, done, won, info = self.execute(action)
        return StepResult(
            observation=observation,
            reward=float(reward),
            done=bool(done),
            won=bool(won),
            action=action,
            action_valid=valid,
            admissible_actions=self.admissible_actions,
            info=info,
            history_text=self.history_text(text, action),
        )

    def expert_action(self) -> str | None:
        """The action an expert would take now (for SFT warm starts and tests), if the environment
        knows one; ``None`` otherwise."""
        return None

    def step_label(self, expert_action: str | None, action: str | None, valid: bool) -> bool | None:
        """Whether a played step was good, judged against the expert's action at the state it was
        played in (``expert_action``, asked before the step); ``None`` when the expert had no answer.

        The skill-signal diagnostic (`opid_trl.skills.signal`) ranks the skill advantage of good
        steps above bad ones with it. The default rule, right for environments whose expert knows
        the one shortest path (fetch, ALFWorld's planner while the episode is on its plan): an
        ill-formed answer is bad; a well-formed one is good iff its action is the expert's (case and
        whitespace ignored). Environments where several actions are equally good override it.
        """
        if expert_action is None:
            return None
        if not valid or action is None:
            return False
        return " ".join(action.lower().split()) == " ".join(expert_action.lower().split())

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
