"""Parsing damaged analysis answers, and the trajectory record's length policy."""

import json
import time

import pytest

from opid_trl import StepRecord, Trajectory
from opid_trl.skills.extractors import OUTPUT_SCHEMA, AnalysisParseError, build_messages, parse_analysis, render_record
from opid_trl.skills.extractors.parsing import MAX_CANDIDATES, balanced_objects

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


SCHEMA_ECHO = "The schema is " + json.dumps(OUTPUT_SCHEMA) + ". My answer:\n"
TEMPLATE_ECHO = '{"episode_summary": "...", "episode_skill": "...", "step_skills": {"<step index>": "..."}}'


@pytest.mark.parametrize("text", [
    SCHEMA_ECHO + json.dumps(VALID),
    # an example object without the analysis keys, then the answer
    'Example of a step record: {"step": 1, "action": "go east"}\n```json\n' + json.dumps(VALID) + "\n```",
    # the prompt's template echoed first (placeholders are not an analysis) ...
    "Filling in " + TEMPLATE_ECHO + "\n" + json.dumps(VALID),
    # ... or after the answer
    json.dumps(VALID) + "\nfollowing the form " + TEMPLATE_ECHO,
    # a draft, then the final answer: the last complete analysis wins
    json.dumps({**VALID, "episode_skill": "Draft rule."}) + "\nRevised:\n" + json.dumps(VALID),
    # a stray brace and prose apostrophes before the object do not hide it
    "Let's see { the agent didn't finish... here it is: " + json.dumps(VALID),
    # the analysis wrapped in another object
    json.dumps({"analysis": VALID}),
])
def test_the_analysis_object_is_found_among_other_objects(text):
    skills, summary = parse_analysis(text, 4, 5)
    assert skills.episode_skill == VALID["episode_skill"]
    assert skills.step_skills == {0: "Go east.", 2: "Take the key now."}
    assert summary == VALID["episode_summary"]


def test_a_truncated_last_object_falls_back_to_the_complete_one_before():
    text = json.dumps(VALID) + '\nOr shorter: {"episode_skill": "Walk'
    assert parse(text).episode_skill == VALID["episode_skill"]


@pytest.mark.parametrize("step_skills", ["null", "[]", "{}"])
def test_null_or_empty_step_skills_mean_no_critical_steps(step_skills):
    skills = parse('{"episode_summary": "s", "episode_skill": "Search first.", "step_skills": ' + step_skills + "}")
    assert skills.episode_skill == "Search first." and skills.step_skills == {} and not skills.failed


def test_missing_step_skills_mean_no_critical_steps():
    assert parse('{"episode_skill": "Search first."}').step_skills == {}


@pytest.mark.parametrize("text,message", [
    (SCHEMA_ECHO, "no JSON object with the keys"),
    ('{"step": 1, "action": "go east"}', "no JSON object with the keys"),
    (TEMPLATE_ECHO, "placeholder"),
    # only broken analyses: the error is the last one's
    ('{"episode_skill": 3}\n{"episode_skill": "ok", "step_skills": "none"}', "step_skills"),
])
def test_objects_without_a_usable_analysis_raise(text, message):
    with pytest.raises(AnalysisParseError, match=message):
        parse(text)


def test_balanced_objects_is_bounded_and_keeps_the_last():
    text = " ".join(f'{{"n": {i}}}' for i in range(100))
    blocks = balanced_objects(text)
    assert len(blocks) == MAX_CANDIDATES and blocks[-1] == '{"n": 99}'
    assert balanced_objects('{"a": {"b": 1}} {"c": "}"}') == ['{"a": {"b": 1}}', '{"c": "}"}']


@pytest.mark.parametrize("garbage", ["{" * 200_000, "{'" * 100_000, '{"a": [' * 50_000, "}{" * 100_000,
                                     '{"episode_skill": ' * 20_000,
                                     '{"episode_skill": ' * 3_000 + '"x"' + "}" * 3_000],
                         ids=["braces", "quotes", "lists", "flipped", "open-keys", "deep"])
def test_garbage_answers_fail_fast(garbage):
    start = time.perf_counter()
    with pytest.raises(AnalysisParseError):
        parse(garbage)
    assert time.perf_counter() - start < 2.0


def test_a_long_answer_is_scanned_from_its_end():
    text = "reasoning " * 20_000 + json.dumps(VALID)  # 200 KB of thinking, then the answer
    assert parse(text).episode_skill == VALID["episode_skill"]


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


def test_a_huge_answer_says_it_was_cut():
    from opid_trl.skills.extractors.parsing import MAX_SCAN_CHARS

    answer = '{"episode_skill": "Walk east."}' + " filler" * (300 * 1024 // 7)
    with pytest.raises(AnalysisParseError, match=r"last 64 KiB of the answer \(it is 3\d\d KiB long"):
        parse_analysis(answer, num_steps=2, max_step_skills=2)
    assert len(answer) > MAX_SCAN_CHARS
