"""The skill-signal diagnostic: AUC, intervals and share on hand-built rows, the environments'
labelling rules, and the trainer's records against an independent replay."""

import contextlib
import json
import math
import re

import pytest
import torch
from datasets import Dataset

from environments import FetchEnvironment, SearchQAEnvironment, make, make_fetch_task
from opid_trl import EpisodeSkills, OPIDTrainer
from opid_trl.algorithms.routing import RoutedSkill
from opid_trl.generation.base import Sample
from opid_trl.reporting.metrics_log import MetricsJSONLCallback
from opid_trl.reporting.skill_signal_recorder import routed_rule
from opid_trl.skills.signal import (
    StepSignal,
    action_token_mask,
    auc,
    batch_metrics,
    episode_interval,
    markdown_table,
    opid_auc_by_weight,
    score_auc,
    step_signals,
    summarize,
    update_share,
)

from .conftest import tiny_config


def signal(tid, label, skill, outcome=0.0, routing="episode", success=False, rule=None, abs_raw=0.0, abs_used=0.0,
           abs_outcome=0.0, weighted=0.0, skill_action=None, step=0):
    return StepSignal(trajectory_id=tid, step_index=step, label=label, routing=routing, success=success, rule=rule,
                      task_type=None, tokens=4, action_tokens=2 if skill_action is not None else 0, outcome=outcome,
                      skill=skill, skill_action=skill_action, weighted=weighted, abs_weighted_raw=abs_raw,
                      abs_used=abs_used, abs_outcome=abs_outcome)


# ---------------------------------------------------------------------------- estimators
def test_auc_by_hand():
    # good {3, 2} vs bad {1, 2}: pairs 3>1, 3>2, 2>1 win, 2=2 ties -> (1 + 1 + 1 + 0.5) / 4
    assert auc([3, 2, 1, 2], [True, True, False, False]) == pytest.approx(0.875)
    assert auc([1, 2], [True, False]) == 0.0 and auc([2, 1], [True, False]) == 1.0
    assert auc([5, 5, 5], [True, False, False]) == 0.5
    # weights are repeated samples: weight 2 on the good 2 == listing it twice
    assert auc([3, 2, 1, 2], [True, True, False, False], [1, 2, 1, 1]) == pytest.approx(
        auc([3, 2, 2, 1, 2], [True, True, True, False, False]))
    assert math.isnan(auc([1, 2], [True, True])) and math.isnan(auc([], []))


def test_unlabelled_steps_and_missing_scores_are_left_out():
    signals = [signal("a", True, 1.0), signal("a", None, 9.0), signal("b", False, 0.0),
               signal("b", False, 2.0, skill_action=None)]
    assert score_auc(signals, lambda s: s.skill) == (0.5, 1, 2)
    assert score_auc(signals, lambda s: s.skill_action)[1:] == (0, 0)  # no action tokens anywhere


def test_interval_resamples_whole_episodes():
    perfect = [signal(f"e{i}", i % 2 == 0, 1.0 if i % 2 == 0 else -1.0) for i in range(10)]
    assert episode_interval(perfect, lambda s: s.skill, resamples=200) == (1.0, 1.0)
    # one episode holds every good step: resampling it out leaves one class, those draws are skipped
    mixed = [signal("g", True, 0.3, step=k) for k in range(3)] + [signal(f"b{i}", False, 0.1 * i) for i in range(6)]
    low, high = episode_interval(mixed, lambda s: s.skill, resamples=300)
    assert 0.0 <= low <= auc([s.skill for s in mixed], [bool(s.label) for s in mixed]) <= high <= 1.0
    assert all(math.isnan(v) for v in episode_interval([signal("x", True, 1), signal("x", False, 0)],
                                                       lambda s: s.skill))


def test_share_before_and_after_post_processing():
    signals = [signal("a", True, 0, abs_raw=0.2, abs_used=0.1, abs_outcome=2.0),
               signal("b", False, 0, abs_raw=0.3, abs_used=0.4, abs_outcome=3.0)]
    assert update_share(signals) == {"raw": pytest.approx(0.1), "used": pytest.approx(0.1)}
    assert math.isnan(update_share([signal("a", True, 0, abs_raw=1.0)])["raw"])


