"""Text environments for OPID: the protocol, a registry, and the environments themselves.

``environments.make(name, **kwargs)`` builds a registered environment, so configs can name them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .alfworld import ALFWorldEnvironment, alfworld_tasks
from .base import AgentEnvironment, HistoryEntry, PromptView, StepResult, parse_think_action
from .fetch import FetchEnvironment, fetch_tasks, make_fetch_task
from .search_qa import SearchQAEnvironment, search_qa_tasks
from .webshop import WebShopEnvironment, webshop_tasks

_REGISTRY: dict[str, Callable[..., AgentEnvironment]] = {}
_TASKS: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., AgentEnvironment], tasks: Callable[..., Any] | None = None) -> None:
    """Register ``factory`` under ``name``; a name can be registered once.

    ``tasks(split, num_tasks, seed, **kwargs)`` builds the `datasets.Dataset` of task rows that
    configs train and evaluate on.
    """
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = factory
    if tasks is not None:
        _TASKS[name] = tasks


def tasks(name: str, split: str = "train", num_tasks: int | None = None, seed: int = 0, **kwargs: Any):
    """The task dataset of the environment registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; registered: {available()}")
    if name not in _TASKS:
        raise ValueError(f"environment {name!r} has no task builder; pass a dataset of task rows instead")
    return _TASKS[name](split=split, num_tasks=num_tasks, seed=seed, **kwargs)


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
    "register",
    "tasks",
]
