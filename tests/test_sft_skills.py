"""The skill-conditioned warm start: exploring behaviour episodes, their hindsight skills in the
prompt on a share of the steps with the expert's answer as target, the behaviour's answer elsewhere."""

import pytest
import yaml

import environments
from environments import FetchEnvironment
from opid_trl.algorithms.routing import EPISODE_SKILL_TITLE, STEP_SKILL_TITLE
from opid_trl.runs.run_config import ConfigError, load_run_config
from opid_trl.runs.sft import skill_conditioned_examples
from opid_trl.skills.extractors import RuleBasedSkillExtractor


def examples(explore_rate, skill_share, seed=0, num_tasks=12):
    rows = [environments.make_fetch_task(i, 3, 5) for i in range(num_tasks)]
    return skill_conditioned_examples(lambda: environments.make("fetch"), rows, 1, 6, RuleBasedSkillExtractor(),
                                      explore_rate=explore_rate, skill_share=skill_share, seed=seed)


def has_skill(example):
    prompt = example["prompt"][0]["content"]
    return EPISODE_SKILL_TITLE in prompt or STEP_SKILL_TITLE in prompt


def action(example):
    return FetchEnvironment().parse_action(example["completion"][0]["content"])[0]


def test_without_exploration_or_skills_every_target_is_the_expert():
    data, stats = examples(0.0, 0.0)
    assert stats["explored_steps"] == 0 and stats["with_skill"] == 0 and stats["won"] == stats["episodes"] == 12
    assert not any(has_skill(e) for e in data)
    assert all(action(e) in ("go east",) or action(e).startswith("take ") for e in data)


def test_skill_steps_target_the_expert_and_plain_steps_the_behaviour():
    data, stats = examples(0.5, 0.5, seed=1)
    with_skill = [e for e in data if has_skill(e)]
    plain = [e for e in data if not has_skill(e)]
    assert stats["with_skill"] == len(with_skill) > 0 and stats["explored_steps"] > 0 and len(plain) > 0
    assert stats["won"] < stats["episodes"]  # exploration loses episodes: failures' skills are taught too
    # the expert never looks (it walks west only back from an overshoot); the exploring behaviour does,
    # and only plain steps imitate it
    assert not any(action(e) == "look" for e in with_skill)
    assert any(action(e) in ("go west", "look") for e in plain)
    # every answer stays well-formed
    assert all(FetchEnvironment().parse_action(e["completion"][0]["content"])[1] for e in data)


def test_skill_share_one_shows_a_skill_wherever_one_was_routed_and_is_deterministic():
    data, stats = examples(0.3, 1.0, seed=2)
    assert stats["with_skill"] == sum(has_skill(e) for e in data) == len(data)  # rule-based: every step routed
    assert examples(0.3, 1.0, seed=2) == (data, stats)
    assert examples(0.3, 1.0, seed=3)[0] != data


@pytest.mark.parametrize("field,value", [("skill_share", 1.5), ("explore_rate", -0.1), ("skill_share", True),
                                         ("explore_rate", float("nan"))])
def test_sft_skill_fields_are_checked(tmp_path, field, value):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "environment": {"name": "fetch"}, "training": {},
                                    "sft": {"num_tasks": 4, field: value}}))
    with pytest.raises(ConfigError, match=f"sft.{field}"):
        load_run_config(path)


def test_placebo_skills_come_from_another_task_and_keep_the_behaviours_answer():
    rows = [environments.make_fetch_task(i, 3, 5) for i in range(16)]
    data, stats = skill_conditioned_examples(lambda: environments.make("fetch"), rows, 1, 6, RuleBasedSkillExtractor(),
                                             explore_rate=0.5, skill_share=1.0, seed=4, placebo_share=0.5)
    assert stats["with_placebo"] > 0 and stats["with_skill"] > 0
    assert stats["with_placebo"] + stats["with_skill"] == len(data)
    placebo = [e for e in data if "To take the" in e["prompt"][0]["content"].split("## Episode-level skill")[-1]
               and e["prompt"][0]["content"].split("Your task is to: take the ")[1].split(".")[0]
               not in e["prompt"][0]["content"].split("## Episode-level skill")[-1].split("\n")[1]]
    # a workflow of another task's item: the target is whatever the behaviour did, looks and west walks included
    assert placebo and any(action(e) in ("go west", "look") or action(e).startswith("take ") for e in placebo)
    none, _ = skill_conditioned_examples(lambda: environments.make("fetch"), rows, 1, 6, RuleBasedSkillExtractor(),
                                         explore_rate=0.5, skill_share=1.0, seed=4)
    assert all(action(e) != "look" for e in none)  # without placebo every target is the expert's: it never looks


def test_follow_examples_name_a_random_admissible_action_and_the_answer_takes_exactly_it():
    from opid_trl.runs.sft import FOLLOW_SKILL_TEMPLATE

    rows = [environments.make_fetch_task(i, 3, 5) for i in range(16)]
    data, stats = skill_conditioned_examples(lambda: environments.make("fetch"), rows, 1, 6, RuleBasedSkillExtractor(),
                                             explore_rate=0.3, skill_share=0.5, seed=5, placebo_share=0.5,
                                             follow_share=0.4)
    prefix = FOLLOW_SKILL_TEMPLATE.split("{action}")[0]
    follow = [e for e in data if f"{STEP_SKILL_TITLE}\n{prefix}" in e["prompt"][0]["content"]]
    assert stats["with_follow"] == len(follow) > 0
    assert stats["with_follow"] + stats["with_skill"] + stats["with_placebo"] < len(data)  # plain steps remain
    named = [e["prompt"][0]["content"].split(f"{STEP_SKILL_TITLE}\n{prefix}")[1].split("' now.")[0] for e in follow]
    # the answer acts on the named action, whatever it is: the expert's ("go east", "take ...") or not
    assert [action(e) for e in follow] == named
    assert {"go west", "look"} & set(named) and any(n == "go east" or n.startswith("take ") for n in named)
    # the named action was admissible there: the prompt lists it
    listed = [e["prompt"][0]["content"].split("admissible actions of the current situation are:")[1].split("\n")[0]
              for e in follow]
    assert all(f"'{n}'" in line for n, line in zip(named, listed))
    # follow examples keep only that block: no episode skill
    assert not any(EPISODE_SKILL_TITLE in e["prompt"][0]["content"] for e in follow)
    assert all(FetchEnvironment().parse_action(e["completion"][0]["content"])[1] for e in data)
