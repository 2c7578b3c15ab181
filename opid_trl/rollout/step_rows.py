"""The step batch: episodes become one padded training row per environment step.

Every process must hand TRL the same number of rows, a multiple of the micro-steps of a generation
(`steps_per_generation`), because ZeRO-3 and DDP need every rank to run the same number of forward
and backward passes. Processes whose episodes produced fewer steps are topped up with padding rows
whose completion mask is zero: they cost compute, never signal.

The batch handed back to TRL is an :class:`OPIDBatch`, a typed view of the dictionary
`GRPOTrainer._compute_loss` reads, plus OPID's own per-token skill log-probs when the skill
advantage is completed in the loss step (see :mod:`opid_trl.skills.stage`). `build_step_batch` is the
one call that turns a rollout's episodes into that batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import torch
from accelerate.utils import gather_object
from trl.trainer.utils import pad

from opid_trl.algorithms.advantages import episode_step_advantages
from opid_trl.distributed import global_max_count
from opid_trl.rollout.episode import Episode

if TYPE_CHECKING:
    from accelerate import Accelerator


class OPIDBatch(TypedDict, total=False):
    """The batch `OPIDTrainer` returns to TRL. Shapes: B rows, P prompt tokens, T completion tokens."""

    prompt_ids: torch.Tensor  #: (B, P) left-padded
    prompt_mask: torch.Tensor  #: (B, P)
    completion_ids: torch.Tensor  #: (B, T) right-padded
    #: (B, T): 1 on the sampled tokens of real rows; 0 on padding tokens, padding rows and (with
    #: `mask_truncated_completions`) rows that never produced EOS.
    completion_mask: torch.Tensor
    #: (B, T) per-token advantage: A_ep, plus the weighted skill advantage once it is known.
    advantages: torch.Tensor
    #: Scalar: completion tokens of the whole generation batch over all processes (token-level losses).
    num_items_in_batch: torch.Tensor
    #: (B, T) log-probs of the policy that sampled the rows, when the loss step cannot stand in for it.
    old_per_token_logps: torch.Tensor
    #: (B, T) reference-model log-probs (the KL term, `beta > 0`).
    ref_per_token_logps: torch.Tensor
    #: (B, T) the sampler's own log-probs (vLLM), 0 where the engine gave none.
    sampling_per_token_logps: torch.Tensor
    #: (B, T) sampler-vs-trainer importance weights (vLLM importance-sampling correction).
    importance_sampling_ratio: torch.Tensor
    #: (B, T) log-probs of the sampled tokens under the episode-skill prompt, NaN on rows not
    #: re-scored; present only when the loss step completes the skill advantage.
    episode_skill_per_token_logps: torch.Tensor
    #: (B, T) the same under the step-skill prompt.
    step_skill_per_token_logps: torch.Tensor


@dataclass
class StepRows:
    """The token rows of a step batch, padding rows included (they come last)."""

    #: (episode index, step index) of every real row, in row order.
    locations: list[tuple[int, int]]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    #: Per real row: whether its episode failed (the environment raised, hung or answered garbage);
    #: such rows are kept for the shapes but masked out of the loss.
    excluded: list[bool] = field(default_factory=list)

    @property
    def num_real(self) -> int:
        return len(self.locations)

    @property
    def num_padding(self) -> int:
        return len(self.prompt_ids) - len(self.locations)

    def __len__(self) -> int:
        return len(self.prompt_ids)


def padded_row_count(max_rows_any_process: int, steps_per_generation: int) -> int:
    """Rows every process hands over: the largest count, rounded up to a multiple of the micro-steps
    (at least one row per micro-step)."""
    return max(steps_per_generation * math.ceil(max_rows_any_process / steps_per_generation), steps_per_generation)


def collect_step_rows(episodes: Sequence[Episode], row_count: int, pad_token_id: int) -> StepRows:
    """One row per step of every episode, in episode order, then padding rows up to ``row_count``.

    A padding row repeats the first real row's tokens (or a single pad token) so that it has the
    shape of a real sample; its completion mask is zeroed by :func:`row_tensors`.
    """
    locations = [(e, t) for e, episode in enumerate(episodes) for t in range(len(episode.steps))]
    if row_count < len(locations):
        raise ValueError(f"row_count {row_count} is below the {len(locations)} steps played")
    prompts = [episodes[e].prompt_ids[t] for e, t in locations]
    completions = [episodes[e].completion_ids[t] for e, t in locations]
    num_padding = row_count - len(locations)
    prompts += [prompts[0] if prompts else [pad_token_id]] * num_padding
    completions += [completions[0] if completions else [pad_token_id]] * num_padding
    return StepRows(locations, prompts, completions, [episodes[e].failed for e, _ in locations])


def pad_token_lists(sequences: Sequence[Sequence[int]], pad_token_id: int, side: str,
                    device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, mask), padded on ``side`` ('left' for prompts, 'right' for completions)."""
    tensors = [torch.tensor(list(ids), dtype=torch.long) for ids in sequences]
    ids = pad(tensors, padding_value=pad_token_id, padding_side=side).to(device)
    mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side=side).to(device)
    return ids, mask


