"""ALFWorld on the real engine: generated games play, win with the planner's plan, and train.

Needs the optional extra (alfworld + textworld with fast-downward); skipped without it. Games are
generated once per module (~2 s each on one core).
"""

import json
import math
import os
import shutil
import sys

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")
pytest.importorskip("fast_downward")

from environments.alfworld import (  # noqa: E402
    HELD_OUT_TARGETS,
    TASK_TYPES,
    ALFWorldEnvironment,
    alfworld_dataset,
    alfworld_tasks,
    ensure_game_records,
    ensure_games,
    official_game_files,
    task_rows,
)
from environments.alfworld import data as alf_data  # noqa: E402
from environments.alfworld.__main__ import main  # noqa: E402
from environments.alfworld.generate import generate_games, sample_spec  # noqa: E402
from environments.alfworld.scenes import split_scenes  # noqa: E402
from environments.base import INSTRUCTION_LINE, HistoryEntry, PromptView  # noqa: E402

from .conftest import tiny_config  # noqa: E402


def act(text):
    return f"<think>I will do it.</think><action>{text}</action>"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("alfworld-cache"))


@pytest.fixture(scope="module")
def train_games(cache):
    return ensure_game_records(cache, "train", 6, seed=0)


@pytest.fixture(scope="module")
def unseen_games(cache):
    return ensure_game_records(cache, "unseen", 6, seed=0)


@pytest.fixture
def env():
    environment = ALFWorldEnvironment()
    yield environment
    environment.close()


@pytest.mark.parametrize("split", ["train", "unseen"])
def test_generated_games_of_all_six_types_are_won_by_the_expert_plan(split, train_games, unseen_games, env):
    games = train_games if split == "train" else unseen_games
    assert sorted(g["task_type"] for g in games) == sorted(TASK_TYPES)
    for game in games:
        observation = env.reset({"game_file": game["game_file"]})
        assert env.task_type == game["task_type"]
        assert env.task_description.rstrip(".") == game["goal"]
        assert "Your task is to: " + env.task_description in observation
        assert "help" not in env.admissible_actions and "look" in env.admissible_actions
        plan = env.walkthrough()
        assert 0 < len(plan) == game["plan_length"] <= 30
        for i, action in enumerate(plan):
            assert action in env.admissible_actions
            result = env.step(act(action))
            assert result.action_valid and result.info["task_type"] == game["task_type"]
            assert result.done == result.won == (i == len(plan) - 1)
        assert result.reward == 10.0 and result.info["won"]


def test_malformed_and_random_actions_are_handled(train_games, env):
    import random

    env.reset({"game_file": train_games[2]["game_file"]})
    before = env.admissible_actions
    for text in ["go to fridge 1", "<action>look</action>", "<think>x</think><action> </action>",
                 "<think>x</think><action>look</action><action>look</action>", ""]:
        result = env.step(text)
        assert not result.action_valid and not result.done and result.reward == 0.0
        assert "Invalid action format" in result.observation
        assert env.admissible_actions == before  # the game did not move
    result = env.step(act("dance with the fridge"))
    assert result.action_valid and result.observation == "Nothing happens."
    assert not result.info["admissible"] and not result.done
    rng = random.Random(0)
    for _ in range(20):
        result = env.step(act(rng.choice(env.admissible_actions)))
        assert result.info["admissible"] and isinstance(result.observation, str) and result.observation
    assert sys.argv[0] != "translate.py"  # the PDDL translator's sys.argv hack is undone


def test_reference_mode_sends_ill_formed_answers_to_the_game(train_games):
    env = ALFWorldEnvironment(action_parsing="reference")
    try:
        env.reset({"game_file": train_games[2]["game_file"]})
        target = next(a for a in env.admissible_actions if a.startswith("go to "))
        result = env.step(f"<action>{target.upper()}</action>")  # no reasoning: invalid, but played
        assert (result.action, result.action_valid, result.history_text) == (target, False, target)
        assert result.info["admissible"] and result.observation != "Nothing happens."
        tagless = "I am not sure what to do, maybe look"  # 36 characters: the last 30 are played
        result = env.step(tagless)
        assert (result.action, result.action_valid) == ("ot sure what to do, maybe look", False)
        assert result.observation == "Nothing happens." and not result.info["admissible"]
        assert result.history_text == result.action and not result.done
    finally:
        env.close()


