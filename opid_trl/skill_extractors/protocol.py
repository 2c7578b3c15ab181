"""The interface OPIDTrainer talks to: a declared base class instead of probing for attributes.

A skill extractor turns completed trajectories into skills. The trainer calls it once per
rollout and relies on three optional hooks, all declared here with defaults so that it never
has to ask ``hasattr``: `bind_trainer` (once, after the trainer is built), `pop_metrics`
(after each analysis) and `supports_overlap` (whether the call may run in a background thread).
Plain callables still work: `as_skill_extractor` wraps them in `CallableSkillExtractor`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from ..trajectory import EpisodeSkills, SkillExtractorLike, Trajectory


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

    def bind_trainer(self, trainer: Any) -> None:
        """Called once by OPIDTrainer after construction, so an extractor can take what it needs
        from it (the policy extractor needs the model and generation backend; others take the
        step-skill cap or the output directory). The default needs nothing."""

    def pop_metrics(self) -> dict[str, float]:
        """Counters accumulated since the last call (requests, failures, tokens, ...), reset on read.

        The trainer sums them over processes and logs them as ``skill_extractor/<counter>``.
        """
        return {}


class CallableSkillExtractor(SkillExtractor):
    """Adapter that lets any callable ``trajectories -> list of EpisodeSkills | None`` act as a
    `SkillExtractor`. Objects written before the base class existed keep working: their own
    ``bind_trainer``, ``pop_metrics`` and ``supports_overlap``, when present, are used."""

    def __init__(self, function: Callable[[Sequence[Trajectory]], Sequence[EpisodeSkills | None]]) -> None:
        if not callable(function):
            raise TypeError(f"CallableSkillExtractor: expected a callable, got {type(function).__name__}")
        self.wrapped = function

    @property
    def supports_overlap(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.wrapped, "supports_overlap", True))

    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        return list(self.wrapped(trajectories))

    def bind_trainer(self, trainer: Any) -> None:
        bind = getattr(self.wrapped, "bind_trainer", None)
        if callable(bind):
            bind(trainer)

    def pop_metrics(self) -> dict[str, float]:
        pop = getattr(self.wrapped, "pop_metrics", None)
        return dict(pop() or {}) if callable(pop) else {}

    def __repr__(self) -> str:
        return f"CallableSkillExtractor({self.wrapped!r})"


def as_skill_extractor(obj: SkillExtractorLike | None) -> SkillExtractor | None:
    """Normalise the trainer's ``skill_extractor`` argument to a `SkillExtractor` (or ``None``).

    A name builds the registered extractor, a `SkillExtractor` is returned as is, any other
    callable is wrapped in `CallableSkillExtractor`.
    """
    from .registry import SKILL_EXTRACTORS, make_skill_extractor

    if obj is None:
        return None
    if isinstance(obj, str):
        return make_skill_extractor(obj)
    if isinstance(obj, SkillExtractor):
        return obj
    if callable(obj):
        return CallableSkillExtractor(obj)
    raise TypeError("skill_extractor must be a SkillExtractor, a callable (trajectories -> list of EpisodeSkills "
                    f"| None) or the name of one ({', '.join(repr(n) for n in sorted(SKILL_EXTRACTORS))}); "
                    f"got {type(obj).__name__}")
