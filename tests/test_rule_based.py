"""The rule-based skill extractor on hand-made trajectories."""

from environments import SearchQAEnvironment, make
from environments.base import THINK_ACTION_RESPONSE_FORMAT
from opid_trl import StepRecord, Trajectory
from opid_trl.skill_extractors import RuleBasedSkillExtractor, SkillExtractor


def build(actions, success, observations=None, valid=None, rewards=None, task="take the key.", response_format=None):
    steps = []
    for i, action in enumerate(actions):
        steps.append(StepRecord(
            index=i,
            observation=observations[i] if observations else f"room {i}",
            response=f"<action>{action}</action>",
            action=action,
            action_valid=valid[i] if valid else True,
            reward=rewards[i] if rewards else 0.0,
        ))
    return Trajectory("t", 0, task, steps, sum(s.reward for s in steps), success, response_format=response_format)


def analyze(trajectory, **kwargs):
    return RuleBasedSkillExtractor(**kwargs)([trajectory])[0]


def test_success_gives_collapsed_workflow_and_decisive_step():
    t = build(["go east", "go west", "go east", "go east", "look", "take key"], True,
             rewards=[0, 0, 0, 0, 0, 10.0])
    skills = analyze(t)
    assert skills.episode_skill == (
        "To take the key, follow this workflow: go east -> look -> take key. "
        "Keep this order of actions for tasks of this kind and avoid detours.")
    assert skills.step_skills == {5: "Take 'take key' now: it makes progress on the task."}


def test_success_marks_recovery_from_ill_formed_answers():
    t = build([None, "go east", "take key"], True, valid=[False, True, True], rewards=[0, 0, 10.0])
    assert analyze(t).step_skills == {
        1: "Answer in the required format with one action, here 'go east'.",
        2: "Take 'take key' now: it makes progress on the task.",
    }


def test_failure_with_repeats_loops_stalls_and_invalid_answers():
    actions = [None, "look", "look", "go east", "go west", "go east", "go west", "look"]
    observations = ["a", "a", "a", "a", "b", "c", "b", "c"]
    t = build(actions, False, observations=observations, valid=[False] + [True] * 7)
    skills = analyze(t)
    rules = skills.episode_skill
    assert rules.startswith("Avoid these mistakes: 1 of 8 answers were ill-formed")
    assert "Do not repeat 'look': it was taken 3 times" in rules
    assert "Avoid going back and forth between 'go east' and 'go west'." in rules
    assert "Steps 0-3 made no progress" in rules
    assert skills.step_skills == {
        0: THINK_ACTION_RESPONSE_FORMAT,
        1: "Nothing changed after your last action: try a different one.",
        3: "Do not alternate between 'go east' and 'go west'; commit to a new plan.",
        7: "Do not take 'look' again; choose an admissible action you have not tried.",
    }


def test_failure_without_visible_mistake_gets_generic_rule():
    t = build(["go east", "take sock"], False, observations=["a", "b"])
    skills = analyze(t)
    assert "was not completed in 2 steps" in skills.episode_skill
    assert list(skills.step_skills) == [1]


def test_cap_keeps_earliest_and_is_deterministic():
    actions = [None, "look", "look", "go east", "go west", "go east", "go west", "look"]
    t = build(actions, False, observations=["a", "a", "a", "a", "b", "c", "b", "c"], valid=[False] + [True] * 7)
    first = analyze(t, max_step_skills=2)
    assert list(first.step_skills) == [0, 1]
    assert analyze(t, max_step_skills=2) == first


def test_empty_trajectory_is_a_failure_not_an_exception():
    extractor = RuleBasedSkillExtractor()
    assert isinstance(extractor, SkillExtractor) and extractor.supports_overlap
    result = extractor([Trajectory("t", 0, "task", [], 0.0, False)])[0]
    assert result.failed and extractor.pop_metrics() == {"requests": 1.0, "failures": 1.0}


def test_format_advice_follows_the_environment():
    search_format = SearchQAEnvironment().response_format
    assert "<search>" in search_format and "<answer>" in search_format and "<action>" not in search_format
    actions = [None, "<search>capital of france</search>", None]
    t = build(actions, False, observations=["q", "info", "info2"], valid=[False, True, False],
              task="What is the capital of France?", response_format=search_format)
    skills = analyze(t)
    advice = [skills.episode_skill, *skills.step_skills.values()]
    assert skills.step_skills[0] == search_format
    assert any("<search>" in a and "<answer>" in a for a in advice)
    assert not any("<action>" in a for a in advice)


def test_format_advice_defaults_to_think_action():
    assert make("fetch").response_format == THINK_ACTION_RESPONSE_FORMAT  # the base class default
    t = build([None, "go east"], False, observations=["a", "b"], valid=[False, True])
    assert analyze(t).step_skills[0] == THINK_ACTION_RESPONSE_FORMAT and "<action>" in THINK_ACTION_RESPONSE_FORMAT
