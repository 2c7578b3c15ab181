"""Does the skill signal carry information? Its ranking of good steps above bad ones, against an expert.

OPID's skill advantage is only worth its forward pass if it tells good actions from bad ones. An
environment with an expert (``expert_action()``: fetch's shortest path, ALFWorld's planner, the
WebShop and search-QA oracles) labels every played step good or bad by its own documented rule
(`environments.base.AgentEnvironment.step_label`); this module scores the signals of those steps:

- **AUC** of a per-step score for good above bad steps: the probability that a random good step
  scores higher than a random bad one (ties count one half). 0.5 is no information, 1.0 a perfect
  ranking, below 0.5 the signal points the wrong way. Scores: A_skill (the raw log-prob shift
  l_skill - l_old: the mean over the response tokens; over the action's tokens, its last
  occurrence, the ``<action>`` block; and over its *decision* tokens, its first occurrence, where a
  think-then-act answer names the action in its reasoning and the action block then copies it),
  A_ep (the outcome advantage) and A_OPID (A_ep + the skill part the run actually adds).
- **Intervals** that resample whole episodes (steps of one episode are not independent).
- **The skill share of the update**: sum |lambda A_skill| / sum |A_ep| over the response tokens,
  before (``raw``) and after (``used``) the clip and normalization the run applies.

Everything here is a pure function of :class:`StepSignal` records, so the same code serves the
trainer's per-batch ``skill_signal/*`` metrics, a run-level report and the unit tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class StepSignal:
    """The skill signal of one played step (one training row), with the expert's verdict on it."""

    trajectory_id: str
    step_index: int
    #: good (True), bad (False), or unlabelled (None: the expert had no answer at that state)
    label: bool | None
    #: the routing of the row: 'episode', 'step', 'both' (additive) or 'none' (no skill)
    routing: str
    #: the episode's outcome (the environment's success verdict)
    success: bool
    #: the extractor's name for the rule that wrote the routed skill (its ``meta["rules"]``), if any
    rule: str | None
    task_type: str | None
    #: response tokens, and how many of them spell the action
    tokens: int
    action_tokens: int
    #: A_ep of the row (the same on every token)
    outcome: float
    #: mean over the response tokens of A_skill = sum over the routed kinds of (l_skill - l_old)
    skill: float
    #: the same over the action tokens (None when the action could not be located in the response)
    skill_action: float | None
    #: mean over the response tokens of the skill part the run adds (lambda, clip, normalization)
    weighted: float
    #: sums over the response tokens of |sum_k lambda_k A_skill^k| (before clip/normalization),
    #: of |the skill part used| and of |A_ep|: the skill share of the update
    abs_weighted_raw: float
    abs_used: float
    abs_outcome: float
    #: tokens of the action's first occurrence in the response (the decision), and A_skill's mean
    #: over them (None when the action could not be located)
    decision_tokens: int = 0
    skill_decision: float | None = None

    @property
    def opid(self) -> float:
        """Mean A_OPID over the response tokens."""
        return self.outcome + self.weighted

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: The per-step scores the AUC is computed for (name -> how to read it off a record).
SCORES: dict[str, Callable[[StepSignal], float | None]] = {
    "skill": lambda s: s.skill,
    "skill_action": lambda s: s.skill_action,
    "skill_decision": lambda s: s.skill_decision,
    "outcome": lambda s: s.outcome,
    "opid": lambda s: s.opid,
}


