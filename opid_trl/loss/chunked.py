"""GRPO's loss back-propagated chunk by chunk, with the exact gradient of the unchunked loss.

Multi-turn episodes give a variable number of rows per micro-step, so memory must not grow with
it. The loss is first computed by GRPO's own code on per-token log-probs and entropies from a
no-grad chunked pass, held as leaf tensors; its gradient with respect to them gives a weight per
token. Each chunk is then re-run with grad and back-propagated with those weights (a surrogate
``sum(logp * dL/dlogp) + sum(entropy * dL/dentropy)`` whose gradient is the loss's). All chunks but
the last are back-propagated without gradient synchronisation; the last one's surrogate is
returned to the Trainer, which back-propagates it and syncs. Every process runs the same number of
forward and backward passes (ZeRO-3 needs it).

Shapes: R rows in the micro-step, T completion tokens, chunks of C rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from opid_trl.loss.inputs import PENDING_SAMPLER_KEY
from opid_trl.loss.random_state import RandomState
from opid_trl.skills.scoring import SKILL_LOGPS_KEYS

#: Batch keys TRL's `_compute_loss` reads that the chunked path knows how to split by rows (a batch
#: holding any other key goes through GRPO's loss unchunked).
SPLITTABLE_KEYS = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "num_items_in_batch",
                   "old_per_token_logps", "old_per_token_entropies", "ref_per_token_logps", "sampling_per_token_logps",
                   "importance_sampling_ratio", "tool_mask", "opid_row_index", PENDING_SAMPLER_KEY,
                   *SKILL_LOGPS_KEYS.values()}

#: ``forward(rows, with_entropy) -> (log-probs (C, T), entropies (C, T) or None)`` of the policy on
#: the rows of a slice, with grad when grad is enabled.
ChunkForward = Callable[[slice, bool], tuple[torch.Tensor, torch.Tensor | None]]


def no_grad_chunks(forward: ChunkForward, rows: int, chunk: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[RandomState]]:
    """Log-probs and entropies (R, T) of every row without grad, ``chunk`` rows per forward, and
    the random state before each chunk (replayed by `backward_chunks`: the same dropout masks)."""
    parts, states = [], []
    with torch.no_grad():
        for start in range(0, rows, chunk):
            states.append(RandomState.capture(device))
            parts.append(forward(slice(start, start + chunk), True))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), states


def loss_weights(loss: torch.Tensor, logps_leaf: torch.Tensor,
                 entropies_leaf: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """d loss / d log-prob and d loss / d entropy per token, (R, T) each (None where unused)."""
    grads = torch.autograd.grad(loss, [logps_leaf, entropies_leaf], allow_unused=True)
    return grads[0], grads[1]


def backward_chunks(forward: ChunkForward, rows: int, chunk: int,
                    weights: tuple[torch.Tensor | None, torch.Tensor | None],
                    backward_without_sync: Callable[[torch.Tensor], None],
                    rng_states: list[RandomState]) -> torch.Tensor:
    """Re-run each chunk with grad and back-propagate its surrogate with ``weights``.

    All chunks but the last go through ``backward_without_sync`` here; the last chunk's surrogate
    is returned for the Trainer to back-propagate. ``rng_states[i]`` (when given) is restored
    before chunk i, so that dropout draws the masks of the pass the weights came from.
    """
    grad_logps, grad_entropies = weights
    last = None
    for index, start in enumerate(range(0, rows, chunk)):
        part = slice(start, start + chunk)
        if rng_states:
            rng_states[index].restore()
        chunk_logps, chunk_entropies = forward(part, grad_entropies is not None)
        surrogate = (chunk_logps * grad_logps[part]).sum() if grad_logps is not None else chunk_logps.sum() * 0
        if grad_entropies is not None:
            surrogate = surrogate + (chunk_entropies * grad_entropies[part]).sum()
        if start + chunk < rows:
            backward_without_sync(surrogate)
        else:
            last = surrogate
    return last


def with_loss_value(last_surrogate: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """The last chunk's gradient with the full loss's value (what the Trainer logs)."""
    return last_surrogate + (loss.detach() - last_surrogate.detach())


def chunked_loss(forward: ChunkForward, rows: int, chunk: int, device: torch.device,
                 precomputed: tuple[torch.Tensor, torch.Tensor] | None,
                 loss_on: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 backward_without_sync: Callable[[torch.Tensor], None],
                 on_old_logps: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """The chunked loss of a micro-step of ``rows`` rows, ``chunk`` per forward.

    ``precomputed``: the batch's (log-probs, entropies) of the policy as it is now (the old
    policy's when aligned, without dropout), which then stand for the no-grad pass. ``loss_on(logps,
    entropies)``: GRPO's loss on per-token leaf tensors (R, T). ``on_old_logps``: called with the
    no-grad log-probs before the loss (the skill advantage is completed from them). Returns the
    tensor for the Trainer to back-propagate: the last chunk's gradient, the full loss's value.
    """
    rng_states: list[RandomState] = []
    if precomputed is not None:
        logps, entropies = precomputed
    else:
        logps, entropies, rng_states = no_grad_chunks(forward, rows, chunk, device)
    if on_old_logps is not None:
        on_old_logps(logps)
    logps_leaf, entropies_leaf = logps.detach().requires_grad_(True), entropies.detach().requires_grad_(True)
    loss = loss_on(logps_leaf, entropies_leaf)
    last = backward_chunks(forward, rows, chunk, loss_weights(loss, logps_leaf, entropies_leaf),
                           backward_without_sync, rng_states)
    return with_loss_value(last, loss)


def check_finite(loss: torch.Tensor, reduce_sum: Callable[[torch.Tensor], torch.Tensor], global_step: int,
                 output_dir: str) -> torch.Tensor:
    """``loss``, or a FloatingPointError before any weight or checkpoint is touched when it is not
    finite on any process (``reduce_sum`` agrees across processes: every rank stops at the same step)."""
    bad = torch.tensor(float(not torch.isfinite(loss.detach()).all()), device=loss.device)
    if reduce_sum(bad).item() > 0:
        raise FloatingPointError(
            f"non-finite loss at global step {global_step}: training stopped before the optimizer step, so the "
            f"weights and the last checkpoint in {output_dir!r} are intact. Lower learning_rate, check the "
            "environment rewards, or resume from the last checkpoint.")
    return loss


def backward_without_sync(loss: torch.Tensor, model: torch.nn.Module, accelerator: Any, deepspeed: bool) -> None:
    """Back-propagate ``loss`` (already scaled for gradient accumulation) without an optimizer step
    or a gradient sync: DeepSpeed is told this is not an accumulation boundary, DDP runs under
    ``no_sync``. The Trainer's own backward of the last chunk then syncs."""
    if deepspeed:
        engine = accelerator.deepspeed_engine_wrapped.engine
        engine.set_gradient_accumulation_boundary(is_boundary=False)
        engine.backward(loss, scale_wrt_gas=False)
    else:
        with accelerator.no_sync(model):
            accelerator.backward(loss)
