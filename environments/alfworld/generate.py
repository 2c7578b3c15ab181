"""Offline generator of playable ALFWorld games (its command line: ``python -m environments.alfworld``).

ALFWorld's official games cannot be downloaded here, so games are written from what the alfworld
package ships (see :mod:`.scenes` and :mod:`.pddl`). Game ``i`` of ``(split, seed)`` depends on
those three values only (its own random stream), so a set can be extended later and two machines
generate the same games. Task types cycle through the six ALFWorld types, so any six consecutive
games cover all of them. A game is kept only if, in the real engine, its goal does not already
hold and fast-downward finds a plan that, replayed command by command, wins; that plan is stored as
the game's walkthrough (the expert plan).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .pddl import GameSpec, Placed, game_json, goal_sentence, goal_templates, location_id, traj_json
from .scenes import (
    LAMP_HOLDERS,
    SPLIT_DIRS,
    TASK_TYPES,
    Scene,
    action_classes,
    can_contain,
    constants,
    load_scene,
    split_scenes,
    target_allowed,
)

#: What each task type needs from the target class, and which receptacle class does the work.
_ACTION = {
    "pick_clean_then_place_in_recep": ("Cleanable", "SinkBasin"),
    "pick_heat_then_place_in_recep": ("Heatable", "Microwave"),
    "pick_cool_then_place_in_recep": ("Coolable", "Fridge"),
}
MAX_ATTEMPTS = 40


@dataclass(frozen=True)
class GameRecord:
    """One generated game as listed in a manifest."""

    index: int
    game_file: str  # relative to the output root
    task_type: str
    scene: int
    object_target: str
    parent_target: str
    toggle_target: str
    goal: str
    plan_length: int


def game_rng(split: str, seed: int, index: int) -> random.Random:
    """The random stream of one game (string seeds are hashed deterministically by ``random``)."""
    return random.Random(f"opid-alfworld:{split}:{seed}:{index}")


def _scene_ok(scene: Scene, task_type: str) -> bool:
    rooms = constants().GOALS_VALID[task_type]
    if scene.room not in rooms:
        return False
    classes = scene.receptacle_classes()
    if task_type in _ACTION:
        return _ACTION[task_type][1] in classes
    if task_type == "look_at_obj_in_light":
        return bool(scene.lamps) and bool(classes & set(LAMP_HOLDERS))
    return True


def _targets(scene: Scene, task_type: str, split: str) -> list[tuple[str, str]]:
    """(object class, parent receptacle class) pairs the task could ask for in this scene."""
    classes = scene.receptacle_classes()
    pairs = []
    for obj in scene.object_classes:
        if not target_allowed(split, obj):
            continue
        if task_type in _ACTION:
            kind, tool = _ACTION[task_type]
            if obj not in action_classes(kind):
                continue
        else:
            tool = None
        if task_type == "look_at_obj_in_light":
            if any(can_contain(r, obj) for r in classes):
                pairs.append((obj, ""))
            continue
        for parent in sorted(classes):
            if parent == tool or not can_contain(parent, obj):
                continue
            # The object must also fit somewhere else, or the goal would hold from the start.
            if any(can_contain(r, obj) for r in classes if r != parent):
                pairs.append((obj, parent))
    return pairs


def sample_spec(split: str, seed: int, index: int, rng: random.Random | None = None) -> GameSpec:
    """Draw the layout of game ``index``: scene, targets, where every object starts, the goal text."""
    rng = rng or game_rng(split, seed, index)
    task_type = TASK_TYPES[index % len(TASK_TYPES)]
    scenes = [n for n in split_scenes(split) if _scene_ok(load_scene(n), task_type)]
    for _ in range(200):
        scene = load_scene(rng.choice(scenes))
        pairs = _targets(scene, task_type, split)
        if pairs:
            break
    else:
        raise RuntimeError(f"no scene of split {split!r} supports {task_type}")
    obj, parent = rng.choice(pairs)
    toggle = rng.choice(scene.lamps) if task_type == "look_at_obj_in_light" else ""

    receptacles: dict[str, tuple[str, str]] = {}
    used: set[str] = set()
    for r in scene.receptacles:
        # Receptacles that share an interaction pose get distinct locations: "go to X" must
        # bring the agent in front of X alone, as in ALFWorld's games.
        loc, k = location_id(r.pose), 1
        while loc in used:
            loc, k = f"{location_id(r.pose)}|{k}", k + 1
        used.add(loc)
        receptacles[r.object_id] = (r.cls, loc)
    for _ in range(100):  # the agent starts "in the middle of a room", in front of nothing
        x, z = rng.choice(scene.floor_points)
        agent_pose = (x, z, 90 * rng.randrange(4), 30)
        if location_id(agent_pose) not in used:
            break

    placed: list[Placed] = []
    holders = sorted(receptacles)
    names: set[str] = set()

    def new_id(cls: str) -> str:  # a THOR-looking id, unique in the game
        while True:
            object_id = f"{cls}|{rng.uniform(-3, 3):+06.2f}|{rng.uniform(0, 2):+06.2f}|{rng.uniform(-3, 3):+06.2f}"
            if object_id not in names:
                names.add(object_id)
                return object_id

    for cls in scene.object_classes:
        if cls == obj:
            count = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 3)
        else:
            count = rng.randint(1, 2)
        options = [rid for rid in holders if can_contain(receptacles[rid][0], cls)
                   and not (cls == obj and receptacles[rid][0] == parent)]
        for _ in range(count if options else 0):
            placed.append(Placed(new_id(cls), cls, rng.choice(options)))
    lamp_holders = [rid for rid in holders if receptacles[rid][0] in LAMP_HOLDERS]
    for lamp in scene.lamps if lamp_holders else ():
        placed.append(Placed(new_id(lamp), lamp, rng.choice(lamp_holders)))

    spec = GameSpec(task_type=task_type, scene=scene.number, object_target=obj, parent_target=parent,
                    toggle_target=toggle, agent_pose=agent_pose, receptacles=receptacles, objects=placed)
    spec.goal_text = goal_sentence(rng.choice(goal_templates(task_type)), spec)
    return spec


def planning_view(spec: GameSpec) -> GameSpec:
    """The same game with only the objects the goal is about: the planner's search blows up with
    dozens of distractors (minutes for pick_two in a kitchen) and needs none of them."""
    keep = {spec.object_target, spec.toggle_target}
    return replace(spec, objects=[o for o in spec.objects if o.cls in keep])


def solve(spec: GameSpec, name: str, engine, planner) -> list[str] | None:
    """The planner's plan if it wins the full game in the real engine, else None (goal already
    held, no plan, or a plan step the engine does not accept).

    ``planner`` plans on :func:`planning_view`; its steps are named with the full game's entities,
    then replayed one by one in ``engine`` on the full game.
    """
    engine.load(game_json(spec, name))
    planner.load(game_json(planning_view(spec), name))
    if engine.won or planner.won:
        return None
    plan = planner.plan(names=engine)
    if not plan:
        return None
    for command in plan:
        if command not in engine.admissible_commands:
            return None
        engine.step(command)
    return plan if engine.won else None


def game_dir(spec: GameSpec, split: str, seed: int, index: int) -> str:
    """ALFRED-style relative directory: json_2.1.1/<split dir>/<task>-<obj>-None-<recep>-<scene>/trial_..."""
    recep = spec.parent_target or spec.toggle_target
    task_dir = f"{spec.task_type}-{spec.object_target}-None-{recep}-{spec.scene}"
    return os.path.join("json_2.1.1", SPLIT_DIRS[split], task_dir, f"trial_s{seed}_{index:05d}")


def generate_game(out_root: str, split: str, seed: int, index: int, engine, planner) -> GameRecord:
    """Sample game ``index`` until the planner solves it; write game.tw-pddl + traj_data.json."""
    rng = game_rng(split, seed, index)
    for _ in range(MAX_ATTEMPTS):
        spec = sample_spec(split, seed, index, rng)
        task_id = f"{split}_s{seed}_{index:05d}"
        plan = solve(spec, f"plan_{task_id}", engine, planner)
        if plan is None:
            continue
        game = game_json(spec, f"plan_{task_id}", walkthrough=plan)
        rel = game_dir(spec, split, seed, index)
        os.makedirs(os.path.join(out_root, rel), exist_ok=True)
        for name, content in (("game.tw-pddl", game), ("traj_data.json", traj_json(spec, task_id, split, seed, index))):
            tmp = os.path.join(out_root, rel, name + ".tmp")
            with open(tmp, "w") as f:
                json.dump(content, f, sort_keys=True)
            os.replace(tmp, os.path.join(out_root, rel, name))
        return GameRecord(index=index, game_file=os.path.join(rel, "game.tw-pddl"), task_type=spec.task_type,
                          scene=spec.scene, object_target=spec.object_target, parent_target=spec.parent_target,
                          toggle_target=spec.toggle_target, goal=spec.goal_text, plan_length=len(plan))
    raise RuntimeError(f"no solvable game for {split}/{seed}/{index} after {MAX_ATTEMPTS} attempts")


def _generate_chunk(job: tuple[str, str, list[int], int]) -> list[GameRecord]:
    out_root, split, indices, seed = job
    return generate_games(out_root, split, indices, seed)


def generate_games(out_root: str, split: str, indices: Sequence[int], seed: int,
                   log_every: int = 0, workers: int = 1) -> list[GameRecord]:
    """Generate the games ``indices`` of ``(split, seed)`` under ``out_root``.

    ``workers > 1`` spreads them over spawned processes (each game depends only on its index, so
    the result is the same); the planner and the PDDL translation are single-threaded.
    ``log_every > 0`` shows a progress bar (on stderr) refreshed at least every ``log_every`` games.
    """
    from tqdm.auto import tqdm

    from .engine import Engine

    if split not in SPLIT_DIRS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_DIRS)}")
    indices = list(indices)
    if workers > 1 and len(indices) > 1:
        import multiprocessing

        size = max(1, min(25, len(indices) // (4 * workers)))
        jobs = [(out_root, split, indices[i:i + size], seed) for i in range(0, len(indices), size)]
        records: list[GameRecord] = []
        with (multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool,
              tqdm(total=len(indices), desc=f"{split} games", unit="game", disable=not log_every) as bar):
            for chunk in pool.imap_unordered(_generate_chunk, jobs):
                records += chunk
                bar.update(len(chunk))
        return sorted(records, key=lambda r: r.index)
    engine, planner = Engine(), Engine()
    records = []
    try:
        for index in tqdm(indices, desc=f"{split} games", unit="game", disable=not log_every,
                          miniters=max(1, log_every)):
            records.append(generate_game(out_root, split, seed, index, engine, planner))
    finally:
        engine.close()
        planner.close()
    return records