# ---------------------------------------------------------------------------- estimators
def auc(scores: Sequence[float], labels: Sequence[bool], weights: Sequence[float] | None = None) -> float:
    """P(score of a good step > score of a bad step) + P(tie) / 2, with optional sample weights.

    ``labels[i]`` is True for a good step. NaN when either class is empty. The Mann-Whitney
    statistic computed by sorting: for every distinct score, the good weight at it times the bad
    weight below it (plus half the bad weight at it).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    good_total, bad_total = w[y].sum(), w[~y].sum()
    if s.size == 0 or good_total <= 0 or bad_total <= 0:
        return float("nan")
    values, inverse = np.unique(s, return_inverse=True)
    good = np.bincount(inverse, weights=w * y, minlength=values.size)
    bad = np.bincount(inverse, weights=w * ~y, minlength=values.size)
    bad_below = np.cumsum(bad) - bad
    return float((good * (bad_below + 0.5 * bad)).sum() / (good_total * bad_total))


def _labelled(signals: Iterable[StepSignal], score: Callable[[StepSignal], float | None]) -> list[StepSignal]:
    return [s for s in signals if s.label is not None and score(s) is not None and math.isfinite(score(s))]


def score_auc(signals: Sequence[StepSignal], score: Callable[[StepSignal], float | None]) -> tuple[float, int, int]:
    """AUC of ``score`` over the labelled steps of ``signals``, and the good and bad step counts."""
    kept = _labelled(signals, score)
    labels = [bool(s.label) for s in kept]
    return auc([score(s) for s in kept], labels), sum(labels), len(labels) - sum(labels)


def episode_interval(signals: Sequence[StepSignal], score: Callable[[StepSignal], float | None],
                     resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC of ``score``, resampling whole episodes.

    Each resample draws as many episodes as there are, with replacement; a step weighs as often
    as its episode was drawn. Resamples with one class missing are skipped; (NaN, NaN) if none is
    left or there are fewer than two episodes.
    """
    kept = _labelled(signals, score)
    episodes = sorted({s.trajectory_id for s in kept})
    if len(episodes) < 2:
        return float("nan"), float("nan")
    index = {e: i for i, e in enumerate(episodes)}
    owner = np.array([index[s.trajectory_id] for s in kept])
    values = np.array([score(s) for s in kept], dtype=np.float64)
    labels = np.array([bool(s.label) for s in kept])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(episodes), size=(resamples, len(episodes)))
    stats = []
    for draw in draws:
        weights = np.bincount(draw, minlength=len(episodes))[owner]
        value = auc(values, labels, weights)
        if not math.isnan(value):
            stats.append(value)
    if not stats:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def update_share(signals: Sequence[StepSignal]) -> dict[str, float]:
    """The skill term's share of the update: sum |lambda A_skill| / sum |A_ep| over the response
    tokens, ``raw`` (before clip/normalization) and ``used`` (what the run adds). NaN without any
    outcome signal."""
    outcome = sum(s.abs_outcome for s in signals)
    if outcome <= 0:
        return {"raw": float("nan"), "used": float("nan")}
    return {"raw": sum(s.abs_weighted_raw for s in signals) / outcome,
            "used": sum(s.abs_used for s in signals) / outcome}


def opid_auc_by_weight(signals: Sequence[StepSignal], weights: Sequence[float]) -> dict[str, float]:
    """AUC of A_ep + lambda * A_skill (the raw per-step mean) for each lambda in ``weights``: how far
    a skill weight could move the outcome's ranking, without retraining."""
    return {f"{w:g}": score_auc(signals, lambda s, w=w: s.outcome + w * s.skill)[0] for w in weights}


# ---------------------------------------------------------------------------- reports
def subsets(signals: Sequence[StepSignal]) -> dict[str, list[StepSignal]]:
    """The slices a report shows: all scored steps, by routing kind, by outcome and by rule."""
    scored = [s for s in signals if s.routing != "none"]
    slices: dict[str, list[StepSignal]] = {"all": scored}
    for routing in sorted({s.routing for s in scored}):
        slices[f"routing={routing}"] = [s for s in scored if s.routing == routing]
    slices["outcome=success"] = [s for s in scored if s.success]
    slices["outcome=failure"] = [s for s in scored if not s.success]
    for rule in sorted({s.rule for s in scored if s.rule}):
        slices[f"rule={rule}"] = [s for s in scored if s.rule == rule]
    return slices


