"""The sampler-vs-trainer importance-sampling correction of TRL's vLLM path, for step rows.

vLLM samples with kernels (and, on GPUs, precisions) that differ from the training forward, so
the tokens come from a slightly different distribution than the trainer's "old" policy. TRL
corrects with a truncated (or masked) importance ratio, per token or per sequence,
``exp(log pi_trainer - log pi_sampler)``, which its `_compute_loss` multiplies into the per-token
loss when `vllm_importance_sampling_correction` is on. TRL computes it inline in its single-turn
batch builder; OPID's step rows need the same quantity, computed here the same way.
"""

from __future__ import annotations

import math

import torch

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def vllm_importance_ratio(
    trainer_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> torch.Tensor:
    """Ratio of shape (B, T) for `token_*` modes, (B, 1) for `sequence_*` modes.

    Masked positions and tokens with no sampler log-prob (NaN) get a zero log difference (ratio 1).
    """
    if mode not in IS_MODES:
        raise ValueError(f"vllm_importance_sampling_mode: must be one of {IS_MODES}, got {mode!r}")
    diff = torch.nan_to_num((trainer_logps - sampler_logps) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    low = clip_min if clip_min is not None else -math.inf
    high = clip_max if clip_max is not None else math.inf
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
