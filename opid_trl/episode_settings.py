"""The episode settings an environment chooses when the config leaves them unset.

Training, the SFT warm start and evaluation must play episodes the same way (same turn budget,
same history window, same instruction line for the step skill), so they all resolve them here,
from one probe instance of the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from environments.base import AgentEnvironment


@dataclass(frozen=True)
class EpisodeSettings:
    """How episodes of one environment are played and rendered."""

    #: Maximum environment steps per episode.
    max_turns: int
    #: Past steps shown in each step's prompt.
    history_length: int
    #: First words of the prompt's final instruction line (where a step skill is inserted), if any.
    instruction_anchor: str | None


def resolve_episode_settings(
    env_factory: Callable[[], AgentEnvironment],
    max_turns: int | None = None,
    history_length: int | None = None,
) -> EpisodeSettings:
    """``max_turns`` / ``history_length`` as given, or the environment's defaults when ``None``."""
    probe = env_factory()
    try:
        return EpisodeSettings(
            max_turns=max_turns or probe.default_max_turns,
            history_length=probe.default_history_length if history_length is None else history_length,
            instruction_anchor=probe.instruction_anchor,
        )
    finally:
        probe.close()