def summarize(signals: Sequence[StepSignal], resamples: int = 1000, seed: int = 0,
              weights: Sequence[float] = ()) -> dict[str, Any]:
    """Everything a run-level report needs: per slice the step, good, bad and episode counts and the
    AUC of every score with its episode-bootstrap interval; the skill share of the update; the
    outcome's AUC without a skill (all labelled steps, skill or not); and, for ``weights``, the AUC
    of A_ep + lambda A_skill."""
    report: dict[str, Any] = {"steps": len(signals), "labelled": sum(s.label is not None for s in signals),
                              "share": update_share(signals), "slices": {}}
    for name, part in subsets(signals).items():
        entry: dict[str, Any] = {"steps": len(part), "episodes": len({s.trajectory_id for s in part})}
        for score_name, score in SCORES.items():
            value, good, bad = score_auc(part, score)
            low, high = episode_interval(part, score, resamples, seed=seed) if resamples else (math.nan, math.nan)
            entry[score_name] = {"auc": value, "low": low, "high": high, "good": good, "bad": bad}
        entry["share"] = update_share(part)
        report["slices"][name] = entry
    report["outcome_all_steps"] = dict(zip(("auc", "good", "bad"), score_auc(signals, SCORES["outcome"])))
    if weights:
        report["opid_auc_by_weight"] = opid_auc_by_weight([s for s in signals if s.routing != "none"], weights)
    return report


def batch_metrics(signals: Sequence[StepSignal]) -> dict[str, float]:
    """The per-batch ``skill_signal/*`` values the trainer logs (no intervals: a batch is small)."""
    scored = [s for s in signals if s.routing != "none"]
    labelled = [s for s in signals if s.label is not None]
    metrics = {f"auc_{name}": score_auc(scored, score)[0] for name, score in SCORES.items()}
    for routing in ("episode", "step"):
        metrics[f"auc_skill/{routing}"] = score_auc([s for s in scored if s.routing == routing], SCORES["skill"])[0]
    share = update_share(scored)
    metrics.update(labelled_steps=float(len(labelled)),
                   good_frac=sum(bool(s.label) for s in labelled) / len(labelled) if labelled else float("nan"),
                   share_raw=share["raw"], share=share["used"])
    return metrics