def test_step_signals_from_a_hand_built_batch():
    nan = float("nan")
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    episode = torch.tensor([[-0.5, -2.0, -2.0], [nan, nan, nan], [nan, nan, nan]])
    step = torch.tensor([[nan, nan, nan], [-2.0, -1.5, 0.0], [nan, nan, nan]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])  # row 2 is padding
    actions = torch.tensor([[0, 1, 1], [0, 0, 0], [0, 0, 0]])
    outcome = torch.tensor([[1.0], [-2.0], [0.0]])
    part = torch.tensor([[0.05, 0.0, 0.1], [-0.2, -0.1, 0.0], [0.0, 0.0, 0.0]])
    rows = [dict(trajectory_id="t0", step_index=0, label=True, routing="episode", success=True),
            dict(trajectory_id="t1", step_index=3, label=False, routing="step", success=False, rule="detour")]
    decisions = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    s0, s1 = step_signals(rows, {"episode": episode, "step": step}, old, mask, actions, outcome, part,
                          {"episode": 0.1, "step": 0.2}, decision_mask=decisions)
    assert (s0.decision_tokens, s0.skill_decision) == (1, pytest.approx(0.5))  # row 0's first delta
    assert (s1.decision_tokens, s1.skill_decision) == (0, None)
    # row 0: deltas (0.5, 0, 1) -> mean 0.5; action tokens (0, 1) -> 0.5
    assert (s0.skill, s0.skill_action, s0.tokens, s0.action_tokens) == (pytest.approx(0.5), pytest.approx(0.5), 3, 2)
    assert s0.outcome == 1.0 and s0.weighted == pytest.approx(0.05) and s0.opid == pytest.approx(1.05)
    assert s0.abs_weighted_raw == pytest.approx(0.15) and s0.abs_used == pytest.approx(0.15)
    assert s0.abs_outcome == pytest.approx(3.0)
    # row 1: deltas (-1, -0.5) on its 2 tokens -> mean -0.75; no action tokens
    assert s1.skill == pytest.approx(-0.75) and s1.skill_action is None and s1.rule == "detour"
    assert s1.abs_weighted_raw == pytest.approx(0.3) and s1.abs_outcome == pytest.approx(4.0)
    assert update_share([s0, s1]) == {"raw": pytest.approx(0.45 / 7), "used": pytest.approx(0.45 / 7)}


def test_action_tokens_are_the_last_occurrence_of_the_action():
    pieces = ["<think>", "go", " east", "</think>", "<action>", "go", " east", "</action>"]
    assert action_token_mask(pieces, "go east") == [False] * 5 + [True, True, False]
    assert action_token_mask(pieces, "Go East") == [False] * 5 + [True, True, False]
    assert action_token_mask(pieces, "take key") == [False] * 8 and action_token_mask(pieces, None) == [False] * 8
    # the decision: where the reasoning first names the action
    assert action_token_mask(pieces, "go east", first=True) == [False, True, True] + [False] * 5


def test_summary_slices_weights_and_table():
    signals = [signal("a", True, 0.4, outcome=1.0, success=True, rule="workflow"),
               signal("a", False, -0.2, outcome=1.0, success=True, rule="workflow", step=1),
               signal("b", True, 0.1, outcome=-1.0, routing="step", rule="detour"),
               signal("b", False, 0.3, outcome=-1.0, routing="step", rule="detour", step=1),
               signal("c", True, 0.0, routing="none")]
    report = summarize(signals, resamples=50, weights=[0.0, 10.0])
    slices = report["slices"]
    assert set(slices) == {"all", "routing=episode", "routing=step", "outcome=success", "outcome=failure",
                           "rule=detour", "rule=workflow"}
    assert slices["all"]["steps"] == 4 and slices["all"]["episodes"] == 2  # routing 'none' is not scored
    assert slices["routing=episode"]["skill"]["auc"] == 1.0 and slices["routing=step"]["skill"]["auc"] == 0.0
    # good skills {0.4, 0.1} vs bad {-0.2, 0.3}: 0.4 beats both, 0.1 beats -0.2 -> 3/4
    assert slices["all"]["skill"]["auc"] == pytest.approx(0.75)
    assert slices["all"]["outcome"]["auc"] == pytest.approx(0.5)
    assert report["opid_auc_by_weight"] == {"0": pytest.approx(0.5), "10": pytest.approx(0.75)}
    assert report["outcome_all_steps"]["good"] == 3 and report["labelled"] == 5
    table = markdown_table(report)
    assert "| all | 4 (2/2) | 2 | 0.75 [" in table and table.count("\n") == len(slices) + 1
    metrics = batch_metrics(signals)
    assert metrics["auc_skill"] == pytest.approx(0.75) and metrics["auc_skill/step"] == 0.0
    assert metrics["labelled_steps"] == 5 and metrics["good_frac"] == pytest.approx(0.6)
    assert opid_auc_by_weight(signals[:4], [1.0])["1"] == score_auc(signals[:4], lambda s: s.outcome + s.skill)[0]


