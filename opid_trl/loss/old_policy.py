"""The no-grad passes GRPO's loss needs before the loss step, for a batch of step rows.

- the old policy's log-probs, when the loss step cannot stand in for them (the policy moved since
  sampling, skills scored on the trainer need them first, or vLLM's importance correction needs
  them next to the sampler's); when aligned, the entropies too, so the chunked loss reuses the pass;
- TRL's sampler-vs-trainer importance weights (`algorithms.importance_sampling`);
- the reference model's log-probs (the KL term, ``beta > 0``).

Shapes: B rows, T completion tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from opid_trl.algorithms.importance_sampling import vllm_importance_ratio
from opid_trl.reporting.batch_metrics import BatchMetrics

#: (prompt ids, prompt mask, completion ids, completion mask, with_entropy) -> log-probs (B, T), or
#: (log-probs, entropies) with ``with_entropy``; no grad.
LogpsFn = Callable[..., Any]


@dataclass(frozen=True)
class ImportanceCorrection:
    """TRL's `vllm_importance_sampling_*` settings."""

    mode: str
    clip_min: float | None
    clip_max: float | None


def policy_passes(mode: str, batch: dict[str, torch.Tensor], sampling_logps: torch.Tensor | None, *, aligned: bool,
                  skills_need_old: bool, logps: LogpsFn, reference_logps: LogpsFn | None,
                  correction: ImportanceCorrection | None, metrics: BatchMetrics) -> None:
    """Add to ``batch`` the old-policy log-probs (``old_per_token_logps``, and with ``aligned``
    ``old_per_token_entropies``), the importance weights (``importance_sampling_ratio``, with a
    ``correction``), the sampler's log-probs (``sampling_per_token_logps``, 0 where none) and the
    reference log-probs (``ref_per_token_logps``, with ``reference_logps``) that the loss step reads.
    ``sampling_logps``: (B, T) the sampler's log-probs, NaN where none, or None."""
    tokens = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    if not aligned or (correction is not None and sampling_logps is not None) or skills_need_old:
        with metrics.timed(mode, "time/old_policy"):
            if aligned:  # the chunked loss reuses this pass as its own no-grad pass
                batch["old_per_token_logps"], batch["old_per_token_entropies"] = logps(*tokens, with_entropy=True)
            else:
                batch["old_per_token_logps"] = logps(*tokens)
    if correction is not None:
        batch["importance_sampling_ratio"] = torch.ones_like(batch["completion_mask"], dtype=torch.float32)
        if sampling_logps is not None:
            old, mask = batch["old_per_token_logps"], batch["completion_mask"]
            metrics.sampler_gap(mode, old, sampling_logps, mask)
            batch["importance_sampling_ratio"] = vllm_importance_ratio(old, sampling_logps, mask, correction.mode,
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
