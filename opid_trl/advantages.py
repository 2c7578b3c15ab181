"""The two advantages OPID adds together: the group-normalized outcome and the skill log-prob shift.

Pure tensor functions, so that the math can be tested against hand-computed numbers and reused
outside the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

EPS = 1e-6


def _group_stats(scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element group mean, unbiased std and group size."""
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = unique.numel()
    counts = torch.zeros(num_groups, dtype=scores.dtype).index_add_(0, inverse, torch.ones_like(scores))
    sums = torch.zeros(num_groups, dtype=scores.dtype).index_add_(0, inverse, scores)
    means = sums / counts
    squares = torch.zeros(num_groups, dtype=scores.dtype).index_add_(0, inverse, (scores - means[inverse]) ** 2)
    stds = torch.sqrt(squares / (counts - 1).clamp(min=1))
    return means[inverse], stds[inverse], counts[inverse]


def outcome_advantages(
    outcomes: Sequence[float] | torch.Tensor,
    group_ids: Sequence[int] | torch.Tensor,
    norm: str = "mean_std_norm",
    eps: float = EPS,
) -> torch.Tensor:
    """GRPO advantages of samples grouped by ``group_ids``.

    ``norm='mean_std_norm'``: (R - mean) / (std + eps), unbiased std as in the reference;
    ``norm='mean_norm'``: R - mean. A group of one sample has no baseline and gets advantage 0.
    """
    scores = torch.as_tensor(outcomes, dtype=torch.float64)
    groups = torch.as_tensor(group_ids, dtype=torch.long)
    if scores.numel() == 0:
        return scores.float()
    means, stds, counts = _group_stats(scores, groups)
    advantages = scores - means
    if norm == "mean_std_norm":
        advantages = advantages / (stds + eps)
    elif norm != "mean_norm":
        raise ValueError(f"unknown outcome norm {norm!r}")
    return torch.where(counts > 1, advantages, torch.zeros_like(advantages)).float()


def episode_step_advantages(
    episode_outcomes: Sequence[float],
    episode_groups: Sequence[int],
    step_invalid: Sequence[Sequence[bool]],
    invalid_action_penalty: float,
    norm: str = "mean_std_norm",
    grouping: str = "trajectory",
) -> list[list[float]]:
    """Outcome advantage of every step of every episode.

    ``episode_outcomes`` are the environment returns (without penalties); ``step_invalid[e][t]`` says
    whether step t of episode e was ill-formed.

    - ``grouping='trajectory'`` (the paper): each episode's score is its return minus the penalty
      times its number of invalid steps; statistics over the episodes of a group; every step of an
      episode gets the episode's advantage.
    - ``grouping='step'`` (the reference code): each step sample's score is its episode's return
      minus the penalty if that step was invalid; statistics over all step samples of the group,
      so longer episodes weigh more; each step gets its own advantage.
    """
    if grouping == "trajectory":
        scores = [r - invalid_action_penalty * sum(inv) for r, inv in zip(episode_outcomes, step_invalid)]
        per_episode = outcome_advantages(scores, episode_groups, norm).tolist()
        return [[adv] * len(inv) for adv, inv in zip(per_episode, step_invalid)]
    if grouping == "step":
        scores, groups = [], []
        for r, g, inv in zip(episode_outcomes, episode_groups, step_invalid):
            scores.extend(r - invalid_action_penalty * float(bad) for bad in inv)
            groups.extend([g] * len(inv))
        flat = outcome_advantages(scores, groups, norm).tolist()
        out, start = [], 0
        for inv in step_invalid:
            out.append(flat[start : start + len(inv)])
            start += len(inv)
        return out
    raise ValueError(f"unknown outcome grouping {grouping!r}")


def skill_advantage(
    skill_logps: torch.Tensor,
    old_logps: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = None,
    normalize: bool = False,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-token skill advantage ``(log pi(y|h+s) - log pi(y|h)) * mask``.

    ``mask`` (B, T) marks the scored tokens (response tokens of rows that have a skill).
    ``clip`` clips each value to [-clip, clip]; ``normalize`` z-normalizes over the masked tokens
    (after clipping) with statistics summed across processes by ``all_reduce_sum`` when given.
    """
    mask = mask.to(skill_logps.dtype)
    # A non-finite log-prob (a diverged forward, an empty prompt) carries no signal: zero it.
    delta = torch.nan_to_num((skill_logps - old_logps) * mask, nan=0.0, posinf=0.0, neginf=0.0)
    if clip is not None:
        delta = delta.clamp(-clip, clip)
    if normalize:
        stats = torch.stack([delta.sum(), (delta**2).sum(), mask.sum()]).double()
        if all_reduce_sum is not None:
            stats = all_reduce_sum(stats)
        total, total_sq, count = stats.tolist()
        if count > 1:
            mean = total / count
            var = max(total_sq / count - mean**2, 0.0) * count / (count - 1)
            delta = (delta - mean) / (var**0.5 + EPS)
        else:
            delta = torch.zeros_like(delta)
    return delta * mask
