"""Per-batch metrics of OPID (episodes, skills, sampler gap), summed over every process.

Rows differ in number across processes, so every statistic is built from global sums (or
maxima) rather than averaged per process; each call is a collective that every rank makes.
Values are appended to TRL's ``_metrics[mode]`` lists, which the Trainer averages and logs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import gather_object

from opid_trl.algorithms.routing import RoutedSkill
from opid_trl.distributed import global_max, global_sum

if TYPE_CHECKING:
    from accelerate import Accelerator

    from opid_trl.rollout.episode import Episode
    from opid_trl.rollout.runner import EpisodeRunner
    from opid_trl.rollout.step_rows import StepBatch, StepRows
    from opid_trl.skills.scoring import SkillScores


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


class BatchMetrics:
    """Appends OPID's metrics to a Trainer's ``_metrics`` (``{mode: {name: [values]}}``)."""

    def __init__(self, accelerator: Accelerator, metrics: dict[str, Any]) -> None:
        self.accelerator = accelerator
        self.metrics = metrics

    def log(self, mode: str, name: str, value: float) -> None:
        self.metrics[mode][name].append(float(value))

    @contextlib.contextmanager
    def timed(self, mode: str, name: str) -> Iterator[None]:
        """Log the wall time of the block as ``name`` (e.g. ``time/rollout``), as verl's timers do."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.log(mode, name, time.perf_counter() - start)

    def step_batch(self, mode: str, step: StepBatch, episodes: Sequence[Episode], runner: EpisodeRunner,
                   masked_rows: int) -> None:
        """Everything a step batch reports once the loss inputs are final: outcome groups, the
        sampler-vs-trainer gap (when the importance correction ran), episodes, masked rows."""
        played = step.outcomes.played
        self.outcome_groups(mode, [p[0] for p in played], [p[1] for p in played], [p[2] for p in played])
        batch = step.batch
        if step.sampling_logps is not None and "importance_sampling_ratio" in batch:
            self.sampler_gap(mode, batch["old_per_token_logps"], step.sampling_logps, batch["completion_mask"])
        self.log(mode, "numerics/masked_rows", global_sum(self.accelerator, [masked_rows])[0])
        self.episodes(mode, episodes, step.rows.num_real, runner)

    def sampler_gap(self, mode: str, trainer_logps: torch.Tensor, sampler_logps: torch.Tensor,
                    mask: torch.Tensor) -> None:
        """How far the sampler's log-probs are from the trainer's (mean and max |diff| over tokens)."""
        valid = mask.bool() & ~torch.isnan(sampler_logps)
        gap = (trainer_logps - sampler_logps)[valid].abs().double()
        total, count = global_sum(self.accelerator, [gap.sum().item(), gap.numel()])
        self.log(mode, "sampling/logp_gap_mean", total / count if count else 0.0)
        self.log(mode, "sampling/logp_gap_max", global_max(self.accelerator, gap))

    def episodes(self, mode: str, episodes: Sequence[Episode], num_rows: int, runner: EpisodeRunner) -> None:
        """Success, length, invalid actions, returns and environment faults of a batch's episodes."""
        steps = [s for ep in episodes for s in ep.steps]
        totals = global_sum(self.accelerator, [
            len(episodes), sum(ep.won for ep in episodes), len(steps), sum(not s.action_valid for s in steps),
            sum(ep.env_return for ep in episodes), sum(ep.env_return**2 for ep in episodes), num_rows,
            runner.env_errors, runner.prompt_overflows, runner.token_cuts,
        ])
        n_ep, n_won, n_steps, n_invalid, r_sum, r_sq, n_rows, n_err, n_overflow, n_token_cuts = totals
        mean_r = r_sum / max(n_ep, 1)
        self.log(mode, "env/success_rate", n_won / max(n_ep, 1))
        self.log(mode, "env/episode_length", n_steps / max(n_ep, 1))
        self.log(mode, "env/invalid_action_rate", n_invalid / max(n_steps, 1))
        self.log(mode, "env/rows", n_rows)
        self.log(mode, "env/errors", n_err)
        self.log(mode, "env/prompt_overflow", n_overflow)
        self.log(mode, "env/prompt_token_cut", n_token_cuts)
        self.log(mode, "reward", mean_r)
        self.log(mode, "reward_std", math.sqrt(max(r_sq / max(n_ep, 1) - mean_r**2, 0.0)))
        per_type = gather_object([(ep.task_type or "all", float(ep.won)) for ep in episodes])
        for task_type in sorted({t for t, _ in per_type}):
            self.log(mode, f"env/success_rate/{task_type}", _mean([w for t, w in per_type if t == task_type]))

    def skill_passes(self, mode: str, scores: SkillScores) -> None:
        """Rows re-scored per kind of skill, and how many skill prompts exceeded the prompt budget."""
        for kind in sorted(scores.logps):
            scored, over = global_sum(self.accelerator, [scores.rows_scored[kind], scores.over_budget[kind]])
            self.log(mode, f"skill/{kind}_rows_scored", scored)
            self.log(mode, f"skill/{kind}_prompt_over_budget", over)
        if scores.engine_prefill is not None:  # scored on the rollout engine: what its prefix cache saved
            cost = scores.engine_prefill
            rows, tokens, computed, rescored = global_sum(self.accelerator, [cost.rows, cost.tokens, cost.computed,
                                                                             cost.rescored])
            self.log(mode, "skill/engine_prefill_tokens_per_row", computed / rows if rows else 0.0)
            self.log(mode, "skill/engine_prefix_cached_frac", 1.0 - computed / tokens if tokens else 0.0)
            self.log(mode, "skill/engine_rescored_rows", rescored)

    def routing(self, mode: str, routed: Sequence[RoutedSkill], failures: int, num_trajectories: int) -> float:
        """Routing shares and analysis failures; returns the failure rate over every process."""
        kinds = [r.kind for r in routed]
        n_step, n_ep, n_rows, n_fail, n_traj = global_sum(self.accelerator, [
            sum(k in ("step", "both") for k in kinds), sum(k in ("episode", "both") for k in kinds), len(kinds),
            failures, num_trajectories,
        ])
        self.log(mode, "skill/routed_step_frac", n_step / n_rows if n_rows else 0.0)
        self.log(mode, "skill/routed_episode_frac", n_ep / n_rows if n_rows else 0.0)
        self.log(mode, "skill/analysis_failures", n_fail)
        self.log(mode, "skill/analysis_failure_rate", n_fail / n_traj if n_traj else 0.0)
        return n_fail / n_traj if n_traj else 0.0

    def outcome_groups(self, mode: str, group_ids: Sequence[int], step_advantages: Sequence[Sequence[float]],
                       returns: Sequence[float]) -> None:
        """How often a group gives GRPO nothing to learn from.

        ``outcome/uniform_return_group_frac``: groups whose episodes all have the same return (all
        won or all lost); ``outcome/zero_adv_group_frac``: groups whose outcome advantage is zero on
        every step (uniform returns and, with ``invalid_action_penalty``, the same number of
        ill-formed answers). GRPO has no gradient on the latter; under OPID the skill advantage is
        the only signal there. The arguments cover the episodes of every process (already gathered).
        """
        signal: dict[int, bool] = {}
        group_returns: dict[int, set[float]] = {}
        for group, advantages, episode_return in zip(group_ids, step_advantages, returns):
            signal[group] = signal.get(group, False) or any(a != 0.0 for a in advantages)
            group_returns.setdefault(group, set()).add(episode_return)
        count = len(signal)
        self.log(mode, "outcome/zero_adv_group_frac", sum(not s for s in signal.values()) / count if count else 0.0)
        self.log(mode, "outcome/uniform_return_group_frac",
                 sum(len(r) == 1 for r in group_returns.values()) / count if count else 0.0)

    def skill_advantage(self, mode: str, skill_part: torch.Tensor, outcome: torch.Tensor, mask: torch.Tensor) -> None:
        """The weighted skill advantage over the response tokens: mean, std, largest magnitude, its
        size against the outcome advantage, and how often it is the only signal of a row.

        ``skill/adv_to_outcome_ratio``: sum of |lambda A_skill| over sum of |A_ep| (tokens);
        ``skill/zero_outcome_rows``: rows whose A_ep is 0; ``skill/zero_outcome_rows_with_signal``:
        the share of those whose skill part is not 0 (the rows OPID learns from and GRPO does not).
        """
        tokens = mask.bool()
        values = skill_part[tokens].double()
        outcome = outcome.expand_as(skill_part)
        row_has_tokens = tokens.any(dim=1)
        zero_outcome = row_has_tokens & ~((outcome != 0) & tokens).any(dim=1)
        with_signal = zero_outcome & ((skill_part != 0) & tokens).any(dim=1)
        total, total_sq, count, abs_skill, abs_outcome, n_zero, n_signal = global_sum(self.accelerator, [
            values.sum().item(), (values**2).sum().item(), values.numel(), values.abs().sum().item(),
            outcome[tokens].double().abs().sum().item(), zero_outcome.sum().item(), with_signal.sum().item(),
        ])
        abs_max = global_max(self.accelerator, values.abs())
        mean = total / count if count else 0.0
        self.log(mode, "skill/adv_mean", mean)
        self.log(mode, "skill/adv_std", math.sqrt(max(total_sq / count - mean**2, 0.0)) if count else 0.0)
        self.log(mode, "skill/adv_abs_max", abs_max)
        self.log(mode, "skill/adv_to_outcome_ratio", abs_skill / abs_outcome if abs_outcome else 0.0)
        self.log(mode, "skill/zero_outcome_rows", n_zero)
        self.log(mode, "skill/zero_outcome_rows_with_signal", n_signal / n_zero if n_zero else 0.0)


def log_step_completions(logs: dict[str, Any], reward_name: str, tokenizer: Any, episodes: Sequence[Episode],
                         rows: StepRows, step_advantages: Sequence[Sequence[float]]) -> None:
    """Feed GRPO's completion table (TRL's ``_logs``) one line per step sample, from every process."""
    logs["prompt"].extend(gather_object([tokenizer.decode(episodes[e].prompt_ids[t]) for e, t in rows.locations]))
    logs["completion"].extend(gather_object([episodes[e].steps[t].response for e, t in rows.locations]))
    logs["rewards"][reward_name].extend(gather_object([episodes[e].env_return for e, _ in rows.locations]))
    logs["advantages"].extend(gather_object([step_advantages[e][t] for e, t in rows.locations]))
