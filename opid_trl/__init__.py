"""OPID (On-Policy Skill Distillation) for agentic RL, as a drop-in TRL trainer."""

from .advantages import episode_step_advantages, outcome_advantages, skill_advantage
from .config import OPIDConfig
from .generation import GenerationBackend, TransformersGenerationBackend
from .routing import RoutedSkill, inject, inject_episode_skill, inject_step_skill, route_skills
from .skill_extractors import SkillExtractor, as_skill_extractor
from .trainer import OPIDTrainer
from .trajectory import EpisodeSkills, StepRecord, Trajectory

__version__ = "0.1.0"

__all__ = [
    "EpisodeSkills",
    "GenerationBackend",
    "OPIDConfig",
    "OPIDTrainer",
    "RoutedSkill",
    "SkillExtractor",
    "StepRecord",
    "Trajectory",
    "TransformersGenerationBackend",
    "as_skill_extractor",
    "episode_step_advantages",
    "inject",
    "inject_episode_skill",
    "inject_step_skill",
    "outcome_advantages",
    "route_skills",
    "skill_advantage",
]
