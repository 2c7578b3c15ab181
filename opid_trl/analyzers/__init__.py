"""Skill extractors: an OpenAI-compatible LLM analyzer, the policy itself, and a rule-based one.

All are callables ``trajectories -> list[EpisodeSkills]`` usable as OPIDTrainer's
``skill_extractor``; ``make_analyzer(name, **kwargs)`` builds one by name for configs.
"""

from __future__ import annotations

from typing import Any

from .base import Completion, LLMAnalyzer
from .cache import AnalysisCache, trajectory_key
from .openai_analyzer import OpenAIAnalyzer
from .parsing import AnalysisParseError, parse_analysis
from .prompt import OUTPUT_SCHEMA, build_messages
from .record import render_record
from .rule_based import RuleBasedAnalyzer
from .self_analyzer import SelfAnalyzer

ANALYZERS = {"openai": OpenAIAnalyzer, "self": SelfAnalyzer, "rule_based": RuleBasedAnalyzer}


def make_analyzer(name: str, **kwargs: Any):
    """Build the analyzer registered as ``name`` ('openai', 'self', 'rule_based')."""
    try:
        cls = ANALYZERS[name]
    except KeyError:
        raise ValueError(f"analyzer: unknown analyzer {name!r}; choose one of {sorted(ANALYZERS)}") from None
    return cls(**kwargs)


__all__ = [
    "ANALYZERS",
    "AnalysisCache",
    "AnalysisParseError",
    "Completion",
    "LLMAnalyzer",
    "OUTPUT_SCHEMA",
    "OpenAIAnalyzer",
    "RuleBasedAnalyzer",
    "SelfAnalyzer",
    "build_messages",
    "make_analyzer",
    "parse_analysis",
    "render_record",
    "trajectory_key",
]
