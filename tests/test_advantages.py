"""The advantage math against hand-computed numbers."""

import math

import pytest
import torch

from opid_trl import episode_step_advantages, outcome_advantages, skill_advantage
from opid_trl.algorithms.advantages import opid_advantages


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
    # values 0.5, -1.0: mean -0.25, biased std 0.75 (as the reference) -> +-1
    approx(skill_advantage(SKILL, OLD, MASK, normalize=True)[0].tolist(), [1.0, -1.0, 0.0])


def test_skill_advantage_normalizes_before_clipping():
    # the reference's order: z-scores +-1 first, then the clip at 0.6 applies to them. (Clipping
    # first would give 0.5, -0.6, whose z-scores are +-1 again, left unbounded by the clip.)
    approx(skill_advantage(SKILL, OLD, MASK, clip=0.6, normalize=True)[0].tolist(), [0.6, -0.6, 0.0])


def test_skill_advantage_normalize_uses_reduced_statistics():
    # here 0.5 and -1.0; another process holds 2.0 and 2.5 (sum 4.5, squares 10.25, 2 tokens). Over all
    # four: mean 1.0, biased variance 11.5 / 4 - 1 = 1.875, std 1.369306 -> (0.5 - 1) / std, (-1 - 1) / std.
    # (Local statistics alone would give +-1: the reduction must be used.)
    other = torch.tensor([4.5, 10.25, 2.0], dtype=torch.float64)
    got = skill_advantage(SKILL, OLD, MASK, normalize=True, all_reduce_sum=lambda t: t + other)[0].tolist()
    approx(got, [-0.5 / 1.369306, -2.0 / 1.369306, 0.0])


def test_skill_advantage_constant_values_are_only_centred():
    # every scored token shifts by the same 0.5: std 0 < 1e-6, so (A - mean) = 0, never a division by ~0
    skill = OLD + 0.5
    approx(skill_advantage(skill, OLD, MASK, normalize=True)[0].tolist(), [0.0, 0.0, 0.0])


def test_skill_advantage_masks_non_finite_values():
    skill = torch.tensor([[float("nan"), -2.0, float("-inf")]])
    approx(skill_advantage(skill, OLD, torch.tensor([[1, 1, 1]]))[0].tolist(), [0.0, -1.0, 0.0])


def test_skill_advantage_single_token_normalize_is_centred_to_zero():
    approx(skill_advantage(SKILL, OLD, torch.tensor([[1, 0, 0]]), normalize=True)[0].tolist(), [0.0, 0.0, 0.0])


def test_failed_reset_episode_is_left_out_of_the_group():
    # Episode 2 never started (no step): its 0 must not lower the group mean. Over [10, 0]:
    # mean 5, unbiased std 5*sqrt(2) -> +-1/sqrt(2); with the 0 counted it would be (1.155, -0.577).
    got = episode_step_advantages([10, 0, 0], [0, 0, 0], [[False], [False], []], 0.1, "mean_std_norm", "trajectory")
    approx(got[0], [0.70711])
    approx(got[1], [-0.70711])
    assert got[2] == []


def test_batch_std_norm_uses_the_batch_std():
    # groups {1, 3} and {5, 9}: means 2 and 7; batch std of [1, 3, 5, 9] = sqrt(35/3) = 3.4157
    got = outcome_advantages([1, 3, 5, 9], [0, 0, 1, 1], "batch_std_norm").tolist()
    approx(got, [-1 / 3.41565, 1 / 3.41565, -2 / 3.41565, 2 / 3.41565])


def test_opid_advantage_adds_each_kind_with_its_weight():
    # Row 0 episode-routed, row 1 step-routed, row 2 routed to nothing; 2 tokens each, the last
    # token of row 1 is padding. A_OPID = A_ep + lambda_k * (l_skill - l_old) on the routed tokens.
    nan = float("nan")
    old = torch.tensor([[-1.0, -2.0], [-1.0, -1.0], [-3.0, -3.0]])
    episode = torch.tensor([[-0.5, -2.5], [nan, nan], [nan, nan]])
    step = torch.tensor([[nan, nan], [-0.25, 9.0], [nan, nan]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    total, skill = opid_advantages(torch.tensor([1.0, -1.0, 0.5]), {"episode": episode, "step": step}, old, mask,
                                   {"episode": 0.1, "step": 2.0})
    assert torch.allclose(skill, torch.tensor([[0.05, -0.05], [1.5, 0.0], [0.0, 0.0]]))
    assert torch.allclose(total, torch.tensor([[1.05, 0.95], [0.5, -1.0], [0.5, 0.5]]))


def test_opid_advantage_additive_row_gets_both_shifts():
    old = torch.tensor([[-1.0]])
    total, _ = opid_advantages(torch.tensor([0.0]), {"episode": torch.tensor([[-0.5]]), "step": torch.tensor([[0.0]])},
                               old, torch.ones(1, 1), {"episode": 1.0, "step": 1.0})
    assert total.item() == pytest.approx(0.5 + 1.0)