def test_rule_of_a_routed_skill():
    skills = EpisodeSkills("ep", {2: "st"}, meta={"rules": {"episode": "success_workflow", "steps": {"2": "detour"}}})
    assert routed_rule(skills, RoutedSkill(episode_skill="ep"), 0) == "success_workflow"
    assert routed_rule(skills, RoutedSkill(step_skill="st"), 2) == "detour"
    assert routed_rule(EpisodeSkills("ep"), RoutedSkill(episode_skill="ep"), 0) is None
    assert routed_rule(None, RoutedSkill(), 0) is None


# ---------------------------------------------------------------------------- labelling rules
def test_default_rule_is_the_expert_action():
    env = FetchEnvironment()
    assert env.step_label("go east", "go east", True) is True
    assert env.step_label("go east", " Go  East", True) is True
    assert env.step_label("go east", "look", True) is False
    assert env.step_label("go east", "go east", False) is False  # ill-formed: bad whatever it says
    assert env.step_label(None, "go east", True) is None


def test_fetch_expert_walks_back_after_an_overshoot():
    env = FetchEnvironment()
    env.reset({"seed": 0, "num_rooms": 4, "room_items": ["cup", "key", "pen", "map"], "target_room": 1,
               "target": "key"})
    assert env.expert_action() == "go east"
    env.execute("go east")
    assert env.expert_action() == "take key"
    env.execute("go east")
    assert env.expert_action() == "go west" and env.step_label(env.expert_action(), "go east", True) is False


def test_webshop_rule_frees_the_query_wording():
    env = make("webshop")
    assert env.step_label("search[red shoes]", "search[crimson sneakers]", True) is True
    assert env.step_label("click[b0123]", "search[red shoes]", True) is False
    assert env.step_label("click[b0123]", "click[b0999]", True) is False
    assert env.step_label("click[buy now]", "click[buy now]", True) is True


def test_search_qa_rule_judges_answers_by_exact_match():
    env = SearchQAEnvironment()
    env.golden_answers = ["Paris"]
    assert env.step_label("<search>capital of france</search>", "<search>france capital city</search>", True)
    assert env.step_label("<search>q</search>", "<answer>paris</answer>", True) is True  # right, and early
    assert env.step_label("<answer>Paris</answer>", "<answer>Lyon</answer>", True) is False
    assert env.step_label("<answer>Paris</answer>", "<search>more</search>", True) is False
    assert env.step_label("<search>q</search>", "<search>q</search>", False) is False


# ---------------------------------------------------------------------------- in the trainer
class MixedBackend:
    """Walks to the target and takes it (read off the prompt), but answers 'look' on every third
    call: some steps are the expert's and some not, some episodes win and some run out of turns.
    Answers are real token ids of the tokenizer, well-formed."""

    thread_safe = False

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def session(self):
        return contextlib.nullcontext()

    def action(self, prompt: str) -> str:
        self.calls += 1
        if self.calls % 3 == 0:
            return "look"
        target = re.search(r"take the (\w+)\.", prompt).group(1)
        return f"take {target}" if f"'take {target}'" in prompt.split("admissible actions")[-1] else "go east"

    def sample(self, prompt_ids, max_new_tokens=None):
        out = []
        for ids in prompt_ids:
            answer = f"<think>x</think><action>{self.action(self.tokenizer.decode(ids))}</action>"
            out.append(Sample(self.tokenizer(answer, add_special_tokens=False)["input_ids"]
                              + [self.tokenizer.eos_token_id]))
        return out

    def generate(self, prompt_ids, max_new_tokens=None):
        return [s.token_ids for s in self.sample(prompt_ids)]


