"""Skill extractors: an OpenAI-compatible LLM, the policy itself, and a rule-based one.

Each is a `SkillExtractor` (``trajectories -> list[EpisodeSkills | None]``) usable as
OPIDTrainer's ``skill_extractor``; ``make_skill_extractor(name, **kwargs)`` builds one by name
for run files, and ``as_skill_extractor`` turns whatever the trainer was given into one.
"""

from __future__ import annotations

from .cache import AnalysisCache, trajectory_key
from .llm import Completion, LLMSkillExtractor
from .openai_compatible import OpenAISkillExtractor
from .parsing import AnalysisParseError, parse_analysis
from .policy import PolicySkillExtractor
from .prompt import OUTPUT_SCHEMA, build_messages
from .protocol import CallableSkillExtractor, SkillExtractor, SkillExtractorLike, as_skill_extractor
from .record import render_record
from .registry import SKILL_EXTRACTORS, make_skill_extractor
from .rule_based import RuleBasedSkillExtractor
from .shuffled import ShuffledSkillExtractor

__all__ = [
    "OUTPUT_SCHEMA",
    "SKILL_EXTRACTORS",
    "AnalysisCache",
    "AnalysisParseError",
    "CallableSkillExtractor",
    "Completion",
    "LLMSkillExtractor",
    "OpenAISkillExtractor",
    "PolicySkillExtractor",
    "RuleBasedSkillExtractor",
    "ShuffledSkillExtractor",
    "SkillExtractor",
    "SkillExtractorLike",
    "as_skill_extractor",
    "build_messages",
    "make_skill_extractor",
    "parse_analysis",
    "render_record",
    "trajectory_key",
]
