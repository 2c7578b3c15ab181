"""The interface OPIDTrainer talks to: a declared base class instead of probing for attributes.

A skill extractor turns completed trajectories into skills. The trainer calls it once per
rollout and relies on three optional hooks, all declared here with defaults so that it never
has to ask ``hasattr``: `bind` (once, after the trainer is built, with an `ExtractorContext`:
what an extractor may take from the run, declared instead of the trainer itself), `pop_metrics`
(after each call) and `supports_overlap` (whether the call may run in a background thread).
Plain callables still work: `opid_trl.skills.extractors.as_skill_extractor` wraps them in
`CallableSkillExtractor`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

from opid_trl.generation.base import GenerationBackend, PolicyHandle
from opid_trl.trajectory import EpisodeSkills, Trajectory


@dataclass(frozen=True)
class ExtractorContext:
    """What a skill extractor may take from the run it serves (`SkillExtractor.bind`)."""

    #: `OPIDConfig.max_step_skills`: the default cap on step skills per trajectory.
    max_step_skills: int
    #: The run's output folder (a persistent analysis cache lives under it).
    output_dir: str
    #: This process's index (per-rank files).
    process_index: int = 0
    #: The policy being trained, for an extractor that generates with it (None outside a trainer).
    policy: PolicyHandle | None = None
    #: The rollout engine, for an extractor that generates with the policy.
    generation_backend: GenerationBackend | None = None


class SkillExtractor(ABC):
    """Base class of every skill extractor: ``extractor(trajectories) -> [EpisodeSkills | None, ...]``."""

    #: Whether a call may run in a background thread while the trainer computes the old-policy
    #: and reference log-probs. True for anything that does not use the policy model itself
    #: (an HTTP endpoint, rules); an extractor that generates with the policy must say False,
    #: since it would race the log-prob passes for the same weights.
    supports_overlap: bool = True

    @abstractmethod
    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        """One entry per trajectory, in order: its skills, or ``None`` when it could not be analysed."""

    def bind(self, context: ExtractorContext) -> None:
        """Called once by OPIDTrainer after construction, so an extractor can take what it needs
        (the policy extractor: the policy and its generation backend; others: the step-skill cap
        or the output directory). The default needs nothing."""

    def pop_metrics(self) -> dict[str, float]:
        """Counters accumulated since the last call (requests, failures, tokens, ...), reset on read.

        The trainer sums them over processes and logs them as ``skill_extractor/<counter>``.
        """
        return {}


class CallableSkillExtractor(SkillExtractor):
    """Adapter that lets any callable ``trajectories -> list of EpisodeSkills | None`` act as a
    `SkillExtractor`. Objects written before the base class existed keep working: their own
    ``bind`` (or, under its earlier name, ``bind_trainer``), ``pop_metrics`` and
    ``supports_overlap``, when present, are used."""

    def __init__(self, function: Callable[[Sequence[Trajectory]], Sequence[EpisodeSkills | None]]) -> None:
        if not callable(function):
            raise TypeError(f"CallableSkillExtractor: expected a callable, got {type(function).__name__}")
        self.wrapped = function

    @property
    def supports_overlap(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.wrapped, "supports_overlap", True))

    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        return list(self.wrapped(trajectories))

    def bind(self, context: ExtractorContext) -> None:
        bind = getattr(self.wrapped, "bind", None) or getattr(self.wrapped, "bind_trainer", None)
        if callable(bind):
            bind(context)

    def pop_metrics(self) -> dict[str, float]:
        pop = getattr(self.wrapped, "pop_metrics", None)
        return dict(pop() or {}) if callable(pop) else {}

    def __repr__(self) -> str:
        return f"CallableSkillExtractor({self.wrapped!r})"


#: What OPIDTrainer's ``skill_extractor`` argument accepts besides ``None``: a `SkillExtractor`, a
#: plain callable, or a registered name (see `opid_trl.skills.extractors.as_skill_extractor`).
SkillExtractorLike = Union[SkillExtractor, Callable[[Sequence[Trajectory]], Sequence[Union[EpisodeSkills, None]]], str]
