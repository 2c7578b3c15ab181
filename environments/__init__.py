"""Text environments for OPID: the protocol, a registry, and the environments themselves.

``environments.make(name, **kwargs)`` builds a registered environment, so configs can name them.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import AgentEnvironment, HistoryEntry, PromptView, StepResult, parse_think_action
from .fetch import FetchEnvironment, make_fetch_task

_REGISTRY: dict[str, Callable[..., AgentEnvironment]] = {}


def register(name: str, factory: Callable[..., AgentEnvironment]) -> None:
    """Register ``factory`` under ``name``; a name can be registered once."""
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names of the registered environments."""
    return sorted(_REGISTRY)


def make(name: str, **kwargs) -> AgentEnvironment:
    """Build the environment registered as ``name``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}; registered: {available()}") from None
    env = factory(**kwargs)
    env.name = name
    return env


register("fetch", FetchEnvironment)

__all__ = [
    "AgentEnvironment",
    "FetchEnvironment",
    "HistoryEntry",
    "PromptView",
    "StepResult",
    "available",
    "make",
    "make_fetch_task",
    "parse_think_action",
    "register",
]