def row_tensors(rows: StepRows, pad_token_id: int, device: torch.device | str,
                eos_token_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, ...]:
    """(prompt_ids, prompt_mask, completion_ids, completion_mask) of ``rows``.

    Padding rows and rows of failed episodes get a zero completion mask. With ``eos_token_ids``
    (TRL's `mask_truncated_completions`), rows whose completion does not end with EOS are masked too.
    """
    prompt_ids, prompt_mask = pad_token_lists(rows.prompt_ids, pad_token_id, "left", device)
    completion_ids, completion_mask = pad_token_lists(rows.completion_ids, pad_token_id, "right", device)
    excluded = rows.excluded or [False] * rows.num_real
    keep = [0.0 if bad else 1.0 for bad in excluded] + [0.0] * rows.num_padding
    if eos_token_ids is not None:
        eos = set(eos_token_ids)
        keep = [k if ids and ids[-1] in eos else 0.0 for k, ids in zip(keep, rows.completion_ids)]
    completion_mask = completion_mask * torch.tensor(keep, device=device).to(completion_mask.dtype).unsqueeze(1)
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def ragged_rows(values: Sequence[Sequence[float]], count: int, width: int, fill: float,
                device: torch.device | str) -> torch.Tensor:
    """Per-token values of ragged rows as a (count, width) float tensor, ``fill`` elsewhere."""
    out = torch.full((count, width), fill, dtype=torch.float32)
    for i, row in enumerate(values):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.float32)
    return out.to(device)


def per_row(values: Sequence[Sequence[float]], rows: StepRows, device: torch.device | str) -> torch.Tensor:
    """``values[e][t]`` of every real row, 0 on padding rows: a (B,) float tensor."""
    flat = [values[e][t] for e, t in rows.locations] + [0.0] * rows.num_padding
    return torch.tensor(flat, dtype=torch.float32, device=device)


@dataclass(frozen=True)
class OutcomeSettings:
    """How episode returns become A_ep (`OPIDConfig`'s fields of the same meaning)."""

    invalid_action_penalty: float
    #: `OPIDConfig.episode_outcome_norm`: the group statistics ('mean_std_norm', 'mean_norm', ...).
    norm: str
    #: `OPIDConfig.outcome_grouping`: 'trajectory' (the paper) or 'step' (the reference code).
    grouping: str


@dataclass
class EpisodeOutcomes:
    """A_ep of this process's episodes, and what the outcome metrics need of every process's."""

    #: A_ep of every step of this process's episodes, ``[episode][step]``.
    step_advantages: list[list[float]]
    #: Over the episodes of every process that played (not failed, at least one step):
    #: (group id, A_ep per step, return).
    played: list[tuple[int, list[float], float]]


def episode_outcomes(episodes: Sequence[Episode], accelerator: Accelerator, outcome: OutcomeSettings) -> EpisodeOutcomes:
    """A_ep of every step of this process's episodes, from groups that may span processes (every
    process's episodes are gathered, the statistics computed on all, this process's part kept)."""
    summaries = gather_object([(ep.group_id, ep.env_return, [not s.action_valid for s in ep.steps], ep.failed)
                               for ep in episodes])
    first = sum(gather_object([len(episodes)])[: accelerator.process_index])
    advantages = episode_step_advantages([s[1] for s in summaries], [s[0] for s in summaries],
                                         [s[2] for s in summaries], outcome.invalid_action_penalty, outcome.norm,
                                         outcome.grouping,
                                         failed=[s[3] for s in summaries])
    played = [(s[0], a, s[1]) for s, a in zip(summaries, advantages) if not s[3] and s[2]]
    return EpisodeOutcomes(advantages[first : first + len(episodes)], played)


@dataclass
class StepBatch:
    """A rollout's episodes as training rows: the typed batch and where each row came from."""

    batch: OPIDBatch
    rows: StepRows
    #: (B, T) the sampler's log-probs of every row's tokens (NaN where none), or None when any row
    #: of any process has none (agreed across processes, so every rank takes the same branch).
    sampling_logps: torch.Tensor | None
    #: A_ep of every step, and what the outcome metrics need (`episode_outcomes`).
    outcomes: EpisodeOutcomes


def build_step_batch(episodes: Sequence[Episode], outcome: OutcomeSettings, accelerator: Accelerator,
                     pad_token_id: int, steps_per_generation: int,
                     eos_token_ids: Sequence[int] | None = None) -> StepBatch:
    """One padded row per step of ``episodes``, the same number of rows on every process (a
    multiple of ``steps_per_generation``), with A_ep (`episode_outcomes`) on every token of its
    row. ``eos_token_ids``: mask rows that never produced EOS (TRL's `mask_truncated_completions`)."""
    outcomes = episode_outcomes(episodes, accelerator, outcome)
    step_advantages = outcomes.step_advantages
    device = accelerator.device
    steps = sum(len(ep.steps) for ep in episodes)
    rows = collect_step_rows(episodes, padded_row_count(global_max_count(accelerator, steps), steps_per_generation),
                             pad_token_id)
    prompt_ids, prompt_mask, completion_ids, completion_mask = row_tensors(rows, pad_token_id, device, eos_token_ids)
    advantages = per_row(step_advantages, rows, device)
    batch = OPIDBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                      completion_mask=completion_mask,
                      advantages=advantages.unsqueeze(1).expand_as(completion_mask).clone())
    local = [episodes[e].sampling_logps[t] for e, t in rows.locations]
    sampling_logps = None
    if all(gather_object([all(lp is not None for lp in local)])):
        sampling_logps = ragged_rows(local, len(rows), completion_ids.size(1), float("nan"), device)
    return StepBatch(batch, rows, sampling_logps, outcomes)