def extractor(trajectories):
    return [EpisodeSkills("Walk east until the target is here, then take it.", {1: "Go east."},
                          meta={"rules": {"episode": "workflow", "steps": {1: "hint"}}}) for _ in trajectories]


def replay_labels(task, actions):
    """Each step's label by replaying the actions against fetch's shortest-path expert."""
    env, labels = FetchEnvironment(), []
    env.reset(task)
    for action in actions:
        labels.append(action == env.expert_action())
        env.execute(action)
    return labels


def test_trainer_records_match_an_independent_replay(tiny_model_dir, tiny_tokenizer, tmp_path):
    tasks = [make_fetch_task(i, 3, 4) for i in range(4)]
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1, beta=0.0, max_completion_length=40, max_turns=4,
                                           skill_signal_diagnostics=True, heatmap_rows=64),
                          train_dataset=Dataset.from_list(tasks), skill_extractor=extractor,
                          generation_backend=MixedBackend(tiny_tokenizer),
                          callbacks=[MetricsJSONLCallback(tmp_path / "out")])
    trainer.train()
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "skill_signal" / "step-0-rank0.jsonl").read_text().splitlines()]
    audit = [json.loads(line) for line in (out / "analysis" / "analyses-rank0.jsonl").read_text().splitlines()]
    audit = [{"trajectory": {**a, "steps": a["steps"]}} for a in audit]
    heat = {(r["trajectory_id"], r["step_index"]): r
            for r in map(json.loads, (out / "heatmaps" / "step-0-rank0.jsonl").read_text().splitlines())}
    assert len(records) == sum(len(a["trajectory"]["steps"]) for a in audit) > 0
    by_id = {a["trajectory"]["trajectory_id"]: a["trajectory"] for a in audit}
    labels = {}
    for tid, trajectory in by_id.items():
        actions = [s["action"] for s in trajectory["steps"]]
        task = next(t for t in tasks if f"take the {t['target']}." == trajectory["task"])
        labels.update({(tid, k): v for k, v in enumerate(replay_labels(task, actions))})
    assert {True, False} <= set(labels.values()) and {True, False} <= {t["success"] for t in by_id.values()}
    for r in records:
        key = (r["trajectory_id"], r["step_index"])
        assert r["label"] == labels[key]
        assert r["routing"] == ("step" if r["step_index"] == 1 else "episode")
        assert r["rule"] == ("hint" if r["step_index"] == 1 else "workflow")
        deltas = [a - b for a, b in zip(heat[key]["l_skill"], heat[key]["l_old"])]
        assert r["skill"] == pytest.approx(sum(deltas) / len(deltas), abs=1e-5)
        assert r["weighted"] == pytest.approx(1e-3 * r["skill"], abs=1e-8)
        assert 0 < r["action_tokens"] < r["tokens"]
        assert r["decision_tokens"] == r["action_tokens"]  # '<think>x</think>' never names the action
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {k: v for m in metrics for k, v in m.items() if k.startswith("skill_signal/")}
    assert logged["skill_signal/labelled_steps"] == len(records)
    assert logged["skill_signal/good_frac"] == pytest.approx(sum(r["label"] for r in records) / len(records))
    for name in ("auc_skill", "auc_skill_action", "auc_skill_decision", "auc_outcome", "auc_opid", "share_raw",
                 "share"):
        assert 0.0 <= logged[f"skill_signal/{name}"] <= (1.0 if name.startswith("auc") else 1e-2)


def test_off_calls_no_expert_and_writes_nothing(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    def forbidden(self):
        raise AssertionError("the expert was asked with the diagnostic off")

    monkeypatch.setattr(FetchEnvironment, "expert_action", forbidden)
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1, beta=0.0),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(4)]), skill_extractor=extractor,
                          generation_backend=MixedBackend(tiny_tokenizer))
    trainer.train()
    assert trainer.skill_reports.signal is None and not (tmp_path / "out" / "skill_signal").exists()
    assert trainer._runner.record_expert is False


