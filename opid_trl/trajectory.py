"""The records a rollout produces and a skill extractor consumes (a leaf: it imports no stage).

Also the length limits of a skill and the one function that clips one (`clip_skill`), since every
skill, whichever extractor wrote it, is cleaned and clipped here before it reaches a prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opid_trl.untrusted_text import clean_text, clip_text


@dataclass
class StepRecord:
    """One environment step: what the agent saw, what it answered, what happened."""

    index: int
    observation: str
    response: str
    action: str | None = None
    action_valid: bool = True
    reward: float = 0.0
    #: Discounted return from this step on (filled in when the episode ends).
    discounted_return: float = 0.0
    #: Extra engine information (task-specific progress, scores).
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """A completed episode, as shown to a skill extractor.

    ``outcome`` is the sum of the environment rewards, invalid-action penalties included;
    ``success`` is the environment's verdict (or ``outcome >= success_threshold`` when the
    environment gives none).
    """

    trajectory_id: str
    group_id: int
    task: str
    steps: list[StepRecord]
    outcome: float
    success: bool
    task_type: str | None = None
    #: The environment's one-sentence description of a well-formed answer
    #: (`AgentEnvironment.response_format`), so that format advice quotes the right tags;
    #: ``None`` when unknown (extractors then assume the think/action format).
    response_format: str | None = None
    #: A well-formed answer with ``{action}`` standing for the action
    #: (`AgentEnvironment.response_example`), so that format advice can show one in the right
    #: format; ``None`` when unknown (extractors then assume the think/action format).
    response_example: str | None = None

    def fill_discounted_returns(self, gamma: float) -> None:
        """G_t = r_t + gamma * G_{t+1}, written into each step."""
        running = 0.0
        for step in reversed(self.steps):
            running = step.reward + gamma * running
            step.discounted_return = running


@dataclass
class EpisodeSkills:
    """What a skill extractor returns for one trajectory.

    ``step_skills`` maps a step index of the trajectory to a one-sentence instruction for that step
    (the critical steps). An extractor that could not analyse a trajectory returns ``None`` for it.
    """

    episode_skill: str | None = None
    step_skills: dict[int, str] = field(default_factory=dict)
    #: Set when the analysis failed: the trajectory then gets no skill signal (kept for the audit log).
    error: str | None = None
    #: Audit details (prompt, raw answer, latency, tokens, cache hit, ...); never holds credentials.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether this result carries no skill signal."""
        return self.error is not None or not (self.episode_skill or self.step_skills)

    def cleaned(self, num_steps: int, max_step_skills: int) -> EpisodeSkills:
        """Drop empty skills and indices outside the trajectory; keep the earliest ``max_step_skills``.

        Extractor output is untrusted text that is pasted into the policy's prompt, so every skill
        is also made one line (whitespace runs collapsed: a newline could forge a prompt line) and
        capped (`MAX_EPISODE_SKILL_CHARS`, `MAX_STEP_SKILL_CHARS`) with `clip_skill`. Cleaning a
        cleaned result changes nothing.
        """
        episode = clip_skill(self.episode_skill, MAX_EPISODE_SKILL_CHARS) if isinstance(self.episode_skill, str) else ""
        steps = {}
        for key, text in self.step_skills.items():
            try:
                index = int(key)
            except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
                continue
            if 0 <= index < num_steps and isinstance(text, str):
                text = clip_skill(text, MAX_STEP_SKILL_CHARS)
                if text:
                    steps[index] = text
        kept = dict(sorted(steps.items())[:max_step_skills])
        return EpisodeSkills(episode_skill=episode or None, step_skills=kept, error=self.error, meta=self.meta)


#: Longest episode skill, in characters, that reaches a prompt (a workflow or a few avoidance rules).
MAX_EPISODE_SKILL_CHARS = 600
#: Longest step skill, in characters, that reaches a prompt (one imperative sentence).
MAX_STEP_SKILL_CHARS = 300
_ELLIPSIS = "\u2026"


def clip_skill(text: str, limit: int) -> str:
    """``text`` on one line and at most ``limit`` characters, cut at a word boundary with an ellipsis.

    A word boundary keeps the cut readable; a single word longer than the budget (a pasted blob)
    is cut hard, since there is no boundary to honour.
    """
    return clip_text(" ".join(clean_text(text).split()), limit, marker=_ELLIPSIS, word_boundary=True)
