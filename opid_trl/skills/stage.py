"""The skill stage as one object: wait for the skill extractor -> route -> score -> complete A_OPID.

`SkillStage` holds everything the stage needs that does not change between batches (the skill
extraction with its routing, the skill weights, clip and normalization, how the trainer scores
prompts); a batch hands it a `SkillRows`, which says how the batch's rows map to trajectory steps
and how a row's prompt is rendered with a skill. Two builders make a `SkillRows`
(:mod:`opid_trl.skills.rows`): one for step rows of multi-turn episodes, one for single-turn
completions, so the stage itself does not know which path it serves.

A_skill is completed in exactly one function, `SkillStage.complete`: right after scoring when the
old policy's log-probs are already known (engine scoring, or an explicit old-policy pass), else in
the loss step, whose own forward gives them (the batch then carries the pending
``*_skill_per_token_logps`` keys).

Shapes: B rows, T completion tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from opid_trl.algorithms.advantages import opid_advantages
from opid_trl.algorithms.routing import RoutedSkill
from opid_trl.generation.base import ScoringBackend, prefill_count
from opid_trl.skills.extraction import ExtractionResult, SkillExtraction
from opid_trl.skills.scoring import (
    SKILL_LOGPS_KEYS,
    RenderSkillPrompt,
    ScoreRows,
    SkillScores,
    TokenizePrompts,
    engine_old_logps,
    engine_score_rows,
    plan_skill_passes,
    score_skills,
)
from opid_trl.trajectory import Trajectory

#: (prompt ids of some rows, completion ids (n, T), completion mask (n, T)) -> the old policy's
#: log-probs (n, T) of those completions after those prompts, on the trainer.
ScorePrompts = Callable[[list[list[int]], torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EngineRows:
    """What scoring on the rollout engine needs of a batch (`skill_logprob_backend="vllm"`)."""

    #: Per row: the original prompt's token ids, and the sampled completion's.
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    #: (B, T) the sampler's log-probs (NaN where none), or None.
    sampling_logps: torch.Tensor | None
    #: Whether those log-probs are on the untempered scale the engine scores on (then they are l_old).
    logprobs_are_plain: bool


@dataclass
class ScoringUnits:
    """What the stage scores instead of whole rows when a row holds several steps (the assistant
    turns of a TRL agent rollout, :mod:`opid_trl.skills.conversation`): units of one kind of skill
    each, scored after their own contexts, and the way back to the rows' layout."""

    #: Per unit: its skill (one kind).
    routed: list[RoutedSkill]
    #: (unit, episode skill, step skill) -> the unit's context token ids with the skill injected.
    render: Callable[[int, str | None, str | None], list[int]]
    #: (U, T_u) the sampled tokens each unit scores, and where they count.
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    #: The units' `SkillScores` -> the rows' (B, T), NaN where no unit scored.
    to_rows: Callable[[SkillScores], SkillScores]


@dataclass
class SkillRows:
    """How the skill stage sees one batch's rows."""

    #: The routing of every trajectory (per step) -> the routing of every batch row.
    routing: Callable[[list[list[RoutedSkill]]], list[RoutedSkill]]
    #: (row, episode skill, step skill) -> that row's prompt with the skill(s) injected.
    render: RenderSkillPrompt
    #: Rendered prompts -> prompt token ids.
    tokenize: TokenizePrompts
    #: Row -> what a report shows of it (trajectory id, step, return, success, task type).
    describe: Callable[[int], dict[str, Any]]
    #: Row -> its expert label for the skill-signal diagnostic (None: no label / padding row).
    label: Callable[[int], dict[str, Any] | None] | None = None
    #: Set to score on the rollout engine instead of the trainer.
    engine: EngineRows | None = None
    #: Set when rows are scored in units: the routing of every trajectory -> the units to score.
    units: Callable[[list[list[RoutedSkill]]], ScoringUnits] | None = None


@dataclass
class ScoredSkills:
    """One batch after the stage: the skills, their routing, their scores and what it cost."""

    result: ExtractionResult
    routed: list[RoutedSkill]
    scores: SkillScores
    #: (B, T) the old policy's log-probs when known at scoring time (else the loss step gives them).
    old_logps: torch.Tensor | None
    #: Seconds the step waited for the skill extractor after its own passes (0: fully overlapped).
    wait_seconds: float
    #: Seconds spent routing and scoring.
    scoring_seconds: float
    #: (B, T) A_ep as it was before the skill term (what reports show as the outcome advantage).
    outcome: torch.Tensor | None = None
    #: (B, T) the weighted skill term added, once A_OPID is complete (None: the loss step completes it).
    skill_part: torch.Tensor | None = None


