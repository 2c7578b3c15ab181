"""OPID (On-Policy Skill Distillation) for agentic RL, as a drop-in TRL trainer.

The package by stage (docs/architecture.md): `generation` -> `rollout` -> `skills` -> `reporting`,
with the pure estimators in `algorithms`, the chunked loss in `loss`, the trainer's parts built
in `assembly`, and the command-line side in `runs`.
"""

from opid_trl.algorithms.advantages import episode_step_advantages, outcome_advantages, skill_advantage
from opid_trl.algorithms.routing import RoutedSkill, inject, inject_episode_skill, inject_step_skill, route_skills
from opid_trl.config import OPIDConfig
from opid_trl.generation import GenerationBackend, TransformersGenerationBackend
from opid_trl.skills.conversation import returns_turns
from opid_trl.skills.extractors import SkillExtractor, as_skill_extractor
from opid_trl.trainer import OPIDTrainer
from opid_trl.trajectory import EpisodeSkills, StepRecord, Trajectory

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
    "returns_turns",
    "route_skills",
    "skill_advantage",
]
