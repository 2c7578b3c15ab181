"""The sampler-vs-trainer importance ratio on step rows, against hand-computed values."""

import math

import pytest
import torch

from opid_trl.algorithms.importance_sampling import vllm_importance_ratio

TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, float("nan")], [-1.0, -3.0, -1.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_token_truncate():
    ratio = vllm_importance_ratio(TRAINER, SAMPLER, MASK, "token_truncate", None, 2.0)
    # exp(0.5), exp(-1), NaN sampler -> 1; exp(0), exp(2) capped at 2, masked -> 1
    expected = torch.tensor([[math.exp(0.5), math.exp(-1.0), 1.0], [1.0, 2.0, 1.0]])
    assert torch.allclose(ratio, expected)


def test_token_mask_zeroes_out_of_range():
    ratio = vllm_importance_ratio(TRAINER, SAMPLER, MASK, "token_mask", 0.5, 2.0)
    expected = torch.tensor([[math.exp(0.5), 0.0, 1.0], [1.0, 0.0, 1.0]])  # exp(-1) < 0.5, exp(2) > 2
    assert torch.allclose(ratio, expected)


def test_sequence_modes_use_the_summed_log_ratio():
    truncated = vllm_importance_ratio(TRAINER, SAMPLER, MASK, "sequence_truncate", None, 10.0)
    assert truncated.shape == (2, 1)
    assert truncated[0, 0].item() == pytest.approx(math.exp(-0.5))  # 0.5 - 1 + 0
    assert truncated[1, 0].item() == pytest.approx(math.exp(2.0))
    masked = vllm_importance_ratio(TRAINER, SAMPLER, MASK, "sequence_mask", None, 5.0)
    assert masked[1, 0].item() == 0.0 and masked[0, 0].item() == pytest.approx(math.exp(-0.5))


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode"):
        vllm_importance_ratio(TRAINER, SAMPLER, MASK, "token", None, None)
