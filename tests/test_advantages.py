"""The advantage math against hand-computed numbers."""

import math

import pytest
import torch

from opid_trl import episode_step_advantages, outcome_advantages, skill_advantage


def approx(values, expected, tol=1e-4):
    assert len(values) == len(expected)
    for v, e in zip(values, expected):
        assert v == pytest.approx(e, abs=tol)


def test_mean_std_norm_one_group():
    # mean 2.5; unbiased std sqrt((7.5^2 + 3 * 2.5^2) / 3) = 5
    approx(outcome_advantages([10, 0, 0, 0], [0, 0, 0, 0]).tolist(), [1.5, -0.5, -0.5, -0.5])


def test_mean_norm_one_group():
    approx(outcome_advantages([10, 0, 0, 0], [0, 0, 0, 0], "mean_norm").tolist(), [7.5, -2.5, -2.5, -2.5])


def test_groups_are_independent_and_zero_std_gives_zero():
    # group 0: mean 2, std sqrt(2) -> -/+ 1/sqrt(2); group 1: identical scores -> 0
    got = outcome_advantages([1, 3, 5, 5], [0, 0, 1, 1]).tolist()
    approx(got, [-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0])


def test_singleton_group_has_no_baseline():
    approx(outcome_advantages([3.0, 1.0, 2.0], [7, 8, 8]).tolist(), [0.0, -0.70710, 0.70710])
    approx(outcome_advantages([3.0], [0], "mean_norm").tolist(), [0.0])


def test_trajectory_grouping_with_penalty():
    # scores: 10 - 0.1 = 9.9 and 0; mean 4.95; std 4.95*sqrt(2); advantage +-1/sqrt(2) on every step
    got = episode_step_advantages([10, 0], [0, 0], [[False, True], [False]], 0.1, "mean_std_norm", "trajectory")
    approx(got[0], [0.70711, 0.70711])
    approx(got[1], [-0.70711])


def test_step_grouping_with_penalty():
    # step scores 10, 9.9, 0: mean 6.6333, unbiased std sqrt(66.00667 / 2) = 5.74485
    got = episode_step_advantages([10, 0], [0, 0], [[False, True], [False]], 0.1, "mean_std_norm", "step")
    approx(got[0], [3.36667 / 5.74485, 3.26667 / 5.74485])
    approx(got[1], [-6.63333 / 5.74485])


def test_step_grouping_mean_norm_weights_long_episodes():
    # 3 step samples of reward 1 and one of reward 0: mean 0.75
    got = episode_step_advantages([1, 0], [0, 0], [[False] * 3, [False]], 0.0, "mean_norm", "step")
    approx(got[0], [0.25, 0.25, 0.25])
    approx(got[1], [-0.75])


def test_unknown_modes_raise():
    with pytest.raises(ValueError, match="outcome norm"):
        outcome_advantages([1, 2], [0, 0], "z")
    with pytest.raises(ValueError, match="grouping"):
        episode_step_advantages([1], [0], [[False]], 0.1, "mean_norm", "episode")


SKILL = torch.tensor([[-1.0, -2.0, -3.0]])
OLD = torch.tensor([[-1.5, -1.0, -3.0]])
MASK = torch.tensor([[1, 1, 0]])


def test_skill_advantage_is_masked_shift():
    approx(skill_advantage(SKILL, OLD, MASK)[0].tolist(), [0.5, -1.0, 0.0])


def test_skill_advantage_clip():
    approx(skill_advantage(SKILL, OLD, MASK, clip=0.6)[0].tolist(), [0.5, -0.6, 0.0])


def test_skill_advantage_normalize():
    # values 0.5, -1.0: mean -0.25, unbiased std sqrt(1.125) = 1.06066
    approx(skill_advantage(SKILL, OLD, MASK, normalize=True)[0].tolist(), [0.70711, -0.70711, 0.0])


def test_skill_advantage_normalize_uses_reduced_statistics():
    # another process holds the same two values: the statistics double but the z-scores are those of 4 values
    got = skill_advantage(SKILL, OLD, MASK, normalize=True, all_reduce_sum=lambda t: 2 * t)[0].tolist()
    std = math.sqrt((2 * 0.75**2 * 2) / 3)
    approx(got, [0.75 / std, -0.75 / std, 0.0])


def test_skill_advantage_masks_non_finite_values():
    skill = torch.tensor([[float("nan"), -2.0, float("-inf")]])
    approx(skill_advantage(skill, OLD, torch.tensor([[1, 1, 1]]))[0].tolist(), [0.0, -1.0, 0.0])


def test_skill_advantage_single_token_normalize_is_zero():
    approx(skill_advantage(SKILL, OLD, torch.tensor([[1, 0, 0]]), normalize=True)[0].tolist(), [0.0, 0.0, 0.0])
