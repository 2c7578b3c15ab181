"""Skill extractors: an OpenAI-compatible LLM, the policy itself, and a rule-based one.

Each is a `SkillExtractor` (``trajectories -> list[EpisodeSkills | None]``) usable as
OPIDTrainer's ``skill_extractor``; ``make_skill_extractor(name, **kwargs)`` builds one by name
for run files, and ``as_skill_extractor`` turns whatever the trainer was given into one.
"""

from __future__ import annotations

from opid_trl.skills.extractors.cache import AnalysisCache, trajectory_key
from opid_trl.skills.extractors.llm import Completion, LLMSkillExtractor
from opid_trl.skills.extractors.openai_compatible import OpenAISkillExtractor
from opid_trl.skills.extractors.parsing import AnalysisParseError, parse_analysis
from opid_trl.skills.extractors.policy import PolicySkillExtractor
from opid_trl.skills.extractors.prompt import OUTPUT_SCHEMA, build_messages
from opid_trl.skills.extractors.protocol import (
    CallableSkillExtractor,
    ExtractorContext,
    SkillExtractor,
    SkillExtractorLike,
)
from opid_trl.skills.extractors.record import render_record
from opid_trl.skills.extractors.registry import SKILL_EXTRACTORS, as_skill_extractor, make_skill_extractor
from opid_trl.skills.extractors.rule_based import RuleBasedSkillExtractor
from opid_trl.skills.extractors.scrambled import ScrambledSkillExtractor
from opid_trl.skills.extractors.shuffled import ShuffledSkillExtractor

__all__ = [
    "OUTPUT_SCHEMA",
    "SKILL_EXTRACTORS",
    "AnalysisCache",
    "AnalysisParseError",
    "CallableSkillExtractor",
    "Completion",
    "ExtractorContext",
    "LLMSkillExtractor",
    "OpenAISkillExtractor",
    "PolicySkillExtractor",
    "RuleBasedSkillExtractor",
    "ScrambledSkillExtractor",
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
