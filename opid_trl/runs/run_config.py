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
import functools
import inspect
import math
import numbers
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opid_trl.values import is_finite_number, is_whole_number

SECTIONS = ("base", "model", "environment", "skill_extractor", "sft", "training", "deepspeed")
#: Sections renamed since earlier run files, and their current names (named in the error).
RENAMED_SECTIONS = {"analyzer": "skill_extractor"}


class ConfigError(ValueError):
    """An invalid run configuration; the message names the field."""


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping, with the dotted name and both lines."""

    def __init__(self, key: str, first_line: int, line: int) -> None:
        super().__init__(f"{key}: given twice (lines {first_line} and {line})")
        self.key, self.first_line, self.line = key, first_line, line


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_unique_keys(node: yaml.Node, path: str, visited: set[int]) -> None:
    """Raise `DuplicateKeyError` for the first key that one mapping under ``node`` holds twice."""
    if id(node) in visited:  # an alias repeats a node already checked (and may be recursive)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *defaults`: keys written after it override it on purpose
                _check_unique_keys(value_node, path, visited)
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            dotted = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode):
                if key in lines:
                    raise DuplicateKeyError(dotted, lines[key], line)
                lines[key] = line
            _check_unique_keys(value_node, dotted, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{index}]", visited)


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key written twice in one mapping.

    PyYAML keeps the last value without a word, so a setting left twice in a run file (an old
    line above an edited one, two pasted sections) would apply whichever came last.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_unique_keys(node, "", set())
        return super().construct_document(node)


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
    #: Probability that the warm start's behaviour policy takes a random admissible action instead
    #: of the expert's (0: expert episodes only, failed ones dropped; see `opid_trl.runs.sft`).
    explore_rate: float = 0.0
    #: Share of the behaviour episodes' steps shown with their hindsight skill (the rule-based
    #: extractor's, routed critical-first) and the expert's answer as target; the other steps show no
    #: skill and the behaviour's own answer. 0 with ``explore_rate`` 0 is the plain expert warm start.
    skill_share: float = 0.0
    #: Share of the skill-shown steps that show a skill written for another task's episode, with the
    #: behaviour's own answer as target, so that a skill's presence alone does not predict the
    #: expert's answer (the policy must read it). 0: every shown skill is the episode's own.
    placebo_share: float = 0.0
    #: Share of the steps that show instead a step skill naming one admissible action drawn at random,
    #: with an answer that takes exactly that action as target, so that only what a skill block says
    #: predicts the answer, not that it is there (see `opid_trl.runs.sft`). 0: no follow examples.
    follow_share: float = 0.0


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


def _read(path: Path, seen: tuple[Path, ...] = (), base_override: tuple[str | None, Path] | None = None) -> dict:
    """A run file with its ``base:`` chain merged in. ``base_override``: (the base to use instead
    of the file's own, or None for none; the folder it is relative to)."""
    if path in seen:
        raise ConfigError(f"base: circular include of {path}")
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except DuplicateKeyError as exc:
        raise ConfigError(f"{exc.key}: given twice in {path} (lines {exc.first_line} and {exc.line}); "
                          "keep only one of them") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base, folder = data.pop("base", None), path.parent
    if base_override is not None:
        base, folder = base_override
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"base: expected the path of another run file, got {base!r} ({path})")
    if base:
        data = _merge(_read((folder / base).resolve(), seen + (path,)), data)
    return data


