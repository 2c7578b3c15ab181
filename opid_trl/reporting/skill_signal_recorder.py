"""The trainer's side of the skill-signal diagnostic (`skill_signal_diagnostics`).

After a training batch's skill advantage is known, this turns its rows into
:class:`~opid_trl.skills.signal.StepSignal` records (the expert's label of the step, its routing
and the extractor's rule, the per-step A_skill / A_ep / A_OPID, the action tokens), logs the
batch's ``skill_signal/*`` metrics over every process, and appends the records to
``<output_dir>/skill_signal/step-<global_step>-rank<r>.jsonl`` for a run-level report
(`benchmarks/skill_signal.py`, :func:`opid_trl.skills.signal.summarize`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import gather_object

from opid_trl.algorithms.routing import RoutedSkill
from opid_trl.files import append_jsonl
from opid_trl.rollout.step_rows import ragged_rows
from opid_trl.skills.signal import action_token_mask, batch_metrics, load_signals, step_signals
from opid_trl.trajectory import EpisodeSkills

if TYPE_CHECKING:
    from opid_trl.reporting.batch_metrics import BatchMetrics

#: What the multi-turn path tells about batch row i: trajectory_id, step_index, success, task_type,
#: label, action and episode (the trajectory's index in the batch); None for padding rows.
SignalInfo = Callable[[int], "Mapping[str, Any] | None"]


def routed_rule(skills: EpisodeSkills | None, routed: RoutedSkill, step_index: int) -> str | None:
    """The extractor's name for the rule behind the skill a step was routed to (its ``meta["rules"]``:
    ``{"episode": name, "steps": {index: name}}``), or None when the extractor names none."""
    rules = (skills.meta or {}).get("rules") if skills is not None else None
    if not isinstance(rules, Mapping):
        return None
    if routed.step_skill:
        steps = rules.get("steps") or {}
        return steps.get(step_index, steps.get(str(step_index)))
    return rules.get("episode") if routed.episode_skill else None


class SkillSignalRecorder:
    """Scores one training batch's skill signal against the expert's labels, logs and writes it."""

    def __init__(self, output_dir: str | Path, rank: int, decode_tokens: Callable[[list[int]], list[str]],
                 metrics: BatchMetrics) -> None:
        self.directory = Path(output_dir) / "skill_signal"
        self.rank = rank
        #: token ids -> the text of each token (to find the action's tokens in a response)
        self.decode_tokens = decode_tokens
        self.metrics = metrics

    def record(self, global_step: int, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
               routed: Sequence[RoutedSkill], skills: Sequence[EpisodeSkills | None], signal_info: SignalInfo,
               skill_logps: Mapping[str, torch.Tensor], old_logps: torch.Tensor, outcome: torch.Tensor,
               skill_part: torch.Tensor, coefs: Mapping[str, float]) -> None:
        """Log ``skill_signal/*`` for this batch (a collective: every process calls it) and write its
        records. Tensors are (B, T) as in :func:`opid_trl.skills.signal.step_signals`."""
        rows, actions, decisions = [], [], []
        for i in range(completion_ids.size(0)):
            info = signal_info(i)
            if info is None:  # padding rows come last
                break
            length = int(completion_mask[i].sum())
            pieces = self.decode_tokens(completion_ids[i, :length].tolist())
            actions.append([float(a) for a in action_token_mask(pieces, info.get("action"))])
            decisions.append([float(a) for a in action_token_mask(pieces, info.get("action"), first=True)])
            rows.append({**info, "routing": routed[i].kind,
                         "rule": routed_rule(skills[info["episode"]], routed[i], info["step_index"])})
        shape = (completion_ids.size(0), completion_ids.size(1), 0.0, completion_mask.device)
        signals = step_signals(rows, skill_logps, old_logps, completion_mask, ragged_rows(actions, *shape), outcome,
                               skill_part, coefs, decision_mask=ragged_rows(decisions, *shape))
        records = [s.to_json() for s in signals]
        for name, value in batch_metrics(load_signals(gather_object(records))).items():
            if not math.isnan(value):
                self.metrics.log("train", f"skill_signal/{name}", value)
        if records:
            append_jsonl(self.directory / f"step-{global_step}-rank{self.rank}.jsonl",
                         ({"global_step": global_step, **record} for record in records))