def markdown_table(report: Mapping[str, Any]) -> str:
    """The report of :func:`summarize` as a markdown table, one line per slice."""
    def cell(entry: Mapping[str, float]) -> str:
        if math.isnan(entry["auc"]):
            return "n/a"
        interval = "" if math.isnan(entry["low"]) else f" [{entry['low']:.2f}, {entry['high']:.2f}]"
        return f"{entry['auc']:.2f}{interval}"

    lines = ["| slice | steps (good/bad) | episodes | AUC A_skill | AUC A_skill (action) | AUC A_skill (decision) "
             "| AUC A_ep | AUC A_OPID | share raw | share used |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in report["slices"].items():
        skill = entry["skill"]
        lines.append(f"| {name} | {entry['steps']} ({skill['good']}/{skill['bad']}) | {entry['episodes']} "
                     f"| {cell(skill)} | {cell(entry['skill_action'])} | {cell(entry['skill_decision'])} "
                     f"| {cell(entry['outcome'])} "
                     f"| {cell(entry['opid'])} | {entry['share']['raw']:.2g} | {entry['share']['used']:.2g} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- from a batch
def action_token_mask(token_texts: Sequence[str], action: str | None, first: bool = False) -> list[bool]:
    """Which response tokens spell the action: those overlapping the last occurrence of ``action``
    in the concatenated token texts (case-insensitive), or with ``first`` its first occurrence (the
    decision, in an answer that reasons about the action before its action block). All False when
    the action is absent (an ill-formed answer, or a parser that rewrote it)."""
    if not action:
        return [False] * len(token_texts)
    text = "".join(token_texts).lower()
    start = text.find(action.lower()) if first else text.rfind(action.lower())
    if start < 0:
        return [False] * len(token_texts)
    end, mask, position = start + len(action), [], 0
    for piece in token_texts:
        mask.append(position < end and position + len(piece) > start)
        position += len(piece)
    return mask


def step_signals(rows: Sequence[Mapping[str, Any]], skill_logps: Mapping[str, torch.Tensor], old_logps: torch.Tensor,
                 completion_mask: torch.Tensor, action_mask: torch.Tensor, outcome: torch.Tensor,
                 skill_part: torch.Tensor, coefs: Mapping[str, float],
                 decision_mask: torch.Tensor | None = None) -> list[StepSignal]:
    """One :class:`StepSignal` per described row of a batch.

    ``rows[i]`` describes batch row i (trajectory_id, step_index, label, routing, success, rule,
    task_type); rows past ``len(rows)`` (padding) are ignored. Tensors are (B, T): ``skill_logps[k]``
    is l_skill under kind k (NaN on rows not routed to k), ``old_logps`` l_old, ``completion_mask``
    the response tokens, ``action_mask`` the action tokens, ``decision_mask`` (optional) the
    decision tokens, ``outcome`` A_ep, ``skill_part`` the weighted skill advantage the run adds.
    ``coefs[k]`` is lambda_k.
    """
    mask = completion_mask.double()
    raw = torch.zeros_like(mask)
    weighted_raw = torch.zeros_like(mask)
    for kind, logps in skill_logps.items():
        delta = torch.nan_to_num(logps.double() - old_logps.double(), nan=0.0, posinf=0.0, neginf=0.0) * mask
        raw += delta
        weighted_raw += coefs[kind] * delta
    actions = action_mask.double() * mask
    decisions = (decision_mask.double() if decision_mask is not None else torch.zeros_like(mask)) * mask
    decision_tokens = decisions.sum(1)
    decision_means = ((raw * decisions).sum(1) / decision_tokens.clamp(min=1)).tolist()
    outcome = outcome.double().expand_as(mask) * mask
    used = skill_part.double() * mask
    tokens, action_tokens = mask.sum(1), actions.sum(1)
    per_row = {
        "skill": (raw.sum(1) / tokens.clamp(min=1)).tolist(),
        "skill_action": ((raw * actions).sum(1) / action_tokens.clamp(min=1)).tolist(),
        "outcome": (outcome.sum(1) / tokens.clamp(min=1)).tolist(),
        "weighted": (used.sum(1) / tokens.clamp(min=1)).tolist(),
        "abs_weighted_raw": weighted_raw.abs().sum(1).tolist(),
        "abs_used": used.abs().sum(1).tolist(),
        "abs_outcome": outcome.abs().sum(1).tolist(),
    }
    signals = []
    for i, row in enumerate(rows):
        signals.append(StepSignal(
            trajectory_id=str(row["trajectory_id"]), step_index=int(row["step_index"]), label=row["label"],
            routing=row["routing"], success=bool(row["success"]), rule=row.get("rule"),
            task_type=row.get("task_type"), tokens=int(tokens[i]), action_tokens=int(action_tokens[i]),
            outcome=per_row["outcome"][i], skill=per_row["skill"][i],
            skill_action=per_row["skill_action"][i] if action_tokens[i] > 0 else None,
            weighted=per_row["weighted"][i], abs_weighted_raw=per_row["abs_weighted_raw"][i],
            abs_used=per_row["abs_used"][i], abs_outcome=per_row["abs_outcome"][i],
            decision_tokens=int(decision_tokens[i]),
            skill_decision=decision_means[i] if decision_tokens[i] > 0 else None))
    return signals


def load_signals(records: Iterable[Mapping[str, Any]]) -> list[StepSignal]:
    """:class:`StepSignal` records back from their JSON form (the trainer's JSONL files)."""
    return [StepSignal(**{k: v for k, v in r.items() if k in StepSignal.__dataclass_fields__}) for r in records]