def parse_overrides(items: list[str]) -> dict:
    """``["training.max_steps=3", "model=foo"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader)
        except DuplicateKeyError as exc:
            raise ConfigError(f"{key}.{exc.key}: given twice in the override {item!r}; keep only one") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: the override value {raw!r} is not valid YAML ({exc}); quote it") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: an earlier override sets {part!r} to a value; set either it or its fields")
            node = child
        node[parts[-1]] = value
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
    """Read, merge and check a run file: its structure, and the values of every section but
    ``training`` (whose values `build_training_args` checks, through OPIDConfig) and ``model``
    (`check_model`, which looks at the disk)."""
    override = parse_overrides(overrides or [])
    # ``base=FILE`` on the command line replaces the run file's own base (relative to the current
    # folder, as command-line paths are); ``base=null`` drops it.
    base_override = (override.pop("base"), Path.cwd()) if "base" in override else None
    data = _merge(_read(Path(path).resolve(), base_override=base_override), override)
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
    run = RunConfig(
        model=data["model"],
        environment=_build(EnvironmentSection, data.get("environment"), "environment"),
        skill_extractor=_build(SkillExtractorSection, data.get("skill_extractor"), "skill_extractor"),
        training=training,
        sft=_build(SFTSection, data["sft"], "sft") if data.get("sft") else None,
        source=str(path),
    )
    _check_environment_section(run.environment)
    _check_skill_extractor_section(run.skill_extractor)
    if run.sft is not None:
        _check_sft_section(run.sft)
    return run


# -- value checks of the sections (the ``training`` values are OPIDConfig's own to check)
#
# YAML gives Python values whose types do not always mean what they look like: ``true`` is an
# ``int`` to Python (so it would count as 1), ``.nan`` compares false with everything (so ``< 0``
# checks let it through), and ``0``/``false``/``""`` are falsy (so ``num_tasks or default``
# reads them as "all"). Each check below refuses those explicitly.


def _positive_int(value: Any, where: str, what: str, allow_none: str | None = None) -> None:
    if value is None and allow_none:
        return
    if not is_whole_number(value) or value < 1:
        alternative = f", or null for {allow_none}" if allow_none else ""
        raise ConfigError(f"{where}: must be a positive whole number of {what}{alternative} (got {value!r})")


def _check_split(split: TaskSplit, where: str) -> None:
    if not isinstance(split.split, str) or not split.split:
        raise ConfigError(f"{where}.split: must name a split of the environment, e.g. train or test "
                          f"(got {split.split!r})")
    # 0, false or "" would otherwise be read as "the default count" and a negative one as no task at all.
    _positive_int(split.num_tasks, f"{where}.num_tasks", "tasks", allow_none="the whole split")
    if not is_whole_number(split.seed):
        raise ConfigError(f"{where}.seed: must be a whole number (got {split.seed!r})")
    if not isinstance(split.kwargs, dict):
        raise ConfigError(f"{where}.kwargs: expected a mapping of task options, got {split.kwargs!r}")


def _check_environment_section(section: EnvironmentSection) -> None:
    if not isinstance(section.name, str) or not section.name:
        raise ConfigError(f"environment.name: must name a registered environment, e.g. fetch (got {section.name!r})")
    if section.kwargs is None:
        section.kwargs = {}
    if not isinstance(section.kwargs, dict):
        raise ConfigError(f"environment.kwargs: expected a mapping of environment options, got {section.kwargs!r}")
    if section.train is None:
        raise ConfigError("environment.train: training needs tasks; give a mapping such as {num_tasks: 64} "
                          "(or remove the line for the defaults)")
    _check_split(section.train, "environment.train")
    if section.eval is not None:
        _check_split(section.eval, "environment.eval")


def _check_sft_section(section: SFTSection) -> None:
    _positive_int(section.num_tasks, "sft.num_tasks", "tasks")
    _positive_int(section.batch_size, "sft.batch_size", "examples")
    _positive_int(section.max_length, "sft.max_length", "tokens")
    if not is_whole_number(section.seed):
        raise ConfigError(f"sft.seed: must be a whole number (got {section.seed!r})")
    for name in ("epochs", "learning_rate"):
        value = getattr(section, name)
        if not is_finite_number(value) or value <= 0:
            raise ConfigError(f"sft.{name}: must be a finite number > 0 (got {value!r})")
    for name in ("explore_rate", "skill_share", "placebo_share", "follow_share"):
        value = getattr(section, name)
        if isinstance(value, bool) or not is_finite_number(value) or not 0 <= value <= 1:
            raise ConfigError(f"sft.{name}: must be a number in [0, 1] (got {value!r})")
    subdir = section.output_subdir
    if not isinstance(subdir, str) or not subdir or Path(subdir).is_absolute() or ".." in Path(subdir).parts:
        raise ConfigError(f"sft.output_subdir: must be a folder name inside training.output_dir, e.g. sft "
                          f"(got {subdir!r})")


def _check_skill_extractor_section(section: SkillExtractorSection) -> None:
    """The extractor's name and kwargs, checked against its constructor's signature now: a bad
    kwarg would otherwise surface only when the first analysis runs (a NaN ``max_retries`` or
    ``timeout`` would not even fail, it would wait or retry without end)."""
    name = section.name
    if name in (None, "none"):
        return  # plain GRPO; kwargs inherited from a base file are not used
    cls = _extractor_class(name)
    if section.kwargs is None:
        section.kwargs = {}
    if not isinstance(section.kwargs, dict):
        raise ConfigError(f"skill_extractor.kwargs: expected a mapping, got {type(section.kwargs).__name__}")
    check_skill_extractor_kwargs(cls, section.kwargs)


def _extractor_class(name: Any) -> type:
    """The registered skill extractor ``name``, or a ConfigError naming the field and the choices."""
    from opid_trl.skills.extractors.registry import skill_extractor_class

    try:
        return skill_extractor_class(name, field="skill_extractor.name", also="none")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _init_parameters(cls: type) -> tuple[dict[str, Any], bool]:
    """The keyword arguments ``cls(...)`` takes, with their resolved type hints (``inspect._empty``
    where none is given), following ``**kwargs`` up the class hierarchy; and whether it also takes
    names it does not declare (a ``**kwargs`` that reaches no declared parameter list)."""
    params: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - an unresolvable hint only means that argument is not type-checked
            hints = {}
        open_ended = False
        for parameter in list(inspect.signature(init).parameters.values())[1:]:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                params.setdefault(parameter.name, hints.get(parameter.name, inspect.Parameter.empty))
        if not open_ended:
            return params, False
    return params, True


_PLAIN_KINDS = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}


def _hint_kinds(hint: Any) -> tuple[list[type], bool] | None:
    """(the plain types of ``hint``, whether it allows None), or None when the hint is not made of
    plain YAML types only (then the value is not judged by type)."""
    if hint is inspect.Parameter.empty or hint is Any:
        return None
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    allows_none = type(None) in members
    kinds = [m for m in members if m is not type(None)]
    if not kinds or any(m not in _PLAIN_KINDS for m in kinds):
        return None
    return kinds, allows_none


def value_problem(value: Any, hint: Any, non_negative: bool = False) -> str | None:
    """What ``value`` should be instead, judged against the type ``hint`` (plain YAML types and
    unions of them; others are not judged), or None when it fits. NaN and infinities never fit a
    number: a NaN count or timeout compares false with every bound and so would never stop."""
    judged = _hint_kinds(hint)
    bound = " >= 0" if non_negative else ""
    if judged is None:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and (
                not math.isfinite(value) or (non_negative and value < 0)):
            return f"must be a finite number{bound}"
        return None
    kinds, allows_none = judged
    expected = " or ".join(_PLAIN_KINDS[k] + (bound if k in (int, float) else "") for k in kinds)
    expected += " or null" if allows_none else ""
    if value is None:
        return None if allows_none else f"must be {expected}"
    if isinstance(value, bool):
        fits = bool in kinds
    elif isinstance(value, numbers.Real):
        whole = is_whole_number(value)
        fits = (float in kinds or (int in kinds and whole)) and math.isfinite(value)
        fits = fits and not (non_negative and value < 0)
    elif isinstance(value, str):
        fits = str in kinds
    else:
        fits = False
    if fits:
        return None
    yaml_text_number = isinstance(value, str) and re.fullmatch(r"[-+]?[0-9.]+e[-+]?[0-9]+", value, re.IGNORECASE)
    if yaml_text_number and (int in kinds or float in kinds):  # YAML 1.1 wants a dot in a float
        return f"must be {expected}; YAML reads {value} as text: write it with a dot, e.g. 1.0e-6"
    if isinstance(value, bool):
        return f"must be {expected}; true/false is not a number"
    return f"must be {expected}"


def check_skill_extractor_kwargs(cls: type, kwargs: dict[str, Any]) -> None:
    """Check ``skill_extractor.kwargs`` against the constructor of ``cls``: every name must be one
    of its arguments, and every value of the type its signature declares. Numbers must be finite
    and not negative: every numeric setting of an extractor is a count, a size, a duration or a
    temperature. Range checks beyond that are the constructor's own, when it is built."""
    params, open_ended = _init_parameters(cls)
    for key, value in kwargs.items():
        where = f"skill_extractor.kwargs.{key}"
        if key not in params and not open_ended:
            raise ConfigError(f"{where}: {cls.__name__} takes no argument {key!r}; expected one of {sorted(params)}")
        problem = value_problem(value, params.get(key, inspect.Parameter.empty), non_negative=True)
        if problem:
            raise ConfigError(f"{where}: {problem} (got {value!r})")


