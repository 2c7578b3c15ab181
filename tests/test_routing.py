"""Routing in all four modes, and skill injection with and without anchors."""

import pytest

from opid_trl import EpisodeSkills, inject, inject_episode_skill, inject_step_skill, route_skills
from opid_trl.algorithms.routing import EPISODE_SKILL_TITLE, STEP_SKILL_TITLE

SKILLS = EpisodeSkills("Open the fridge before looking elsewhere.", {1: "Take the apple now."})


def kinds(routed):
    return [(r.episode_skill is not None, r.step_skill is not None) for r in routed]


def test_critical_first():
    routed = route_skills(SKILLS, 3, "critical_first")
    assert kinds(routed) == [(True, False), (False, True), (True, False)]
    assert routed[1].step_skill == "Take the apple now." and routed[1].kind == "step"
    assert routed[0].kind == "episode"


def test_episode_only():
    assert kinds(route_skills(SKILLS, 3, "episode_only")) == [(True, False)] * 3


def test_step_only():
    routed = route_skills(SKILLS, 3, "step_only")
    assert kinds(routed) == [(False, False), (False, True), (False, False)]
    assert routed[0].kind == "none"


def test_additive():
    routed = route_skills(SKILLS, 3, "additive")
    assert kinds(routed) == [(True, False), (True, True), (True, False)]
    assert routed[1].kind == "both"


def test_failed_analysis_routes_nothing():
    assert kinds(route_skills(None, 2, "critical_first")) == [(False, False)] * 2


def test_critical_step_without_episode_skill():
    routed = route_skills(EpisodeSkills(None, {0: "Go east."}), 2, "critical_first")
    assert kinds(routed) == [(False, True), (False, False)]


def test_unknown_mode():
    with pytest.raises(ValueError):
        route_skills(SKILLS, 1, "random")


def test_cleaned_drops_bad_indices_and_caps_deterministically():
    skills = EpisodeSkills("  rule  ", {"4": "d", 9: "out of range", -1: "neg", "x": "bad", 0: "a", 2: "", 3: "c"})
    cleaned = skills.cleaned(num_steps=5, max_step_skills=2)
    assert cleaned.episode_skill == "rule"
    assert cleaned.step_skills == {0: "a", 3: "c"}


PROMPT = "\n".join([
    "You are an agent. Your task is to: put a clean apple in the fridge.",
    "History: nothing yet.",
    "Your admissible actions are: ['go to fridge 1'].",
    "",
    "Now it's your turn to take an action.",
    "Answer in <action> tags.",
])


def test_episode_skill_goes_after_task_line():
    out = inject_episode_skill(PROMPT, "Clean first.", "put a clean apple in the fridge.").split("\n")
    assert out[0].startswith("You are an agent. Your task is to")
    assert out[1] == EPISODE_SKILL_TITLE and out[2] == "Clean first."
    assert out[3] == "History: nothing yet."


def test_step_skill_goes_before_final_instruction():
    out = inject_step_skill(PROMPT, "Go to the fridge.", "Now it's your turn").split("\n")
    i = out.index("Now it's your turn to take an action.")
    assert out[i - 2] == STEP_SKILL_TITLE and out[i - 1] == "Go to the fridge."
    assert out[-1] == "Answer in <action> tags."


def test_without_anchors_blocks_are_appended():
    plain = "What is 2 + 3?"
    assert inject_episode_skill(plain, "Add carefully.", "not in the prompt") == (
        f"What is 2 + 3?\n\n{EPISODE_SKILL_TITLE}\nAdd carefully.")
    assert inject_step_skill(plain, "Answer 5.", None) == f"What is 2 + 3?\n\n{STEP_SKILL_TITLE}\nAnswer 5."


def test_inject_both_keeps_both_places():
    out = inject(PROMPT, "Clean first.", "Go to the fridge.", "put a clean apple", "Now it's your turn").split("\n")
    assert out.index(EPISODE_SKILL_TITLE) == 1
    assert out.index(STEP_SKILL_TITLE) == out.index("Now it's your turn to take an action.") - 2
    assert inject(PROMPT, None, None, "x", "y") == PROMPT


def test_without_step_skills_critical_steps_fall_back_to_the_episode_skill():
    skills = EpisodeSkills("workflow", {1: "open it"})
    routed = route_skills(skills, 3, "critical_first", use_step_skills=False)
    assert [r.episode_skill for r in routed] == ["workflow"] * 3
    assert all(r.step_skill is None for r in routed)
