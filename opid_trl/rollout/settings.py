"""Which environment, and how its episodes are played: the trainer's environment argument resolved
to a factory, and the episode settings an environment chooses when the config leaves them unset.

Training, the SFT warm start and evaluation must play episodes the same way (same turn budget,
same history window, same instruction line for the step skill), so they all resolve them here,
from one probe instance of the environment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import environments
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


#: An environment given to `OPIDTrainer`: a registered name, a zero-argument factory, or None.
EnvironmentSpec = str | Callable[[], AgentEnvironment] | None


def environment_outcome(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """The reward function of environment mode, a marker only: the outcome comes from the episodes."""
    raise RuntimeError("environment_outcome is only a marker; OPIDTrainer computes environment rewards itself")


def resolve_environment(spec: EnvironmentSpec,
                        kwargs: Mapping[str, Any] | None = None) -> Callable[[], AgentEnvironment] | None:
    """A zero-argument factory from a registered name or a factory (an unknown name fails now,
    with the registry's message)."""
    if spec is None:
        return None
    kwargs = dict(kwargs or {})
    if isinstance(spec, str):
        environments.make(spec, **kwargs).close()
        return lambda: environments.make(spec, **kwargs)
    if callable(spec):
        return (lambda: spec(**kwargs)) if kwargs else spec
    raise TypeError(f"environment must be a registered name or a factory, got {type(spec).__name__}")


def has_chat_template(model: Any, processing_class: Any) -> bool:
    """Whether the tokenizer the trainer will use has a chat template (every step of an episode is
    rendered as a chat), found before any model loads: the given processing class, else the
    tokenizer files of a model given by name or path (True when they cannot be read here: TRL then
    loads, and reports, them itself)."""
    if processing_class is None:
        if not isinstance(model, str):
            return True
        try:
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(model)
        except Exception:  # noqa: BLE001 - not for this check to report
            return True
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    return bool(getattr(processing_class, "chat_template", None) or getattr(tokenizer, "chat_template", None))