def test_tasks_follow_the_environment_data_root(train_games, tmp_path):
    """``data_root`` in the environment kwargs picks the official games for the tasks as well."""
    import environments

    root = tmp_path / "data"
    source = os.path.dirname(train_games[1]["game_file"])
    shutil.copytree(source, root / "json_2.1.1/train/a-task/trial_1")
    env_kwargs = {"data_root": str(root), "action_parsing": "strict"}
    rows = environments.tasks("alfworld", split="train", num_tasks=1, env_kwargs=env_kwargs,
                              cache_dir=str(tmp_path / "unused-cache"))
    assert rows["game_file"] == [str(root / "json_2.1.1/train/a-task/trial_1/game.tw-pddl")]
    assert not (tmp_path / "unused-cache").exists()  # nothing was generated
    env = environments.make("alfworld", **env_kwargs)
    try:
        assert "Your task is to" in env.reset(rows[0]) and env.task_type == train_games[1]["task_type"]
    finally:
        env.close()


def test_prompt_follows_the_reference_template(train_games, env):
    observation = env.reset({"game_file": train_games[0]["game_file"]})
    history = tuple(HistoryEntry(f"obs {i}", f"act {i}") for i in range(7))
    prompt = env.render_prompt(PromptView(env.task_description, 7, observation, env.admissible_actions, history),
                               ALFWorldEnvironment.default_history_length)
    lines = prompt.split("\n")
    assert env.task_description in lines[0] and lines[0].startswith("You are an expert agent")
    assert "[Observation 3: 'obs 2', Action 3: 'act 2']" in prompt and "Observation 2:" not in prompt
    assert "You are now at step 8 and your current observation is:" in prompt
    assert f"'{env.admissible_actions[0]}'" in prompt and "'help'" not in prompt
    assert any(line.startswith(INSTRUCTION_LINE) for line in lines) and lines[-1].endswith("</action> tags.")
    first = env.render_prompt(PromptView(env.task_description, 0, observation, env.admissible_actions), 5)
    assert "Prior to this step" not in first and "You are now at step 1 " in first
    assert (ALFWorldEnvironment.default_history_length, ALFWorldEnvironment.default_max_turns) == (5, 30)


def test_same_seed_same_game_and_other_seed_other_game(train_games, tmp_path):
    again = generate_games(str(tmp_path), "train", [0, 1], seed=0)
    for record, fresh in zip(train_games[:2], again, strict=True):
        for name in ("game.tw-pddl", "traj_data.json"):
            with (open(os.path.join(os.path.dirname(record["game_file"]), name)) as a,
                  open(os.path.join(str(tmp_path), os.path.dirname(fresh.game_file), name)) as b):
                assert a.read() == b.read()
    specs = [sample_spec("train", s, 0) for s in range(4)]
    assert len({(s.scene, s.object_target, s.goal_text, len(s.objects)) for s in specs}) > 1


def test_unseen_split_shares_no_scene_object_pair_with_train(train_games, unseen_games):
    def pairs(split, n=240):
        specs = [sample_spec(split, 0, i) for i in range(n)]
        return {(s.scene, s.object_target) for s in specs}, specs

    train, train_specs = pairs("train")
    unseen, unseen_specs = pairs("unseen")
    assert not train & unseen
    assert not {s.scene for s in train_specs} & set(split_scenes("unseen"))
    assert not {s.object_target for s in train_specs} & HELD_OUT_TARGETS
    assert {s.object_target for s in unseen_specs} & HELD_OUT_TARGETS  # unseen does ask for them
    generated = lambda games: {(g["scene"], g["object_target"]) for g in games}  # noqa: E731
    assert not generated(train_games) & generated(unseen_games)


def test_cache_reuses_and_extends(train_games, cache, tmp_path, monkeypatch):
    copy = str(tmp_path / "cache")
    shutil.copytree(cache, copy)
    calls = []

    def fake_generate(root, split, indices, seed, log_every=0, workers=1):
        calls.append(list(indices))
        return []

    monkeypatch.setattr("environments.alfworld.generate.generate_games", fake_generate)
    paths = ensure_games(copy, "train", 6, seed=0)
    assert calls == [] and [os.path.relpath(p, copy) for p in paths] == [
        os.path.relpath(g["game_file"], cache) for g in train_games]
    assert ensure_games(copy, "train", 3, seed=0) == paths[:3]
    ensure_games(copy, "train", 8, seed=0)
    assert calls == [[6, 7]]  # only the missing games


