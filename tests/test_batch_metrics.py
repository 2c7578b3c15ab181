"""The mechanism read-outs of a batch (where the skill advantage is the only signal), against
hand-computed values on a single process."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from accelerate import Accelerator

from opid_trl.reporting.batch_metrics import BatchMetrics


@pytest.fixture
def metrics():
    store = {"train": defaultdict(list)}
    return BatchMetrics(Accelerator(cpu=True), store), store["train"]


def test_zero_advantage_groups_are_counted(metrics):
    batch_metrics, logged = metrics
    # group 0: all won alike (zero), group 1: one won (signal), group 2: all lost (zero),
    # group 3: one episode, a signal on one step (the penalty of an ill-formed answer)
    batch_metrics.outcome_groups("train", [0, 0, 1, 1, 2, 2, 3],
                                 [[0.0, 0.0], [0.0], [0.7], [-0.7, -0.7], [0.0], [0.0, 0.0, 0.0], [0.0, 0.3]],
                                 [10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 10.0])
    assert logged["outcome/zero_adv_group_frac"] == [pytest.approx(2 / 4)]
    assert logged["outcome/uniform_return_group_frac"] == [pytest.approx(3 / 4)]  # groups 0, 2 and 3


def test_skill_signal_against_outcome(metrics):
    batch_metrics, logged = metrics
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # row 0: outcome 1.0 with skill; rows 1, 2: outcome 0, skill only on row 1; row 3: padding
    outcome = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    skill = torch.tensor([[0.002, -0.001, 0.5], [0.0, 0.003, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    batch_metrics.skill_advantage("train", skill, outcome, mask)
    # masked skill values: 0.002, -0.001, 0, 0.003, 0, 0 (the 0.5 is outside the mask)
    assert logged["skill/adv_abs_max"] == [pytest.approx(0.003)]
    assert logged["skill/adv_mean"] == [pytest.approx(0.004 / 6)]
    # |skill| sum 0.006 over |outcome| sum 2 (row 0's two tokens)
    assert logged["skill/adv_to_outcome_ratio"] == [pytest.approx(0.006 / 2.0)]
    assert logged["skill/zero_outcome_rows"] == [2.0]
    assert logged["skill/zero_outcome_rows_with_signal"] == [pytest.approx(0.5)]


def test_no_zero_outcome_rows_gives_zero_share(metrics):
    batch_metrics, logged = metrics
    mask = torch.ones(2, 2)
    batch_metrics.skill_advantage("train", torch.full((2, 2), 0.01), torch.tensor([[1.0], [-1.0]]), mask)
    assert logged["skill/zero_outcome_rows"] == [0.0]
    assert logged["skill/zero_outcome_rows_with_signal"] == [0.0]
