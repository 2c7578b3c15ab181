"""Parsing damaged analyzer answers, and the trajectory record's length policy."""

import json

import pytest

from opid_trl import StepRecord, Trajectory
from opid_trl.analyzers import AnalysisParseError, build_messages, parse_analysis, render_record

VALID = {"episode_summary": "Went east, took it.", "episode_skill": "Walk east, then take the item.",
         "step_skills": {"0": "Go east.", "2": "Take the key now."}}


def parse(text, num_steps=4, cap=5):
    return parse_analysis(text, num_steps, cap)[0]


@pytest.mark.parametrize("text", [
    json.dumps(VALID),
    "```json\n" + json.dumps(VALID) + "\n```",
    "Sure! Here is the analysis:\n" + json.dumps(VALID) + "\nHope this helps.",
    json.dumps(VALID).replace('"Go east."}', '"Go east.",}').replace("}}", "},}"),
    str(VALID),  # Python-style single quotes
    json.dumps({**VALID, "step_skills": [{"step": 0, "skill": "Go east."}, {"step": 2, "skill": "Take the key now."}]}),
])
def test_repairs(text):
    skills = parse(text)
    assert skills.episode_skill == VALID["episode_skill"]
    assert skills.step_skills == {0: "Go east.", 2: "Take the key now."}


def test_bad_indices_dropped_and_cap_keeps_earliest():
    answer = {"episode_skill": "x", "step_skills": {"3": "d", "1": "b", "9": "gone", "-1": "gone", "step 2": "gone",
                                                     "0": "a"}}
    assert parse(json.dumps(answer), num_steps=4, cap=2).step_skills == {0: "a", 1: "b"}


def test_summary_is_returned():
    assert parse_analysis(json.dumps(VALID), 4, 5)[1] == "Went east, took it."


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    (None, "empty"),
    ("I cannot analyse this.", "no JSON object"),
    ('{"episode_skill": 3, "step_skills": {}}', "episode_skill"),
    ('{"episode_skill": "ok", "step_skills": "none"}', "step_skills"),
    ('{"episode_skill": "unterminated', "no JSON object"),
])
def test_unusable_answers_raise_with_reason(text, message):
    with pytest.raises(AnalysisParseError, match=message):
        parse(text)


def trajectory(num_steps, success=False, long=False):
    steps = [StepRecord(index=i, observation=("obs %d " % i) * (200 if long else 1),
                        response=f"<think>t</think><action>act {i}</action>", action=f"act {i}",
                        action_valid=i != 3, reward=10.0 if success and i == num_steps - 1 else 0.0)
             for i in range(num_steps)]
    t = Trajectory("t0", 0, "put a clean apple in the fridge.", steps, 10.0 if success else -0.1, success)
    t.fill_discounted_returns(0.95)
    return t


def test_record_shows_everything_when_it_fits():
    text = render_record(trajectory(4, success=True))
    assert text.startswith("Task: put a clean apple in the fridge.\nOutcome: SUCCESS")
    assert all(f"Step {i}" in text for i in range(4)) and "omitted" not in text
    assert "Step 3 (ill-formed answer)" in text and "discounted return from here: 10.000" in text


def test_record_length_policy_keeps_task_and_decisive_steps():
    t = trajectory(30, success=True, long=True)
    text = render_record(t, max_chars=4000, field_chars=300)
    assert len(text) <= 4000
    assert text.startswith("Task: put a clean apple in the fridge.")
    for kept in ("Step 0:", "Step 3 (ill-formed answer)", "Step 29:"):  # first, invalid, last (rewarded)
        assert kept in text
    assert "omitted for length" in text and "Step 15:" not in text


def test_prompt_asks_for_workflow_or_avoidance():
    success = build_messages(trajectory(3, success=True), 5)[1]["content"]
    failure = build_messages(trajectory(3), 2)[1]["content"]
    assert "workflow" in success and "at most 5 critical steps" in success
    assert "avoidance rules" in failure and "at most 2 critical steps" in failure
    assert '"step_skills"' in failure and "JSON only" in failure