class SkillStage:
    """Skills for a batch, from the trajectories to the completed per-token advantage.

    Args:
        extraction: the skill extractor with its routing (`SkillExtraction`).
        coefs: skill weight per kind, ``{"episode": lambda_ep, "step": lambda_step}``.
        clip, normalize: `OPIDConfig.skill_adv_clip` and `skill_adv_normalize`.
        max_prompt_length: the prompt budget (skill prompts over it are counted, never cut).
        score_prompts: the old policy's log-probs on the trainer (`ScorePrompts`).
        scoring_backend: the rollout engine, for rows that carry `EngineRows`.
        global_max_count: a count's maximum over all processes (every rank runs as many passes).
        all_reduce_sum: a tensor's sum over all processes (batch z-normalization).
    """

    def __init__(self, extraction: SkillExtraction, coefs: Mapping[str, float], clip: float | None,
                 normalize: bool, max_prompt_length: int, score_prompts: ScorePrompts,
                 scoring_backend: ScoringBackend | None, global_max_count: Callable[[int], int],
                 all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.extraction = extraction
        self.coefs = dict(coefs)
        self.clip = clip
        self.normalize = normalize
        self.max_prompt_length = max_prompt_length
        self.score_prompts = score_prompts
        self.scoring_backend = scoring_backend
        self.global_max_count = global_max_count
        self.all_reduce_sum = all_reduce_sum

    def submit(self, trajectories: list[Trajectory]) -> Future[ExtractionResult]:
        """Start the skill extractor on a batch's trajectories (in the background when it allows)."""
        return self.extraction.submit(trajectories)

    def add(self, batch: dict[str, Any], extraction: Future[ExtractionResult], trajectories: list[Trajectory],
            rows: SkillRows, global_step: int) -> ScoredSkills:
        """The stage on one batch: score (`score`), leave l_skill pending in ``batch``, and complete
        A_OPID right away when the old policy's log-probs are already known (`complete`); else the
        loss step completes it from its own forward."""
        scored = self.score(batch, extraction, trajectories, rows, global_step)
        scored.outcome = batch["advantages"]
        pend_scores(batch, scored.scores)
        if scored.old_logps is not None:
            scored.skill_part = self.complete(batch, scored.old_logps)
        return scored

    def score(self, batch: Mapping[str, torch.Tensor], extraction: Future[ExtractionResult],
              trajectories: list[Trajectory], rows: SkillRows, global_step: int) -> ScoredSkills:
        """Wait for the skills, route them to rows, and score every routed row's sampled tokens
        under its skill prompt (l_skill, NaN on rows not re-scored); l_old too when scoring on the
        engine (on its own scale, so engine-vs-trainer differences cancel in the shift)."""
        wait_start = time.perf_counter()
        result = extraction.result()
        waited = time.perf_counter() - wait_start
        start = time.perf_counter()
        per_trajectory = self.extraction.route(global_step, trajectories, result)
        routed = rows.routing(per_trajectory)
        completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]
        engine_cost_before = prefill_count(self.scoring_backend)
        if rows.units is not None:
            scores = self._score_units(rows.units(per_trajectory), completion_ids.size(1))
        else:
            passes = plan_skill_passes(routed, self.coefs, self.global_max_count)
            scores = score_skills(passes, routed, rows.render, rows.tokenize,
                                  self._score_rows(rows, completion_ids, completion_mask),
                                  tuple(completion_ids.shape), self.max_prompt_length)
        old_logps = batch.get("old_per_token_logps")
        if rows.engine is not None:
            engine = rows.engine
            old_logps = engine_old_logps(self.scoring_backend, engine.prompt_ids, engine.completion_ids,
                                         engine.sampling_logps if engine.logprobs_are_plain else None,
                                         scores.scored_rows, tuple(completion_ids.shape), completion_ids.device)
            scores.engine_prefill = prefill_count(self.scoring_backend).since(engine_cost_before)
        return ScoredSkills(result, routed, scores, old_logps, waited, time.perf_counter() - start)

    def _score_units(self, units: ScoringUnits, completion_width: int) -> SkillScores:
        """Score units on the trainer (their contexts are token ids already) and return the rows'
        scores. A unit's context holds earlier turns, so its budget is the prompt's and the completion's."""
        passes = plan_skill_passes(units.routed, self.coefs, self.global_max_count)
        ids, mask = units.completion_ids, units.completion_mask
        scores = score_skills(passes, units.routed, units.render, lambda contexts: [list(c) for c in contexts],
                              lambda contexts, chosen, _real: self.score_prompts(contexts, ids[chosen], mask[chosen]),
                              tuple(ids.shape), self.max_prompt_length + completion_width)
        return units.to_rows(scores)

    def _score_rows(self, rows: SkillRows, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> ScoreRows:
        """`ScoreRows` on the engine when the batch says so, else on the trainer."""
        if rows.engine is not None:
            return engine_score_rows(self.scoring_backend, rows.engine.completion_ids, completion_ids.size(1),
                                     completion_ids.device)
        return lambda ids, chosen, _real: self.score_prompts(ids, completion_ids[chosen], completion_mask[chosen])

    def complete(self, batch: dict[str, Any], old_logps: torch.Tensor) -> torch.Tensor | None:
        """A_OPID in place: ``batch["advantages"]`` (B, T) becomes A_ep + lambda * A_skill, from the
        pending l_skill keys of ``batch`` (removed) and ``old_logps`` (B, T). Returns the weighted
        skill part added, or None when the batch holds no pending scores."""
        skill_logps = {kind: batch.pop(key) for kind, key in SKILL_LOGPS_KEYS.items() if key in batch}
        if not skill_logps:
            return None
        batch["advantages"], skill_part = opid_advantages(
            batch["advantages"], skill_logps, old_logps, batch["completion_mask"], self.coefs,
            clip=self.clip, normalize=self.normalize, all_reduce_sum=self.all_reduce_sum)
        return skill_part


def pend_scores(batch: dict[str, Any], scores: SkillScores) -> None:
    """Put a batch's l_skill under the keys `SkillStage.complete` reads (the loss step completes
    them when the old policy's log-probs are not known yet)."""
    for kind, logps in scores.logps.items():
        batch[SKILL_LOGPS_KEYS[kind]] = logps
