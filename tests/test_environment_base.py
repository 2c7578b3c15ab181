"""The environment protocol, the action projection and the fetch test environment."""

import random

import pytest

import environments
from environments import FetchEnvironment, make_fetch_task, parse_think_action
from environments.base import HistoryEntry, PromptView, render_history, window


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>go</think><action>Go East</action>", ("go east", True)),
        ("<think>a</think>\n<action> take key </action>", ("take key", True)),
        ("<action>go east</action>", ("go east", False)),  # no reasoning
        ("<action>go east</action><think>late</think>", ("go east", False)),  # reasoning after the action
        ("<think>x</think><action>a</action><action>b</action>", ("b", False)),  # two actions
        ("<think>x</think><action>  </action>", (None, False)),
        ("go east", (None, False)),
        ("", (None, False)),
    ],
)
def test_parse_think_action(text, expected):
    assert parse_think_action(text) == expected


def test_history_window_and_numbering():
    history = [HistoryEntry(f"o{i}", f"a{i}") for i in range(5)]
    kept, first = window(history, 2)
    assert [h.action for h in kept] == ["a3", "a4"] and first == 4
    assert render_history(kept, first) == "[Observation 4: 'o3', Action 4: 'a3']\n[Observation 5: 'o4', Action 5: 'a4']"
    assert window(history, 0) == ((), 6)
    assert window(history[:1], 3)[1] == 1


def test_registry():
    assert "fetch" in environments.available()
    assert isinstance(environments.make("fetch"), FetchEnvironment)
    with pytest.raises(ValueError, match="unknown environment 'nope'"):
        environments.make("nope")


@pytest.mark.parametrize("seed", range(30))
def test_expert_wins_every_task(seed):
    env = FetchEnvironment()
    env.reset(make_fetch_task(seed))
    for _ in range(10):
        action = env.expert_action()
        result = env.step(f"<think>plan</think><action>{action}</action>")
        assert result.action_valid
        if result.done:
            break
    assert result.won and result.reward == 10.0


def test_same_seed_same_task_and_prompt():
    a, b = FetchEnvironment(), FetchEnvironment()
    obs_a, obs_b = a.reset({"seed": 11}), b.reset({"seed": 11})
    assert obs_a == obs_b and a.task_description == b.task_description
    view = PromptView(a.task_description, 0, obs_a, a.admissible_actions)
    assert a.render_prompt(view, 2) == b.render_prompt(view, 2)


def test_random_and_malformed_answers_never_raise():
    rng = random.Random(0)
    env = FetchEnvironment()
    env.reset({"seed": 3, "max_steps": 50})
    answers = ["", "go east", "<action></action>", "<think>x</think><action>fly away</action>", "\x00\xff<<<>>>",
               "<think>x</think><action>take sock</action>"]
    for _ in range(40):
        result = env.step(rng.choice(answers))
        assert isinstance(result.observation, str)
        if not result.action_valid:
            assert result.reward == 0.0 and "Invalid action" in result.observation
        if result.done:
            break


def test_invalid_answer_leaves_state_unchanged():
    env = FetchEnvironment()
    first = env.reset({"seed": 5})
    result = env.step("I will go east")
    assert not result.action_valid and not result.done
    assert env.step("<think>x</think><action>look</action>").observation == first


def test_max_steps_ends_the_episode():
    env = FetchEnvironment()
    env.reset({"seed": 1, "max_steps": 2})
    assert not env.step("<think>x</think><action>look</action>").done
    assert env.step("bad").done


def test_prompt_has_the_reference_layout():
    env = FetchEnvironment()
    obs = env.reset({"seed": 2})
    history = (HistoryEntry("You are in room 0.", "go east"),)
    text = env.render_prompt(PromptView(env.task_description, 1, obs, env.admissible_actions, history), 2)
    lines = text.split("\n")
    assert env.task_description in lines[0]
    assert "Action 1: 'go east'" in text and "You are now at step 2" in text
    assert any(line.startswith(env.instruction_anchor) for line in lines)
