"""The environment protocol, the action projection and the fetch test environment."""

import random

import pytest

import environments
from environments import (
    FetchEnvironment,
    make_fetch_task,
    parse_think_action,
    parse_think_action_reference,
)
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


def test_task_types_by_distance():
    task = make_fetch_task(5)
    single = FetchEnvironment()
    single.reset(task)
    assert single.task_type == "fetch"
    env = FetchEnvironment(task_types="distance")
    env.reset(task)
    assert env.task_type == f"fetch-d{task['target_room']}"
    with pytest.raises(ValueError, match="task_types"):
        FetchEnvironment(task_types="rooms")


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


# ------------------------------------------------------------------ action parsing modes

LONG_TAGLESS = "I think the best move now is to Go East"  # 39 characters, no tags


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>go</think><action>Go East</action>", ("go east", True)),
        ("<action>go east</action>", ("go east", False)),  # no reasoning: invalid, action kept
        ("<action>go east</action><think>late</think>", ("go east", True)),  # order is not checked
        ("<think>x</think><action>a</action><action>b</action>", ("a", True)),  # first block, later ignored
        ("<think>x</think><action>  </action>", ("", True)),  # an empty action is valid
        ("<THINK>x</THINK><action>look</action>", ("look", False)),  # think tags are matched literally
        ("<think>x</think><ACTION>Look</ACTION>", ("look", True)),  # action tags in any case
        ("<think>x</think><action>look \u770b</action>", ("look \u770b", False)),  # a CJK ideograph
        ("<think>x</think></action>look<action>", ("", True)),  # closing tag first: empty slice
        ("go east", ("go east", False)),  # tagless: its (lower-cased) tail
        (LONG_TAGLESS, ("he best move now is to go east", False)),  # its last 30 characters
        ("<think>x</think><action>unclosed", ("hink>x</think><action>unclosed", False)),
        ("", ("", False)),
    ],
)
def test_parse_think_action_reference(text, expected):
    assert parse_think_action_reference(text) == expected


def test_reference_tail_length_is_a_parameter():
    assert parse_think_action_reference(LONG_TAGLESS, tail_chars=20) == ("ve now is to go east", False)  # WebShop's


def test_strict_mode_never_plays_an_ill_formed_answer():
    env = FetchEnvironment()
    first = env.reset({"seed": 5})  # room 0; "go east" is admissible
    assert env.action_parsing == "strict"
    result = env.step("<action>go east</action>")  # no reasoning
    assert (result.action, result.action_valid) == ("go east", False)
    assert "Invalid action" in result.observation and env._room == 0
    assert result.history_text == "go east"  # the best-effort action
    result = env.step("I will Go East")
    assert (result.action, result.history_text) == (None, "I will Go East")  # the whole answer
    assert env.step("<think>x</think><action>look</action>").observation == first
    valid = env.step("<think>x</think><action>go east</action>")
    assert valid.action_valid and valid.history_text == "go east" and env._room == 1


def test_reference_mode_plays_ill_formed_answers_and_keeps_the_played_action():
    env = environments.make("fetch", action_parsing="reference")
    env.reset({"seed": 5})
    result = env.step("<action>Go East</action>")  # no reasoning: flagged invalid, played anyway
    assert (result.action, result.action_valid, result.history_text) == ("go east", False, "go east")
    assert env._room == 1 and result.observation.startswith("You are in room 1")
    result = env.step("Then I Go West")  # tagless: its tail goes to the engine
    assert (result.action, result.action_valid, result.history_text) == ("then i go west", False, "then i go west")
    assert result.observation == "Nothing happens." and env._room == 1
    result = env.step("<think>x</think><action>go west</action><action>go east</action>")  # first block
    assert result.action_valid and result.history_text == "go west" and env._room == 0


def test_reference_mode_ill_formed_answers_still_count_towards_max_steps():
    env = FetchEnvironment(action_parsing="reference")
    env.reset({"seed": 1, "max_steps": 2})
    assert not env.step("nonsense").done
    assert env.step("more nonsense").done


def test_every_environment_accepts_action_parsing():
    from environments import (
        ALFWorldEnvironment,
        SearchQAEnvironment,
        WebShopEnvironment,
    )

    builds = {"fetch": lambda m: FetchEnvironment(action_parsing=m),
              "alfworld": lambda m: ALFWorldEnvironment(action_parsing=m),  # the engine starts at reset
              "webshop": lambda m: WebShopEnvironment(num_products=300, test_size=50, action_parsing=m),
              "search_qa": lambda m: SearchQAEnvironment(retriever=object(), action_parsing=m)}
    assert set(builds) == set(environments.available())
    for name, build in builds.items():
        for mode in environments.ACTION_PARSING_MODES:
            assert build(mode).action_parsing == mode, name
        with pytest.raises(ValueError, match="action_parsing"):
            build("loose")


def test_task_builders_take_the_environment_kwargs():
    rows = environments.tasks("fetch", num_tasks=3, seed=2, env_kwargs={"action_parsing": "reference"})
    assert rows.to_list() == environments.tasks("fetch", num_tasks=3, seed=2).to_list()
    with pytest.raises(TypeError, match="colour"):
        environments.tasks("fetch", num_tasks=1, env_kwargs={"colour": "red"})
    with pytest.raises(ValueError, match="max_rooms"):
        environments.tasks("fetch", num_tasks=1, env_kwargs={"max_rooms": 4}, max_rooms=5)


# ---------------------------------------------------------------------------- linear-time tag parsing
def test_tag_blocks_find_what_the_regex_finds():
    import random
    import re

    from environments.base import tag_blocks

    pieces = ["<action>", "</action>", "<ACTION>", "</Action>", "<think>", "</think>", "<search>", "</search>",
              "<answer>", "</answer>", "a", " ", "\n", "<", ">", "/"]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        for tags in (("action",), ("think",), ("search", "answer")):
            pattern = re.compile("<(" + "|".join(tags) + r")>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
            expected = [(m.group(1).lower(), m.start(), m.end(), m.group(2)) for m in pattern.finditer(text)]
            assert [tuple(b) for b in tag_blocks(text, tags)] == expected, (text, tags)


@pytest.mark.timeout(60)
def test_a_megabyte_of_repeated_opening_tags_parses_at_once():
    """The regexes these parsers used retried every later opening tag: quadratic, ~13 s at 128 KB and
    minutes at 1 MB. A linear parser reads 1 MB of each adversarial answer well within the limit."""
    from environments.base import parse_think_action
    from environments.search_qa.env import parse_search_action, parse_search_action_reference

    for tag in ("<action>", "<think>", "<search>", "<answer>"):
        text = "<think>x</think>" + tag * (2**20 // len(tag))
        assert parse_think_action(text)[1] is False
        assert parse_search_action(text)[1] is False
        parse_search_action_reference(text)