def check_model(run: RunConfig) -> str:
    """The model name to load (``~`` expanded), once it is known to name something loadable.

    A local path is told from a hub id the way `from_pretrained` does it: anything that exists on
    disk is local, and so is anything a hub id cannot be (it starts with ``.``, ``/`` or ``~``, or
    has more than one ``/``). A mistyped folder is refused here instead of being taken for a hub id
    and failing at load time, after the environment and tasks were built.
    """
    from opid_trl.runs.embedded import EMBEDDED_MODELS

    name = run.model
    if name.lower() in EMBEDDED_MODELS:
        return name
    path = Path(name).expanduser()
    local = (path.exists() or name.startswith((".", "~", os.sep)) or name.count("/") > 1
             or (os.sep != "/" and os.sep in name))
    if local:
        if not path.exists():
            raise ConfigError(f"model: the local folder {name!r} does not exist (looked for {path.absolute()}); "
                              f"fix the path, or name an embedded model ({', '.join(sorted(EMBEDDED_MODELS))}) "
                              "or a hub id such as Qwen/Qwen2.5-3B-Instruct")
        if not path.is_dir():
            raise ConfigError(f"model: {name!r} is a file; name the model folder (the one holding config.json)")
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ConfigError(f"model: the folder {name!r} holds no config.json; name a folder written by "
                              "save_pretrained (e.g. a checkpoint-N or final folder of a run)")
        return str(path)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise ConfigError(f"model: {name!r} is neither an embedded model ({', '.join(sorted(EMBEDDED_MODELS))}), "
                          f"an existing local folder nor a valid hub id ({exc}); fix the name") from None
    return name


