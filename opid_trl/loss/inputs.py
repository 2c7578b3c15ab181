"""The no-grad passes GRPO's loss needs before the loss step, for a batch of step rows.

- the old policy's log-probs, when the loss step cannot stand in for them (the policy moved since
  sampling, skills scored on the trainer need them first, or vLLM's importance correction needs
  them next to the sampler's); when aligned, the entropies too, so the chunked loss reuses the pass;
- TRL's sampler-vs-trainer importance weights (`algorithms.importance_sampling`); when aligned they
  need no pass of their own: the loss forward's detached log-probs are the old policy's, so the
  weights are left pending (`PENDING_SAMPLER_KEY`) and completed in the loss step
  (`complete_importance_ratio`), as the skill advantage is;
- the reference model's log-probs (the KL term, ``beta > 0``);
- and, once the skill stage is done, the batch made safe for the loss (`finalize`): rows holding a
  non-finite value masked out, the token count of the whole generation batch.

Shapes: B rows, T completion tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from opid_trl.algorithms.importance_sampling import vllm_importance_ratio

logger = logging.getLogger(__name__)

#: (prompt ids, prompt mask, completion ids, completion mask, with_entropy) -> log-probs (B, T), or
#: (log-probs, entropies) with ``with_entropy``; no grad.
LogpsFn = Callable[..., Any]


#: Batch key holding the sampler's log-probs (NaN where none) while the importance weights wait for
#: the loss forward's l_old.
PENDING_SAMPLER_KEY = "pending_sampler_logps"


@dataclass(frozen=True)
class ImportanceCorrection:
    """TRL's `vllm_importance_sampling_*` settings."""

    mode: str
    clip_min: float | None
    clip_max: float | None


def complete_importance_ratio(batch: dict[str, torch.Tensor], old_logps: torch.Tensor,
                              correction: ImportanceCorrection | None,
                              report_gap: Callable[[torch.Tensor], None] | None = None) -> None:
    """``importance_sampling_ratio`` of a batch whose weights were left pending, from ``old_logps``
    (B, T), the loss forward's detached log-probs (the old policy's: aligned); ``report_gap(sampler
    log-probs)`` logs the sampler-vs-trainer gap there. No-op without pending weights."""
    sampler = batch.pop(PENDING_SAMPLER_KEY, None)
    if sampler is not None and report_gap is not None:
        report_gap(sampler)
    if sampler is not None and correction is not None:
        batch["importance_sampling_ratio"] = vllm_importance_ratio(
            old_logps.detach(), sampler, batch["completion_mask"], correction.mode, correction.clip_min,
            correction.clip_max)


def policy_passes(batch: dict[str, torch.Tensor], sampling_logps: torch.Tensor | None, *, aligned: bool,
                  skills_need_old: bool, logps: LogpsFn, reference_logps: LogpsFn | None,
                  correction: ImportanceCorrection | None, timed: Callable[[str], Any],
                  fuse_correction: bool = True) -> None:
    """Add to ``batch`` the old-policy log-probs (``old_per_token_logps``, and with ``aligned``
    ``old_per_token_entropies``), the importance weights (``importance_sampling_ratio``, with a
    ``correction``), the sampler's log-probs (``sampling_per_token_logps``, 0 where none) and the
    reference log-probs (``ref_per_token_logps``, with ``reference_logps``) that the loss step reads.
    ``sampling_logps``: (B, T) the sampler's log-probs, NaN where none, or None. ``timed(name)``: a
    context that logs the wall time of the old-policy pass. ``fuse_correction``: when aligned and
    nothing else needs l_old first, leave the importance weights to the loss step (no pass here)."""
    tokens = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    corrects = correction is not None and sampling_logps is not None
    fused = corrects and fuse_correction and aligned and not skills_need_old
    if not aligned or (corrects and not fused) or skills_need_old:
        with timed("time/old_policy"):
            if aligned:  # the chunked loss reuses this pass as its own no-grad pass
                batch["old_per_token_logps"], batch["old_per_token_entropies"] = logps(*tokens, with_entropy=True)
            else:
                batch["old_per_token_logps"] = logps(*tokens)
    if fused:
        batch[PENDING_SAMPLER_KEY] = sampling_logps
    elif correction is not None:
        batch["importance_sampling_ratio"] = torch.ones_like(batch["completion_mask"], dtype=torch.float32)
        if sampling_logps is not None:
            batch["importance_sampling_ratio"] = vllm_importance_ratio(
                batch["old_per_token_logps"], sampling_logps, batch["completion_mask"], correction.mode,
                correction.clip_min, correction.clip_max)
    if sampling_logps is not None:  # TRL's off-policy mask reads it; padding positions are masked
        batch["sampling_per_token_logps"] = torch.nan_to_num(sampling_logps, nan=0.0)
    if reference_logps is not None:
        batch["ref_per_token_logps"] = reference_logps(*tokens)


def old_logps_needed_first(args: Any, aligned: bool) -> bool:
    """Whether skills scored on the trainer need l_old before the loss step, i.e. when the loss step
    cannot give it: unaligned steps, batch z-normalization of A_skill (statistics over the whole
    generation batch, while a loss step sees one micro-batch), or the skill-signal diagnostic (it
    scores every row at once, after the rollout). Engine scoring brings its own l_old."""
    return args.skill_logprob_backend != "vllm" and (
        not aligned or args.skill_adv_normalize or args.skill_signal_diagnostics)


#: Per-token batch entries whose non-finite values would reach the loss.
_CHECKED_KEYS = ("advantages", "old_per_token_logps", "ref_per_token_logps", "importance_sampling_ratio")


def mask_nonfinite_rows(batch: dict[str, torch.Tensor]) -> int:
    """Mask out of the loss every row holding a NaN/inf on its sampled tokens (advantage, old or
    reference log-prob, importance weight); those entries are set to 0 so that no NaN reaches the
    optimizer even through a zero weight. Returns how many rows were masked."""
    mask = batch["completion_mask"].bool()
    bad = torch.zeros(mask.size(0), dtype=torch.bool, device=mask.device)
    for key in _CHECKED_KEYS:
        values = batch.get(key)
        if values is not None and values.dim() == 2:
            bad |= (~torch.isfinite(values) & mask).any(dim=1)
    if bad.any():
        batch["completion_mask"] = batch["completion_mask"] * (~bad).to(batch["completion_mask"].dtype).unsqueeze(1)
        for key in _CHECKED_KEYS:
            values = batch.get(key)
            if values is not None and values.dim() == 2:
                batch[key] = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return int(bad.sum())


def finalize(batch: dict[str, torch.Tensor], accelerator: Any) -> int:
    """The batch as the loss takes it: rows holding a non-finite value masked out
    (`mask_nonfinite_rows`, with a warning), and ``num_items_in_batch`` set (completion tokens over
    every process). Returns how many rows were masked here."""
    masked = mask_nonfinite_rows(batch)
    if masked:
        logger.warning("%d step rows hold non-finite advantages or log-probs; masked out of the loss", masked)
    batch["num_items_in_batch"] = accelerator.gather(batch["completion_mask"].sum()).sum()
    return masked