def test_cli_and_official_layout(train_games, unseen_games, cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    main(["--out", str(out), "--num-games", "1", "--split", "train", "--seed", "0"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["games"] == 1
    # The output directory is an ALFWORLD_DATA root, and game 0 is the one the cache holds.
    (cli_game,) = official_game_files("train", data_root=str(out))
    assert os.path.relpath(cli_game, out) == os.path.relpath(train_games[0]["game_file"],
                                                             alf_data.cache_root(cache, "train", 0))
    # An ALFWORLD_DATA tree: one good game, one movable-receptacle trial, one unsolvable game.
    root = tmp_path / "data"
    source = os.path.dirname(train_games[0]["game_file"])
    for rel in ["json_2.1.1/train/a-task/trial_1", "json_2.1.1/train/movable-task/trial_1",
                "json_2.1.1/train/b-task/trial_1"]:
        shutil.copytree(source, root / rel)
    bad = root / "json_2.1.1/train/b-task/trial_1/game.tw-pddl"
    bad.write_text(json.dumps({**json.loads(bad.read_text()), "solvable": False}))
    monkeypatch.setenv("ALFWORLD_DATA", str(root))
    games = official_game_files("train")
    assert games == [str(root / "json_2.1.1/train/a-task/trial_1/game.tw-pddl")]
    rows = task_rows("train")
    assert rows[0]["game_file"] == games[0] and rows[0]["task_type"] == train_games[0]["task_type"]
    monkeypatch.delenv("ALFWORLD_DATA")
    assert official_game_files("train") == []
    dataset = alfworld_dataset("train", 4, seed=0, cache_dir=cache)
    assert len(dataset) == 4 and dataset[0]["game_file"] == train_games[0]["game_file"]
    assert alf_data.cache_root(cache, "train", 0) in dataset[0]["game_file"]
    # The registry's task builder: reference split names, environment kwargs tolerated.
    rows = alfworld_tasks("valid_unseen", 6, seed=0, cache_dir=cache, success_reward=10.0)
    assert rows["game_file"] == [g["game_file"] for g in unseen_games]
    assert sorted(rows["task_type"]) == sorted(TASK_TYPES)
    with pytest.raises(TypeError, match="bogus"):
        alfworld_tasks("train", 2, cache_dir=cache, bogus=1)
    with pytest.raises(ValueError, match="unknown split"):
        alfworld_tasks("dev", 2, cache_dir=cache)


class SkillsForEveryone:
    def __init__(self):
        self.trajectories = []

    def __call__(self, trajectories):
        from opid_trl import EpisodeSkills

        self.trajectories.extend(trajectories)
        return [EpisodeSkills("Go to the receptacle that holds the object first.", {0: "Look around."})
                for _ in trajectories]


def test_opid_trains_two_steps_on_alfworld(train_games, tiny_model_dir, tiny_tokenizer, tmp_path):
    from datasets import Dataset

    from opid_trl import OPIDTrainer

    # The two games with the shortest opening observation keep prompts small for the tiny model.
    env = ALFWorldEnvironment()
    sizes = [(len(env.reset(g)), g["game_file"]) for g in train_games]
    env.close()
    rows = [{"game_file": path} for _, path in sorted(sizes)[:2]]
    extractor = SkillsForEveryone()
    trainer = OPIDTrainer(model=tiny_model_dir,
                          args=tiny_config(tmp_path, max_steps=2, max_turns=3, max_prompt_length=1024,
                                           per_device_train_batch_size=4, num_generations=2, beta=0.0),
                          train_dataset=Dataset.from_list(rows * 4), processing_class=tiny_tokenizer,
                          environment=ALFWorldEnvironment, skill_extractor=extractor)
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 2
    for h in history:
        assert math.isfinite(h["loss"])
        assert h["env/rows"] > 0 and h["env/errors"] == 0
    assert extractor.trajectories and all(t.task_type in TASK_TYPES for t in extractor.trajectories)
    assert all(t.task.endswith(".") and len(t.steps) >= 1 for t in extractor.trajectories)
