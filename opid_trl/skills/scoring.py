"""Skill scoring: the one forward pass OPID adds to GRPO.

For every row routed to a skill (:mod:`opid_trl.algorithms.routing`), the row's prompt is rendered again with
the skill injected (same template, same history window the policy saw) and the old policy scores
the row's *already sampled* tokens under it: ``l_skill``. Nothing is sampled and no gradient
flows. The skill advantage ``l_skill - l_old`` and the full A_OPID are computed from these scores
by :func:`opid_trl.algorithms.advantages.opid_advantages`, right away when ``l_old`` is known, or in the loss
step, whose own forward pass gives ``l_old`` for free when generation and optimization are aligned.

Each kind of skill (episode, step) is one pass over only the rows routed to it, so critical-first
routing costs one forward over the batch in all (two passes only on the rows 'additive' routing
scores twice). Every process scores the same number of rows per pass (the largest count, topped up
with masked repeats) so that all ranks run the same forward passes (ZeRO-3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from opid_trl.algorithms.routing import RoutedSkill
from opid_trl.generation.base import PrefillCount, ScoringBackend
from opid_trl.rollout.step_rows import ragged_rows

SKILL_KINDS = ("episode", "step")
#: Batch key holding each kind's ``l_skill`` when the loss step completes the advantage.
SKILL_LOGPS_KEYS = {"episode": "episode_skill_per_token_logps", "step": "step_skill_per_token_logps"}

#: (row, episode skill, step skill) -> that row's skill-augmented prompt (text or chat messages).
RenderSkillPrompt = Callable[[int, "str | None", "str | None"], Any]
#: Rendered prompts -> prompt token ids (chat template applied).
TokenizePrompts = Callable[[list[Any]], list[list[int]]]
#: (prompt ids of some rows, those rows, how many of them are real) -> log-probs of the rows'
#: sampled tokens after those prompts, (len(rows), T); padding rows' values are ignored.
ScoreRows = Callable[[list[list[int]], list[int], int], torch.Tensor]


@dataclass
class SkillPass:
    """The rows of this process re-scored under one kind of skill: real rows, then padding repeats."""

    kind: str
    rows: list[int]
    num_real: int

    @property
    def real_rows(self) -> list[int]:
        return self.rows[: self.num_real]


def skill_of(routed: RoutedSkill, kind: str) -> str | None:
    return routed.episode_skill if kind == "episode" else routed.step_skill


def plan_skill_passes(routed: Sequence[RoutedSkill], coefs: Mapping[str, float],
                      global_max: Callable[[int], int]) -> list[SkillPass]:
    """One pass per kind with a non-zero weight and, on some process, a row to score.

    ``global_max`` gives the largest of a count over all processes (identity on one process)."""
    passes = []
    for kind in SKILL_KINDS:
        selected = [i for i, r in enumerate(routed) if skill_of(r, kind) is not None]
        count = global_max(len(selected))
        if coefs.get(kind, 0.0) == 0 or count == 0:
            continue
        filler = selected[0] if selected else 0
        passes.append(SkillPass(kind, selected + [filler] * (count - len(selected)), len(selected)))
    return passes


@dataclass
class SkillScores:
    """``l_skill`` of every row, per kind of skill, and what it cost."""

    #: kind -> (B, T) log-probs under that kind's skill prompt; NaN on rows not re-scored.
    logps: dict[str, torch.Tensor] = field(default_factory=dict)
    #: kind -> real rows re-scored on this process.
    rows_scored: dict[str, int] = field(default_factory=dict)
    #: kind -> rows whose skill prompt is longer than `max_prompt_length` (scored whole anyway).
    over_budget: dict[str, int] = field(default_factory=dict)
    #: Every real row that has at least one skill score.
    scored_rows: list[int] = field(default_factory=list)
    #: What scoring on the rollout engine computed (None: scored on the trainer).
    engine_prefill: PrefillCount | None = None


def score_skills(passes: Sequence[SkillPass], routed: Sequence[RoutedSkill], render: RenderSkillPrompt,
                 tokenize: TokenizePrompts, score_rows: ScoreRows, shape: tuple[int, int],
                 max_prompt_length: int) -> SkillScores:
    """Run the planned passes: render each row's skill prompt, tokenize, score the sampled tokens.

    A skill prompt keeps the exact history window of the original prompt, so it may exceed the
    prompt budget by the skill's length; such rows are scored whole (never cut) and counted.
    """
    scores = SkillScores()
    seen: set[int] = set()
    for p in passes:
        prompts = [render(i, routed[i].episode_skill if p.kind == "episode" else None,
                          routed[i].step_skill if p.kind == "step" else None) for i in p.rows]
        prompt_ids = tokenize(prompts)
        logps = score_rows(prompt_ids, p.rows, p.num_real)
        full = torch.full(shape, float("nan"), dtype=torch.float32, device=logps.device)
        if p.num_real:
            index = torch.tensor(p.real_rows, dtype=torch.long, device=logps.device)
            full[index] = logps[: p.num_real].float()
        scores.logps[p.kind] = full
        scores.rows_scored[p.kind] = p.num_real
        scores.over_budget[p.kind] = sum(len(ids) > max_prompt_length for ids in prompt_ids[: p.num_real])
        seen.update(p.real_rows)
    scores.scored_rows = sorted(seen)
    return scores


def engine_score_rows(backend: ScoringBackend, completions: Sequence[Sequence[int]], width: int,
                      device: torch.device | str) -> ScoreRows:
    """`ScoreRows` on the rollout engine (`skill_logprob_backend="vllm"`): prompt log-probs of the
    rows' sampled tokens, computed by the engine that sampled them. Padding rows are not sent."""

    def score(prompt_ids: list[list[int]], rows: list[int], num_real: int) -> torch.Tensor:
        with backend.session():  # awake (sleep mode); the weights are those of the rollout
            values = backend.score(prompt_ids[:num_real], [completions[i] for i in rows[:num_real]])
        return ragged_rows(values, len(rows), width, 0.0, device)

    return score


def engine_old_logps(backend: ScoringBackend, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                     sampler_logps: torch.Tensor | None, rows: Sequence[int], shape: tuple[int, int],
                     device: torch.device | str) -> torch.Tensor:
    """l_old on the engine's own scale, so that engine-vs-trainer differences cancel in the shift.

    The sampler's log-probs are l_old when they are on the untempered scale the engine scores on
    (``sampler_logps`` given); otherwise the original prompts of ``rows`` are scored on the engine."""
    if sampler_logps is not None:
        return torch.nan_to_num(sampler_logps, nan=0.0)
    old = torch.zeros(shape, dtype=torch.float32, device=device)
    if rows:
        with backend.session():  # the engine generated these sequences whole: nothing to reuse
            values = backend.score([prompts[i] for i in rows], [completions[i] for i in rows], reuse_prefix=False)
        old[torch.tensor(list(rows), dtype=torch.long, device=device)] = ragged_rows(values, len(rows), shape[1],
                                                                                     0.0, device)
    return old
