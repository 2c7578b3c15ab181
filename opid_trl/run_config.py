"""The YAML run configuration behind `train.py`, `evaluate.py` and the SFT warm start.

A run file has five sections; everything is checked before any model is loaded, and every error
names its field as it is written in the YAML (``training.learning_rate``, ``skill_extractor.name``, ...)::

    base: other.yaml            # optional: start from another file, then override
    model: smollm2-135m-instruct   # embedded name, hub id or local folder
    environment: {name: fetch, kwargs: {}, train: {num_tasks: 64, seed: 0}, eval: {num_tasks: 16}}
    skill_extractor: {name: rule_based, kwargs: {}}   # rule_based | openai | self | none
    sft: {num_tasks: 64, epochs: 2}            # optional warm start before RL
    training: {output_dir: ..., learning_rate: ..., ...}   # OPIDConfig fields

Command-line overrides use the same dotted names: ``training.max_steps=10 environment.name=fetch``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("base", "model", "environment", "skill_extractor", "sft", "training", "deepspeed")
#: Sections renamed since earlier run files, and their current names (named in the error).
RENAMED_SECTIONS = {"analyzer": "skill_extractor"}


class ConfigError(ValueError):
    """An invalid run configuration; the message names the field."""


@dataclass
class TaskSplit:
    """Which tasks of the environment to use."""

    split: str = "train"
    num_tasks: int | None = None
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnvironmentSection:
    name: str = "fetch"
    kwargs: dict[str, Any] = field(default_factory=dict)
    train: TaskSplit = field(default_factory=TaskSplit)
    eval: TaskSplit | None = None


@dataclass
class SkillExtractorSection:
    """Which skill extractor to build (a registered name, or ``none`` for plain GRPO) and its kwargs."""

    name: str = "rule_based"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTSection:
    """Supervised warm start on expert trajectories, rendered with the RL prompt template."""

    num_tasks: int = 64
    seed: int = 12345
    epochs: float = 2.0
    learning_rate: float = 5e-4
    batch_size: int = 8
    max_length: int = 1024
    output_subdir: str = "sft"


@dataclass
class RunConfig:
    model: str
    environment: EnvironmentSection
    skill_extractor: SkillExtractorSection
    training: dict[str, Any]
    sft: SFTSection | None = None
    source: str = ""


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"base: circular include of {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base:
        data = _merge(_read((path.parent / base).resolve(), seen + (path,)), data)
    return data


def parse_overrides(items: list[str]) -> dict:
    """``["training.max_steps=3", "model=foo"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _build(cls, values: Any, where: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field; expected one of {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        if key in ("train", "eval") and cls is EnvironmentSection:
            kwargs[key] = None if value is None else _build(TaskSplit, value, f"{where}.{key}")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge and check a run file (structure only; `validate` checks the values)."""
    data = _merge(_read(Path(path).resolve()), parse_overrides(overrides or []))
    renamed = sorted(set(data) & set(RENAMED_SECTIONS))
    if renamed:
        raise ConfigError(f"{renamed[0]}: this section is now called {RENAMED_SECTIONS[renamed[0]]!r}; rename it")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; expected some of {list(SECTIONS[1:])}")
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise ConfigError("model: name an embedded model, a hub id or a local folder")
    training = data.get("training") or {}
    if not isinstance(training, dict):
        raise ConfigError("training: expected a mapping of OPIDConfig fields")
    if data.get("deepspeed"):
        training = {**training, "deepspeed": data["deepspeed"]}
    return RunConfig(
        model=data["model"],
        environment=_build(EnvironmentSection, data.get("environment"), "environment"),
        skill_extractor=_build(SkillExtractorSection, data.get("skill_extractor"), "skill_extractor"),
        training=training,
        sft=_build(SFTSection, data["sft"], "sft") if data.get("sft") else None,
        source=str(path),
    )


def build_training_args(run: RunConfig, **forced: Any):
    """The `OPIDConfig` of a run; its own validation names the field, prefixed with ``training.``."""
    from .config import OPIDConfig

    names = {f.name for f in dataclasses.fields(OPIDConfig)}
    values = {**run.training, **forced}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"training.{unknown[0]}: not an OPIDConfig / GRPOConfig field")
    try:
        return OPIDConfig(**values)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("OPIDConfig.") else f"training: {message}") from None


def build_skill_extractor(run: RunConfig):
    """The skill extractor named by ``skill_extractor.name`` (``none`` gives plain GRPO)."""
    from .skill_extractors import SKILL_EXTRACTORS, make_skill_extractor

    name = run.skill_extractor.name
    if name in (None, "none"):
        return None
    if name not in SKILL_EXTRACTORS:
        raise ConfigError(f"skill_extractor.name: unknown skill extractor {name!r}; "
                          f"choose one of {sorted(SKILL_EXTRACTORS) + ['none']}")
    if not isinstance(run.skill_extractor.kwargs, dict):
        raise ConfigError(f"skill_extractor.kwargs: expected a mapping, got {type(run.skill_extractor.kwargs).__name__}")
    try:
        return make_skill_extractor(name, **run.skill_extractor.kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"skill_extractor.kwargs: {exc}") from None


def build_tasks(run: RunConfig, which: str = "train", num_tasks: int | None = None, seed: int | None = None):
    """The task dataset of ``environment.train`` / ``environment.eval`` (None if not configured);
    ``num_tasks``/``seed`` replace the split's own (e.g. for the SFT warm start).

    The task builder gets ``environment.kwargs`` as well as the split's own ``kwargs``: a kwarg
    that changes the world (catalogue size, corpus seed, data root) must select the tasks too, or
    the rows would point into a world the environment does not play.
    """
    import environments

    split = run.environment.train if which == "train" else run.environment.eval
    if split is None:
        return None
    if run.environment.name not in environments.available():
        raise ConfigError(f"environment.name: unknown environment {run.environment.name!r}; "
                          f"registered: {environments.available()}")
    env_kwargs = run.environment.kwargs
    for key, value in split.kwargs.items():
        if key in env_kwargs and env_kwargs[key] != value:
            raise ConfigError(f"environment.{which}.kwargs.{key}: {value!r} differs from environment.kwargs.{key} "
                              f"({env_kwargs[key]!r}); the tasks must come from the world the environment plays")
    try:
        return environments.tasks(run.environment.name, split=split.split,
                                  num_tasks=split.num_tasks if num_tasks is None else num_tasks,
                                  seed=split.seed if seed is None else seed, env_kwargs=env_kwargs, **split.kwargs)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise ConfigError(f"environment.{which}: {exc}") from None


def check_environment(run: RunConfig) -> None:
    """Build one environment instance now, so a bad name or bad kwargs fail before training."""
    import environments

    try:
        environments.make(run.environment.name, **run.environment.kwargs).close()
    except (ValueError, TypeError) as exc:
        field_name = "environment.name" if "unknown environment" in str(exc) else "environment.kwargs"
        raise ConfigError(f"{field_name}: {exc}") from None