# ---------------------------------------------------------------------------- placebo control
def test_shuffled_skills_come_from_the_next_group():
    from opid_trl import StepRecord, Trajectory
    from opid_trl.skills.extractors import ShuffledSkillExtractor, make_skill_extractor

    def trajectory(tid, group, target, rooms):
        steps = [StepRecord(i, f"You are in room {i}.", "", "go east", True, 0.0) for i in range(rooms)]
        steps.append(StepRecord(rooms, f"You are in room {rooms}. You see a {target}.", "", f"take {target}", True,
                                10.0))
        return Trajectory(tid, group, f"take the {target}.", steps, 10.0, True)

    batch = [trajectory("a0", 0, "key", 1), trajectory("a1", 0, "key", 1), trajectory("b0", 1, "cup", 3)]
    own = make_skill_extractor("rule_based")(batch)
    placebo = make_skill_extractor("shuffled", inner="rule_based")
    assert isinstance(placebo, ShuffledSkillExtractor)
    shuffled = placebo(batch)
    # group 0 gets group 1's skills (the cup workflow), group 1 gets group 0's (the key workflow)
    assert shuffled[0].episode_skill == shuffled[1].episode_skill == own[2].episode_skill
    assert shuffled[2].episode_skill == own[0].episode_skill and "cup" not in shuffled[2].episode_skill
    # b0's decisive step (index 3) lands on a0's last step (index 1); a0's (index 1) stays at 1
    assert shuffled[0].step_skills == {1: own[2].step_skills[3]} and shuffled[2].step_skills == own[0].step_skills
    assert shuffled[0].meta["rules"] == {"episode": "shuffled:success_workflow", "steps": {1: "shuffled:decisive"}}
    assert placebo([batch[0], batch[1]]) == [None, None]  # one group: nothing to swap with
    with pytest.raises(ValueError, match="inner"):
        make_skill_extractor("shuffled", inner="shuffled")


def test_scrambled_skills_keep_their_episode_and_form_with_every_action_swapped():
    import random

    from opid_trl import StepRecord, Trajectory
    from opid_trl.skills.extractors import ScrambledSkillExtractor, make_skill_extractor
    from opid_trl.skills.extractors.scrambled import derangement, rewrite

    # the rewrite: longest names first, in one pass (a replaced action is not replaced again)
    mapping = {"go east": "look", "look": "take key", "take key": "go east"}
    assert rewrite("go east (3 times) -> take key; 'look' here", mapping) == "look (3 times) -> go east; 'take key' here"
    assert rewrite("take keys", {"take key": "go east", "take keys": "look"}) == "look"
    assert rewrite(None, mapping) is None and rewrite("go east", {}) == "go east"
    for seed in range(20):
        perm = derangement(["a", "b", "c", "d"], random.Random(seed))
        assert sorted(perm.values()) == ["a", "b", "c", "d"] and all(k != v for k, v in perm.items())
    assert derangement(["a"], random.Random(0)) == {}

    def trajectory(tid, group, target, rooms):
        steps = [StepRecord(i, f"You are in room {i}.", "", "go east", True, 0.0) for i in range(rooms)]
        steps.append(StepRecord(rooms, f"You are in room {rooms}. You see a {target}.", "", f"take {target}", True,
                                10.0))
        return Trajectory(tid, group, f"take the {target}.", steps, 10.0, True)

    batch = [trajectory("a0", 0, "key", 2), trajectory("b0", 1, "cup", 3)]
    own = make_skill_extractor("rule_based")(batch)
    placebo = make_skill_extractor("scrambled", inner="rule_based", seed=3)
    assert isinstance(placebo, ScrambledSkillExtractor)
    scrambled = placebo(batch)
    played = ["go east", "take cup", "take key"]
    for mine, theirs in zip(own, scrambled):
        # the same skill with the actions swapped: the task words stay, no action keeps its place
        assert theirs.episode_skill != mine.episode_skill and "take the" in theirs.episode_skill
        assert len(theirs.episode_skill.split(" -> ")) == len(mine.episode_skill.split(" -> "))
        assert theirs.step_skills.keys() == mine.step_skills.keys()
        assert theirs.meta["rules"]["episode"] == "scrambled:success_workflow"
        for index, text in mine.step_skills.items():
            named = [a for a in played if f"'{a}'" in text]
            assert named and all(f"'{a}'" not in theirs.step_skills[index] for a in named)
    with pytest.raises(ValueError, match="inner"):
        make_skill_extractor("scrambled", inner="shuffled")