@functools.lru_cache(maxsize=1)
def _training_hints() -> dict[str, Any]:
    """The resolved type hints of every OPIDConfig field (those that resolve)."""
    from opid_trl.config import OPIDConfig

    try:
        return typing.get_type_hints(OPIDConfig)
    except Exception:  # noqa: BLE001 - fall back to the hints that are already types
        return {f.name: f.type for f in dataclasses.fields(OPIDConfig) if not isinstance(f.type, str)}


def _check_training_values(values: dict[str, Any]) -> None:
    """Types of the ``training`` values of purely numeric fields (``int``, ``float``, optionally
    None): a ``true`` where a count is expected, a NaN or infinite number, or a number YAML read
    as text. Fields declared otherwise are left to their own checks (some take more than their
    hint says: GRPOConfig's ``scale_rewards: str`` takes true/false too). Ranges are OPIDConfig's
    (and GRPOConfig's) own checks."""
    hints = _training_hints()
    for key, value in values.items():
        judged = _hint_kinds(hints.get(key, inspect.Parameter.empty))
        if judged is None or value is None or not set(judged[0]) <= {int, float}:
            continue
        problem = value_problem(value, hints[key])
        if problem:
            raise ConfigError(f"training.{key}: {problem} (got {value!r})")


def build_training_args(run: RunConfig, **forced: Any):
    """The `OPIDConfig` of a run; its own validation names the field, prefixed with ``training.``."""
    from opid_trl.config import OPIDConfig

    names = {f.name for f in dataclasses.fields(OPIDConfig)}
    values = {**run.training, **forced}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"training.{unknown[0]}: not an OPIDConfig / GRPOConfig field")
    _check_training_values(values)
    try:
        return OPIDConfig(**values)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        named = re.match(r"OPIDConfig\.(\w+): (.*)", message, re.DOTALL)
        if named:  # the field as the run file spells it, and as OPIDConfig does
            name, rest = named.groups()
            raise ConfigError(f"training.{name} (OPIDConfig.{name}): {rest}") from None
        raise ConfigError(f"training: {message}") from None


def build_skill_extractor(run: RunConfig):
    """The skill extractor named by ``skill_extractor.name`` (``none`` gives plain GRPO)."""
    from opid_trl.config import POLICY_EXTRACTOR_SHARDED, sharded_parameters
    from opid_trl.skills.extractors import make_skill_extractor

    name = run.skill_extractor.name
    if name in (None, "none"):
        return None
    _extractor_class(name)
    if not isinstance(run.skill_extractor.kwargs, dict):
        raise ConfigError(f"skill_extractor.kwargs: expected a mapping, got {type(run.skill_extractor.kwargs).__name__}")
    sharding = sharded_parameters(run.training.get("deepspeed"), run.training.get("fsdp"))
    if name == "self" and sharding:
        raise ConfigError("skill_extractor.name: " + POLICY_EXTRACTOR_SHARDED.format(sharding=sharding))
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
