"""OPID's advantage: the group-normalized outcome plus the weighted skill log-prob shift.

Pure tensor functions, so that the math can be tested against hand-computed numbers and reused
outside the trainer. The pieces, in the paper's notation:

- :func:`outcome_advantages` / :func:`episode_step_advantages`: A_ep(tau) = (R(tau) - mu_q) / (sigma_q + eps);
- :func:`skill_advantage`: A_skill = (l_skill - l_old) * mask, per token;
- :func:`opid_advantages`: A_OPID = A_ep + lambda_ep * A_skill (episode-routed) + lambda_step * A_skill (step-routed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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
    ``norm='batch_std_norm'``: (R - mean) / (std over all samples + eps), TRL's ``scale_rewards='batch'``;
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
    elif norm == "batch_std_norm":
        advantages = advantages / (scores.std() + eps if scores.numel() > 1 else 1.0)
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
    failed: Sequence[bool] | None = None,
) -> list[list[float]]:
    """Outcome advantage of every step of every episode.

    ``episode_outcomes`` are the environment returns (without penalties); ``step_invalid[e][t]`` says
    whether step t of episode e was ill-formed. An episode with no step (its reset failed) or
    marked in ``failed`` (its environment raised, hung or answered garbage) has no outcome: it is
    left out of its group's statistics and its steps get advantage 0 (the trainer also masks them
    out of the loss), so a crash can neither outscore nor drag down the siblings that played.

    - ``grouping='trajectory'`` (the paper): each episode's score is its return minus the penalty
      times its number of invalid steps; statistics over the episodes of a group; every step of an
      episode gets the episode's advantage.
    - ``grouping='step'`` (the reference code): each step sample's score is its episode's return
      minus the penalty if that step was invalid; statistics over all step samples of the group,
      so longer episodes weigh more; each step gets its own advantage.
    """
    failed = list(failed) if failed is not None else [False] * len(step_invalid)
    if grouping == "trajectory":
        played = [e for e, inv in enumerate(step_invalid) if len(inv) > 0 and not failed[e]]
        scores = [episode_outcomes[e] - invalid_action_penalty * sum(step_invalid[e]) for e in played]
        per_episode = dict(zip(played, outcome_advantages(scores, [episode_groups[e] for e in played], norm).tolist()))
        return [[per_episode.get(e, 0.0)] * len(inv) for e, inv in enumerate(step_invalid)]
    if grouping == "step":
        scores, groups = [], []
        for r, g, inv, bad_episode in zip(episode_outcomes, episode_groups, step_invalid, failed):
            if not bad_episode:
                scores.extend(r - invalid_action_penalty * float(bad) for bad in inv)
                groups.extend([g] * len(inv))
        flat = outcome_advantages(scores, groups, norm).tolist()
        out, start = [], 0
        for inv, bad_episode in zip(step_invalid, failed):
            if bad_episode:
                out.append([0.0] * len(inv))
                continue
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

    ``mask`` (B, T) marks the scored tokens (response tokens of rows that have this kind of skill).
    Post-processing in the reference's order: ``normalize`` first z-normalizes over the masked
    tokens of the whole batch (statistics summed across processes by ``all_reduce_sum`` when given;
    biased std; a spread below 1e-6 only centres), then ``clip`` clips each value to [-clip, clip].
    """
    mask = mask.to(skill_logps.dtype)
    # A non-finite log-prob (a diverged forward, an empty prompt) carries no signal: zero it.
    delta = torch.nan_to_num((skill_logps - old_logps) * mask, nan=0.0, posinf=0.0, neginf=0.0)
    if normalize:
        stats = torch.stack([delta.sum(), (delta**2).sum(), mask.sum()]).double()
        if all_reduce_sum is not None:
            stats = all_reduce_sum(stats)
        total, total_sq, count = stats.tolist()
        if count > 0:
            mean = total / count
            std = max(total_sq / count - mean**2, 0.0) ** 0.5
            delta = (delta - mean) / (std + EPS) if std > EPS else delta - mean
    if clip is not None:
        delta = delta.clamp(-clip, clip)
    return delta * mask


def opid_advantages(
    outcome: torch.Tensor,
    skill_logps: Mapping[str, torch.Tensor],
    old_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    coefs: Mapping[str, float],
    clip: float | None = None,
    normalize: bool = False,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The per-token OPID advantage of a batch of rows, and its skill part.

    .. math::
        A_{OPID} = A_{ep} + \lambda_{ep} A_{skill}^{ep} + \lambda_{step} A_{skill}^{step},
        \qquad A_{skill}^{k} = \log\pi_{old}(y_l \mid H(h_t, s^k_t), y_{<l}) - \log\pi_{old}(y_l \mid h_t, y_{<l})

    ``outcome`` is A_ep per row (B,) or per token (B, T). ``skill_logps[k]`` (B, T) is l_skill under
    skill kind k ('episode' or 'step'), NaN on rows that were not routed to it; ``old_logps`` (B, T)
    is l_old; ``coefs[k]`` is lambda_k. A row routed to no skill keeps A_ep; with critical-first
    routing each row has at most one kind, with 'additive' routing a critical row has both.
    ``clip`` / ``normalize`` are applied to each kind's A_skill as in :func:`skill_advantage`.
    Returns (A_OPID, the weighted skill part), each (B, T).
    """
    if outcome.dim() == 1:
        outcome = outcome.unsqueeze(1)
    skill_part = torch.zeros_like(completion_mask, dtype=torch.float32)
    for kind, logps in skill_logps.items():
        scored = completion_mask.bool() & ~torch.isnan(logps)
        delta = skill_advantage(torch.nan_to_num(logps, nan=0.0), old_logps, scored, clip, normalize, all_reduce_sum)
        skill_part = skill_part + coefs[kind] * delta.float()
    return outcome.float() + skill_part, skill_part
