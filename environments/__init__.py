"""Text environments for OPID: the protocol, a registry, and the environments themselves.

``environments.make(name, **kwargs)`` builds a registered environment, so configs can name them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .alfworld import ALFWorldEnvironment, alfworld_tasks
from .base import (
    ACTION_PARSING_MODES,
    AgentEnvironment,
    HistoryEntry,
    PromptView,
    StepResult,
    parse_think_action,
    parse_think_action_reference,
)
from .fetch import FetchEnvironment, fetch_tasks, make_fetch_task
from .search_qa import SearchQAEnvironment, search_qa_tasks
from .webshop import WebShopEnvironment, webshop_tasks

_REGISTRY: dict[str, Callable[..., AgentEnvironment]] = {}
_TASKS: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., AgentEnvironment], tasks: Callable[..., Any] | None = None) -> None:
    """Register ``factory`` under ``name``; a name can be registered once.

    ``tasks(split, num_tasks, seed, **kwargs)`` builds the `datasets.Dataset` of task rows that
    configs train and evaluate on. It must accept every keyword argument of ``factory`` too: those
    that change the world (a catalogue size, a corpus seed, a data root) select the tasks, the
    others are ignored, so the environment's kwargs can be handed to it as they are.
    """
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = factory
    if tasks is not None:
        _TASKS[name] = tasks


def tasks(name: str, split: str = "train", num_tasks: int | None = None, seed: int = 0,
          env_kwargs: Mapping[str, Any] | None = None, **kwargs: Any):
    """The task dataset of the environment registered as ``name``.

    ``env_kwargs`` are the kwargs the environment is built with: they go to the task builder too,
    so that the tasks come from the same world as the environment plays (a goal index or a question
    only means something in the world it was drawn from). ``kwargs`` are task-only options; one
    that repeats an environment kwarg with another value is an error.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; registered: {available()}")
    if name not in _TASKS:
        raise ValueError(f"environment {name!r} has no task builder; pass a dataset of task rows instead")
    merged = dict(env_kwargs or {})
    for key, value in kwargs.items():
        if key in merged and merged[key] != value:
            raise ValueError(f"{key}: the task option {value!r} differs from the environment's {merged[key]!r}; "
                             "the tasks must come from the world the environment plays")
        merged[key] = value
    return _TASKS[name](split=split, num_tasks=num_tasks, seed=seed, **merged)


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


register("fetch", FetchEnvironment, tasks=fetch_tasks)
register("alfworld", ALFWorldEnvironment, tasks=alfworld_tasks)
register("webshop", WebShopEnvironment, tasks=webshop_tasks)
register("search_qa", SearchQAEnvironment, tasks=search_qa_tasks)

__all__ = [
    "ACTION_PARSING_MODES",
    "ALFWorldEnvironment",
    "AgentEnvironment",
    "FetchEnvironment",
    "HistoryEntry",
    "PromptView",
    "SearchQAEnvironment",
    "StepResult",
    "WebShopEnvironment",
    "available",
    "make",
    "make_fetch_task",
    "parse_think_action",
    "parse_think_action_reference",
    "register",
    "tasks",
]
