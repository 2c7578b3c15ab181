"""Writing a game: the PDDL problem, the task text and the ``game.tw-pddl`` / ``traj_data.json`` pair.

A game file is what ALFWorld's own loader reads: a JSON object with the PDDL domain, the text
grammar (with the goal sentence substituted for ``UNKNOWN GOAL``) and a PDDL problem. The domain,
grammar and goal formulas are taken verbatim from the alfworld package; only the problem's objects
and initial facts are ours. Names follow ALFRED's mangling (``Apple|+01.00|...`` becomes
``Apple_bar__plus_01_dot_00...``) because ALFWorld's demangler turns exactly those names into the
"apple 1", "sinkbasin 1" the agent reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from .scenes import LAMP_CLASSES, action_classes, can_contain, constants

_MANGLE = (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_"))

#: Type constants the domain's actions name directly; they must be declared in every problem.
_DOMAIN_RTYPES = ("SinkBasin", "Microwave", "Fridge")
_DOMAIN_OTYPES = ("Knife", "ButterKnife")


def mangle(thor_id: str) -> str:
    """ALFRED's PDDL-safe spelling of a THOR id."""
    for old, new in _MANGLE:
        thor_id = thor_id.replace(old, new)
    return thor_id


def location_id(pose: tuple[float, float, int, int]) -> str:
    """ALFRED's location name for an agent pose: grid x, grid z, rotation index, horizon."""
    x, z, rotation, horizon = pose
    return f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{int(rotation) // 90 % 4}|{int(horizon)}"


@dataclass(frozen=True)
class Placed:
    """An object instance and the receptacle it starts in."""

    object_id: str
    cls: str
    receptacle_id: str


@dataclass
class GameSpec:
    """Everything that defines one generated game (the generator fills it, the writer renders it)."""

    task_type: str
    scene: int
    object_target: str
    parent_target: str
    toggle_target: str
    agent_pose: tuple[float, float, int, int]
    receptacles: dict[str, tuple[str, str]]  # receptacle id -> (class, location id)
    objects: list[Placed] = field(default_factory=list)
    goal_text: str = ""


@lru_cache(maxsize=1)
def domain_text() -> str:
    with open(os.path.join(_data_dir(), "alfred.pddl")) as f:
        return f.read()


@lru_cache(maxsize=1)
def grammar_text() -> str:
    with open(os.path.join(_data_dir(), "alfred.twl2")) as f:
        return f.read()


def _data_dir() -> str:
    import alfworld

    return os.path.join(os.path.dirname(alfworld.__file__), "data")


def goal_templates(task_type: str) -> list[str]:
    import alfworld.gen.goal_library as glib

    return list(glib.gdict[task_type]["templates"])


def goal_sentence(template: str, spec: GameSpec) -> str:
    """The task text, as ALFWorld fills its templates: lower-cased class names."""
    return template.format(obj=spec.object_target.lower(), recep=spec.parent_target.lower(),
                           toggle=spec.toggle_target.lower(), mrecep="")


def goal_pddl(spec: GameSpec) -> str:
    """ALFRED's goal formula for the task type; it also closes the ``(define`` form."""
    import alfworld.gen.goal_library as glib

    text = glib.gdict[spec.task_type]["pddl"].format(obj=spec.object_target, recep=spec.parent_target,
                                                     toggle=spec.toggle_target, mrecep="")
    return text.replace("#", "-")


def _lines(items: Iterable[str], indent: str = "        ") -> str:
    return "\n".join(indent + item for item in items)


def problem_pddl(spec: GameSpec, name: str) -> str:
    """The PDDL problem of ``spec``: objects, initial facts and ALFRED's goal."""
    c = constants()
    movable = set(c.MOVABLE_RECEPTACLES)
    heatable, coolable = action_classes("Heatable"), action_classes("Coolable")
    cleanable, sliceable = action_classes("Cleanable"), action_classes("Sliceable")
    agent_loc = mangle(location_id(spec.agent_pose))

    rtypes = sorted({cls for cls, _ in spec.receptacles.values()} | set(_DOMAIN_RTYPES))
    otypes = sorted({o.cls for o in spec.objects} | set(_DOMAIN_OTYPES))
    locations = sorted({loc for _, loc in spec.receptacles.values()} | {location_id(spec.agent_pose)})
    objects = ["agent1 - agent"]
    objects += [f"{t}Type - rtype" for t in rtypes]
    objects += [f"{t}Type - otype" for t in otypes]
    objects += [f"{mangle(o.object_id)} - object" for o in spec.objects]
    objects += [f"{mangle(r)} - receptacle" for r in sorted(spec.receptacles)]
    objects += [f"{mangle(loc)} - location" for loc in locations]

    init = ["(= (total-cost) 0)", f"(atLocation agent1 {agent_loc})"]
    for rid in sorted(spec.receptacles):
        cls, loc = spec.receptacles[rid]
        init.append(f"(receptacleType {mangle(rid)} {cls}Type)")
        init.append(f"(receptacleAtLocation {mangle(rid)} {mangle(loc)})")
        if cls in c.OPENABLE_CLASS_SET:
            init.append(f"(openable {mangle(rid)})")
    init += [f"(canContain {r}Type {o}Type)" for r in rtypes for o in otypes if can_contain(r, o)]
    for placed in spec.objects:
        oid, cls = mangle(placed.object_id), placed.cls
        holder_cls, holder_loc = spec.receptacles[placed.receptacle_id]
        init.append(f"(objectType {oid} {cls}Type)")
        init.append(f"(inReceptacle {oid} {mangle(placed.receptacle_id)})")
        init.append(f"(objectAtLocation {oid} {mangle(holder_loc)})")
        if cls in LAMP_CLASSES:
            init.append(f"(toggleable {oid})")
        else:
            init.append(f"(pickupable {oid})")
        if cls in movable:
            init.append(f"(isReceptacleObject {oid})")
        for flag, classes in (("cleanable", cleanable), ("heatable", heatable), ("coolable", coolable),
                              ("sliceable", sliceable)):
            if cls in classes:
                init.append(f"({flag} {oid})")
        if holder_cls == "Fridge" and cls in coolable:
            init.append(f"(isCool {oid})")  # ALFRED counts what starts in the fridge as cold

    return (f"(define (problem {name})\n    (:domain alfred)\n"
            f"    (:objects\n{_lines(objects)}\n    )\n    (:init\n{_lines(init)}\n    )\n{goal_pddl(spec)}\n")


def game_json(spec: GameSpec, name: str, walkthrough: list[str] | None = None) -> dict:
    """The ``game.tw-pddl`` content ALFWorld's loaders expect."""
    return {
        "pddl_domain": domain_text(),
        "grammar": grammar_text().replace("UNKNOWN GOAL", spec.goal_text),
        "pddl_problem": problem_pddl(spec, name),
        "solvable": walkthrough is not None,
        "walkthrough": walkthrough,
    }


def traj_json(spec: GameSpec, task_id: str, split: str, seed: int, index: int) -> dict:
    """The ``traj_data.json`` fields ALFWorld reads (task_type, pddl_params) plus provenance."""
    return {
        "task_id": task_id,
        "task_type": spec.task_type,
        "pddl_params": {
            "object_target": spec.object_target,
            "parent_target": spec.parent_target,
            "toggle_target": spec.toggle_target,
            "mrecep_target": "",
            "object_sliced": False,
        },
        "scene": {"floor_plan": f"FloorPlan{spec.scene}", "scene_num": spec.scene},
        "turk_annotations": {"anns": [{"task_desc": spec.goal_text}]},
        "generator": {"name": "opid_trl.alfworld", "split": split, "seed": seed, "index": index},
    }
