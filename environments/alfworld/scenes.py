"""The scene catalogue the offline generator draws from: what the installed alfworld package ships.

ALFWorld's games are abstractions of AI2-THOR scenes. The alfworld wheel has no games, but it ships
everything needed to write new ones: for each of the 120 scenes the object classes present
(``layouts/FloorPlanN-objects.json``), the receptacle instances with the agent pose used to reach
them (``layouts/FloorPlanN-openable.json``), and, in ``alfworld.gen.constants``, which object
class fits in which receptacle class and which classes can be heated, cooled, cleaned or toggled.
This module turns those files into plain data (:class:`Scene`) so that the generator itself never
touches file formats, and defines the seen/unseen partition of scenes and target classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache, lru_cache

TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

#: Object classes never used as a task target in the train (and seen) split, so that the unseen
#: split can ask for classes the policy was never asked to move. Chosen so that every task type
#: keeps several train candidates (heatable: apple, bread, egg, mug, plate, potato remain).
HELD_OUT_TARGETS: frozenset[str] = frozenset({"Tomato", "Cup", "CellPhone", "Pencil", "Vase", "Ladle"})

#: Split name -> directory name in the usual ALFWORLD_DATA layout (json_2.1.1/<dir>).
SPLIT_DIRS: dict[str, str] = {"train": "train", "seen": "valid_seen", "unseen": "valid_unseen"}

LAMP_CLASSES: tuple[str, ...] = ("DeskLamp", "FloorLamp")
#: Furniture a lamp can stand on: the look_at_obj_in_light goal needs the lamp in a receptacle.
LAMP_HOLDERS: tuple[str, ...] = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "TVStand", "DiningTable")
#: How many instances to create of a receptacle class the scene lists but has no pose for.
SYNTHETIC_COUNTS: dict[str, int] = {"StoveBurner": 4, "Drawer": 2, "Shelf": 2}


@dataclass(frozen=True)
class Receptacle:
    """One receptacle instance: its THOR id, class and the agent pose [x, z, rotation, horizon]."""

    object_id: str
    cls: str
    pose: tuple[float, float, int, int]


@dataclass(frozen=True)
class Scene:
    """One AI2-THOR floor plan as the generator sees it."""

    number: int
    room: str
    receptacles: tuple[Receptacle, ...]
    object_classes: tuple[str, ...]
    lamps: tuple[str, ...]
    floor_points: tuple[tuple[float, float], ...]

    def receptacle_classes(self) -> set[str]:
        return {r.cls for r in self.receptacles}


def _alfworld_dir() -> str:
    import alfworld

    return os.path.dirname(alfworld.__file__)


@lru_cache(maxsize=1)
def constants():
    """``alfworld.gen.constants`` (imported lazily: alfworld is an optional dependency)."""
    import alfworld.gen.constants as module

    return module


@lru_cache(maxsize=1)
def static_receptacle_classes() -> frozenset[str]:
    """Receptacle classes that stay put (the ones a game's locations are made of)."""
    c = constants()
    return frozenset(set(c.VAL_RECEPTACLE_OBJECTS) - set(c.MOVABLE_RECEPTACLES))


@lru_cache(maxsize=1)
def pickupable_classes() -> frozenset[str]:
    """Object classes that fit in some receptacle, sliced variants excluded (ALFWorld skips them)."""
    c = constants()
    fits = set().union(*c.VAL_RECEPTACLE_OBJECTS.values())
    return frozenset(o for o in fits if not o.endswith("Sliced"))


def can_contain(receptacle_cls: str, object_cls: str) -> bool:
    return object_cls in constants().VAL_RECEPTACLE_OBJECTS.get(receptacle_cls, ())


def action_classes(kind: str) -> frozenset[str]:
    """Classes of ``constants.VAL_ACTION_OBJECTS[kind]`` ('Heatable', 'Coolable', 'Cleanable', ...)."""
    return frozenset(constants().VAL_ACTION_OBJECTS[kind])


def room_of(number: int) -> str:
    for room, numbers in constants().SCENE_TYPE.items():
        if number in numbers:
            return room
    raise ValueError(f"scene {number} has no room type")


def split_scenes(split: str) -> tuple[int, ...]:
    """Scene numbers of a split: ALFRED's train scenes for train/seen, its test scenes for unseen."""
    c = constants()
    if split in ("train", "seen"):
        return tuple(sorted(c.TRAIN_SCENE_NUMBERS))
    if split == "unseen":
        return tuple(sorted(c.TEST_SCENE_NUMBERS))
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_DIRS)}")


def target_allowed(split: str, object_cls: str) -> bool:
    """Held-out classes are never targets in train/seen; unseen may ask for any class."""
    return split == "unseen" or object_cls not in HELD_OUT_TARGETS


def _synthetic_id(cls: str, index: int, number: int) -> str:
    # A THOR-looking id, unique within the scene; the coordinates only serve as a name.
    x, z = (index * 37 + number) % 300 / 100.0, (index * 53 + 2 * number) % 300 / 100.0
    return f"{cls}|{x:+06.2f}|+00.90|{-z:+06.2f}"


@cache
def load_scene(number: int) -> Scene:
    """Read one floor plan from the alfworld package."""
    import numpy as np

    layouts = os.path.join(_alfworld_dir(), "gen", "layouts")
    with open(os.path.join(layouts, f"FloorPlan{number}-objects.json")) as f:
        present = set(json.load(f))
    with open(os.path.join(layouts, f"FloorPlan{number}-openable.json")) as f:
        poses = json.load(f)
    points = np.load(os.path.join(layouts, f"FloorPlan{number}-layout.npy"))
    floor = tuple((float(x), float(z)) for x, z in points.tolist())
    static = static_receptacle_classes()

    receptacles = []
    for object_id in sorted(poses):
        parts = object_id.split("|")
        cls = parts[-1] if parts[-1].endswith("Basin") else parts[0]
        if cls in static:
            x, z, rotation, horizon = poses[object_id]
            receptacles.append(Receptacle(object_id, cls, (float(x), float(z), int(rotation), int(horizon))))
    have = {r.cls for r in receptacles}
    for offset, cls in enumerate(sorted((present & static) - have)):
        # Listed in the scene but without a precomputed pose (stove burners, toasters, ...):
        # give it a floor point of its own so that it is a location the agent can go to.
        for k in range(SYNTHETIC_COUNTS.get(cls, 1)):
            x, z = floor[(offset * 7 + k * 13 + number) % len(floor)]
            object_id = _synthetic_id(cls, offset * 10 + k, number)
            if cls == "SinkBasin":
                object_id = f"Sink{object_id[len(cls):]}|SinkBasin"
            receptacles.append(Receptacle(object_id, cls, (x, z, 90 * ((offset + k) % 4), 30)))
    objects = tuple(sorted(cls for cls in present if cls in pickupable_classes()))
    lamps = tuple(sorted(cls for cls in present if cls in LAMP_CLASSES))
    return Scene(number, room_of(number), tuple(receptacles), objects, lamps, floor)
