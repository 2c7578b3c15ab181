"""Skill scoring: which rows each pass re-scores, with which prompt, and where the scores land."""

import math

import torch

from opid_trl.algorithms.routing import RoutedSkill
from opid_trl.skills.scoring import plan_skill_passes, score_skills

EP, STEP = RoutedSkill(episode_skill="E"), RoutedSkill(step_skill="S")


def test_each_kind_scores_only_its_rows_padded_to_the_largest_process():
    routed = [EP, STEP, RoutedSkill(), EP]
    passes = plan_skill_passes(routed, {"episode": 1.0, "step": 1.0}, global_max=lambda n: max(n, 3))
    assert [(p.kind, p.rows, p.num_real) for p in passes] == [("episode", [0, 3, 0], 2), ("step", [1, 1, 1], 1)]


def test_zero_weight_or_nothing_routed_skips_the_pass():
    assert plan_skill_passes([EP, EP], {"episode": 0.0, "step": 1.0}, global_max=lambda n: n) == []
    assert [p.kind for p in plan_skill_passes([STEP], {"episode": 1.0, "step": 1.0}, lambda n: n)] == ["step"]


def test_scores_land_on_their_rows_and_others_stay_nan():
    routed = [EP, RoutedSkill(), STEP]
    rendered, scored = [], []

    def render(i, episode_skill, step_skill):
        rendered.append((i, episode_skill, step_skill))
        return f"prompt {i} {episode_skill} {step_skill}"

    def tokenize(prompts):
        return [[len(p)] * (3 if "S" in p else 1) for p in prompts]

    def score_rows(ids, rows, num_real):
        scored.append((rows, num_real))
        return torch.tensor([[float(-r), float(-r) - 0.5] for r in rows])

    passes = plan_skill_passes(routed, {"episode": 1.0, "step": 1.0}, lambda n: n)
    scores = score_skills(passes, routed, render, tokenize, score_rows, (3, 2), max_prompt_length=2)
    assert rendered == [(0, "E", None), (2, None, "S")]  # each row rendered with its own skill only
    assert scored == [([0], 1), ([2], 1)]
    assert scores.logps["episode"][0].tolist() == [0.0, -0.5]
    assert all(math.isnan(v) for v in scores.logps["episode"][1:].flatten().tolist())
    assert scores.logps["step"][2].tolist() == [-2.0, -2.5]
    assert scores.rows_scored == {"episode": 1, "step": 1}
    assert scores.over_budget == {"episode": 0, "step": 1}  # 3 tokens > budget 2: scored whole, counted
    assert scores.scored_rows == [0, 2]
