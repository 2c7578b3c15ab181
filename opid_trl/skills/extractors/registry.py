"""The built-in skill extractors by name, so run files and the trainer can name one, and the
normalisation of whatever the trainer was given (`as_skill_extractor`)."""

from __future__ import annotations

from typing import Any

from opid_trl.skills.extractors.openai_compatible import OpenAISkillExtractor
from opid_trl.skills.extractors.placebo import PlaceboSkillExtractor
from opid_trl.skills.extractors.policy import PolicySkillExtractor
from opid_trl.skills.extractors.protocol import CallableSkillExtractor, SkillExtractor, SkillExtractorLike
from opid_trl.skills.extractors.rule_based import RuleBasedSkillExtractor
from opid_trl.skills.extractors.scrambled import ScrambledSkillExtractor
from opid_trl.skills.extractors.shuffled import ShuffledSkillExtractor

SKILL_EXTRACTORS: dict[str, type[SkillExtractor]] = {
    "openai": OpenAISkillExtractor,
    "self": PolicySkillExtractor,
    "rule_based": RuleBasedSkillExtractor,
    "shuffled": ShuffledSkillExtractor,
    "scrambled": ScrambledSkillExtractor,
}


def skill_extractor_class(name: Any, field: str = "skill_extractor", also: str | None = None) -> type[SkillExtractor]:
    """The class registered as ``name``; a ValueError naming ``field`` and the choices (with
    ``also``, a further accepted name the caller handles) when there is none."""
    if isinstance(name, str) and name in SKILL_EXTRACTORS:
        return SKILL_EXTRACTORS[name]
    choices = sorted(SKILL_EXTRACTORS) + ([also] if also else [])
    raise ValueError(f"{field}: unknown skill extractor {name!r}; choose one of {choices}")


def make_skill_extractor(name: str, **kwargs: Any) -> SkillExtractor:
    """Build the skill extractor registered as ``name`` ('openai', 'self', 'rule_based', 'shuffled',
    'scrambled')."""
    cls = skill_extractor_class(name)
    if issubclass(cls, PlaceboSkillExtractor):  # a placebo wraps another extractor, built here by name
        inner = kwargs.pop("inner", "rule_based")
        if isinstance(inner, str) and issubclass(skill_extractor_class(inner), PlaceboSkillExtractor):
            raise ValueError(f"skill_extractor: {name!r} needs another extractor than a placebo as its inner one")
        own = {k: kwargs.pop(k) for k in ("seed",) if k in kwargs and cls is ScrambledSkillExtractor}
        return cls(make_skill_extractor(inner, **kwargs) if isinstance(inner, str) else inner, **own)
    return cls(**kwargs)


def as_skill_extractor(obj: SkillExtractorLike | None) -> SkillExtractor | None:
    """Normalise the trainer's ``skill_extractor`` argument to a `SkillExtractor` (or ``None``).

    A name builds the registered extractor, a `SkillExtractor` is returned as is, any other
    callable is wrapped in `CallableSkillExtractor`.
    """
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
