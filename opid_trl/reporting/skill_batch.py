"""What a run reports of each skill batch: metrics, token heatmap records, skill-signal records and
the coverage watch. The skill stage computes; this module only reads what it produced.

Every metric call is a collective (sums over processes), so every rank reports every batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from opid_trl.distributed import global_sum
from opid_trl.reporting.batch_metrics import BatchMetrics
from opid_trl.reporting.heatmap_recorder import HeatmapRecorder
from opid_trl.reporting.skill_signal_recorder import SkillSignalRecorder
from opid_trl.skills.extraction import CoverageWatch, SkillExtraction
from opid_trl.skills.stage import ScoredSkills, SkillRows


def prompt_text(prompt: Any) -> str:
    """A rendered prompt as text: the last message's content for a chat prompt."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content", ""))
    return str(prompt)


class SkillBatchReporter:
    """Reports the skill stage's batches.

    Args:
        metrics: the trainer's batch metrics.
        extraction: the skill extraction (its extractor's counters are logged per batch).
        coefs: skill weight per kind (shown in heatmap records and used by the skill signal).
        decode_token: a token id -> its text (heatmap records).
        heatmaps: the heatmap recorder, or None (`heatmap_rows: 0`).
        signal: the skill-signal recorder, or None (`skill_signal_diagnostics` off).
        is_main_process: the coverage watch warns once, from the main process.
    """

    def __init__(self, metrics: BatchMetrics, extraction: SkillExtraction, coefs: Mapping[str, float],
                 decode_token: Callable[[int], str], heatmaps: HeatmapRecorder | None = None,
                 signal: SkillSignalRecorder | None = None, is_main_process: bool = True) -> None:
        self.metrics = metrics
        self.extraction = extraction
        self.coefs = dict(coefs)
        self.decode_token = decode_token
        self.heatmaps = heatmaps
        self.signal = signal
        self.coverage = CoverageWatch()
        self.is_main_process = is_main_process

    def batch(self, mode: str, global_step: int, batch: dict[str, Any], scored: ScoredSkills, rows: SkillRows,
              num_trajectories: int) -> None:
        """Everything a batch through `SkillStage.add` reports: its metrics, heatmap records (and the
        skill advantage's metrics and the skill-signal records, when A_OPID was completed there)."""
        self.scored(mode, global_step, batch, scored, rows, num_trajectories)
        if scored.old_logps is not None:
            if scored.skill_part is not None:
                self.metrics.skill_advantage(mode, scored.skill_part, scored.outcome, batch["completion_mask"])
            if mode == "train":
                self.skill_signal(global_step, batch, scored, rows, scored.outcome, scored.skill_part)

    def scored(self, mode: str, global_step: int, batch: dict[str, Any], scored: ScoredSkills, rows: SkillRows,
               num_trajectories: int) -> None:
        """Metrics of a scored batch, and its heatmap records (finished now when l_old is known,
        else when the loss step completes the batch: its rows are then marked ``opid_row_index``)."""
        self.metrics.log(mode, "time/analysis", scored.result.seconds)
        self.metrics.log(mode, "time/analysis_wait", scored.wait_seconds)
        self.metrics.skill_passes(mode, scored.scores)
        failure_rate = self.metrics.routing(mode, scored.routed, scored.result.failures, num_trajectories)
        if self.is_main_process:
            self.coverage.update(failure_rate, global_step)
        counters = sorted(self.extraction.pop_metrics().items())
        for (name, _), total in zip(counters, global_sum(self.metrics.accelerator, [v for _, v in counters])):
            self.metrics.log(mode, f"skill_extractor/{name}", total)
        if self.heatmaps is None or mode != "train":
            return
        recorded = self.heatmaps.choose(scored.scores.scored_rows)
        self.heatmaps.stash(recorded, lambda i: self._describe(i, global_step, batch, scored, rows),
                            scored.scores.logps, batch["completion_mask"])
        if scored.old_logps is not None:
            self.heatmaps.complete(recorded, scored.old_logps[recorded])
        else:
            completion_ids = batch["completion_ids"]
            batch["opid_row_index"] = torch.arange(completion_ids.size(0), device=completion_ids.device)

    def completed(self, mode: str, row_index: torch.Tensor | None, old_logps: torch.Tensor,
                  skill_part: torch.Tensor | None, outcome: torch.Tensor, mask: torch.Tensor) -> None:
        """After A_OPID was completed: the pending heatmap records of those rows, and skill metrics."""
        if self.heatmaps is not None and row_index is not None and self.heatmaps.pending:
            self.heatmaps.complete(row_index.tolist(), old_logps)
        if skill_part is not None:
            self.metrics.skill_advantage(mode, skill_part, outcome, mask)

    def skill_signal(self, global_step: int, batch: Mapping[str, torch.Tensor], scored: ScoredSkills,
                     rows: SkillRows, outcome: torch.Tensor, skill_part: torch.Tensor | None) -> None:
        """The skill-signal diagnostic of a training batch whose steps the expert labelled."""
        if self.signal is None or rows.label is None:
            return
        self.signal.record(global_step, batch["completion_ids"], batch["completion_mask"], scored.routed,
                           scored.result.skills, rows.label, scored.scores.logps, scored.old_logps, outcome,
                           skill_part if skill_part is not None else torch.zeros_like(outcome), self.coefs)

    def _describe(self, i: int, global_step: int, batch: Mapping[str, torch.Tensor], scored: ScoredSkills,
                  rows: SkillRows) -> dict[str, Any]:
        """What a heatmap record shows of row ``i`` besides its log-probs (see `HeatmapRecorder.stash`)."""
        routed, render = scored.routed[i], rows.render
        length = int(batch["completion_mask"][i].sum())
        return {
            "global_step": global_step, **rows.describe(i),
            "prompt": prompt_text(render(i, None, None)),
            "tokens": [self.decode_token(token) for token in batch["completion_ids"][i, :length].tolist()],
            "outcome_advantage": float((scored.outcome if scored.outcome is not None else batch["advantages"])[i, 0]),
            "episode_skill": routed.episode_skill, "step_skill": routed.step_skill,
            "episode_skill_prompt": prompt_text(render(i, routed.episode_skill, None)) if routed.episode_skill else None,
            "step_skill_prompt": prompt_text(render(i, None, routed.step_skill)) if routed.step_skill else None,
            "episode_coef": self.coefs["episode"], "step_coef": self.coefs["step"],
        }


def log_heatmap_report(report: Path, step: int, report_to: list[str], callbacks: list[Any]) -> None:
    """Hand a step's heatmap report to wandb (as HTML) and TensorBoard (as text) when they run."""
    html = report.read_text()
    if "wandb" in report_to:
        with contextlib.suppress(Exception):
            import wandb

            if wandb.run is not None:
                wandb.log({"skill_heatmap": wandb.Html(html)}, commit=False)
    if "tensorboard" in report_to:
        from transformers.integrations import TensorBoardCallback

        for callback in callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                callback.tb_writer.add_text("skill_heatmap", html, step)
