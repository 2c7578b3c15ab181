"""The built-in skill extractors by name, so run files and the trainer can name one."""

from __future__ import annotations

from typing import Any

from .openai_compatible import OpenAISkillExtractor
from .policy import PolicySkillExtractor
from .protocol import SkillExtractor
from .rule_based import RuleBasedSkillExtractor
from .shuffled import ShuffledSkillExtractor

SKILL_EXTRACTORS: dict[str, type[SkillExtractor]] = {
    "openai": OpenAISkillExtractor,
    "self": PolicySkillExtractor,
    "rule_based": RuleBasedSkillExtractor,
    "shuffled": ShuffledSkillExtractor,
}


def make_skill_extractor(name: str, **kwargs: Any) -> SkillExtractor:
    """Build the skill extractor registered as ``name`` ('openai', 'self', 'rule_based', 'shuffled')."""
    try:
        cls = SKILL_EXTRACTORS[name]
    except KeyError:
        raise ValueError(f"skill_extractor: unknown skill extractor {name!r}; "
                         f"choose one of {sorted(SKILL_EXTRACTORS)}") from None
    return cls(**kwargs)
