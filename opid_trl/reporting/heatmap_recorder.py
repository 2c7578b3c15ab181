"""Recording a bounded sample of re-scored rows per step, for the token heatmaps of a skill.

For up to `heatmap_rows` rows per step (and process) that were re-scored under a skill, the
trainer keeps what :mod:`opid_trl.reporting.heatmap` renders: the prompt the policy saw, the same prompt
with the skill injected, the response tokens, and per token ``l_old`` and ``l_skill``. ``l_skill``
is known after the skill pass; ``l_old`` either then (an explicit old-policy pass, or the engine)
or in the loss step, whose forward gives it (see :mod:`opid_trl.skills.scoring`), so a row is kept
pending until its ``l_old`` arrives. Records go to
``<output_dir>/heatmaps/step-<global_step>-rank<r>.jsonl``, with an HTML report beside each file
(rendered once per optimizer step by `HeatmapRecorder.render`, outside the loss step).
With `heatmap_rows=0` (the default) nothing is recorded and nothing is computed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from opid_trl.files import append_jsonl

logger = logging.getLogger(__name__)

#: The kind-specific entries of a row description (see `HeatmapRecorder.stash`).
_KIND_KEYS = {f"{kind}_{name}" for kind in ("episode", "step") for name in ("skill", "skill_prompt", "coef")}


class HeatmapRecorder:
    """Keeps the sampled rows of a step until their ``l_old`` is known, then writes them."""

    def __init__(self, output_dir: str | Path, rank: int, rows_per_step: int,
                 on_report: Callable[[int, Path], None] | None = None) -> None:
        self.directory = Path(output_dir) / "heatmaps"
        self.rank = rank
        self.rows_per_step = rows_per_step
        self.on_report = on_report
        #: generation-batch row -> the records waiting for that row's l_old (one per kind of skill)
        self.pending: dict[int, list[dict[str, Any]]] = {}
        #: step files written since the last `render`, with their step
        self._unrendered: dict[Path, int] = {}

    def choose(self, scored_rows: Sequence[int]) -> list[int]:
        """The rows to record: the first `rows_per_step` re-scored ones (a stable, cheap sample)."""
        return list(scored_rows[: self.rows_per_step])

    def stash(self, rows: Sequence[int], describe: Callable[[int], dict[str, Any]],
              skill_logps: Mapping[str, torch.Tensor], completion_mask: torch.Tensor) -> None:
        """Keep the records of ``rows``: one per kind of skill the row was scored under.

        ``describe(row)`` gives the row's texts and outcome; its kind-specific entries are named
        ``<kind>_skill``, ``<kind>_skill_prompt`` and ``<kind>_coef``."""
        self.pending = {}
        for row in rows:
            length = int(completion_mask[row].sum())
            described = describe(row)
            for kind, logps in skill_logps.items():
                values = logps[row, :length]
                if torch.isnan(values).all():
                    continue
                # tokens a skill did not score (a TRL tool result, another turn) are null: shown grey
                record = {k: v for k, v in described.items() if k not in _KIND_KEYS}
                record.update(kind=kind, skill=described.get(f"{kind}_skill") or "",
                              skill_prompt=described.get(f"{kind}_skill_prompt") or "",
                              coef=described.get(f"{kind}_coef", 0.0),
                              l_skill=[None if math.isnan(v) else v for v in values.tolist()])
                record["tokens"] = record["tokens"][:length]
                self.pending.setdefault(row, []).append(record)

    def complete(self, rows: Sequence[int], old_logps: torch.Tensor) -> None:
        """``old_logps[j]`` is l_old of generation-batch row ``rows[j]``: finish and write its records."""
        finished: list[dict[str, Any]] = []
        for j, row in enumerate(rows):
            for record in self.pending.pop(int(row), []):
                record["l_old"] = old_logps[j, : len(record["l_skill"])].tolist()
                finished.append(record)
        if finished:
            self._write(finished)

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` to their step's JSONL file; its report is rendered by `render`, once per
        optimizer step, not here (this runs in the loss step, once per micro-step)."""
        step = records[0]["global_step"]
        path = self.directory / f"step-{step}-rank{self.rank}.jsonl"
        append_jsonl(path, records)
        self._unrendered[path] = step

    def render(self) -> None:
        """Render the HTML report of every step file written since the last call and hand it to
        `on_report`; the trainer calls it at the end of each optimizer step and of training."""
        from opid_trl.reporting.heatmap import load_records, write_report

        unrendered, self._unrendered = self._unrendered, {}
        for path, step in unrendered.items():
            try:
                report = write_report(load_records(path), path.with_suffix(".html"))
            except Exception as exc:  # noqa: BLE001 - a report that fails to render never stops training
                logger.warning("skill heatmap report for step %s not written: %s", step, exc)
                continue
            if self.on_report is not None:
                self.on_report(step, report)


class HeatmapRenderCallback(TrainerCallback):
    """Renders the heatmap reports of the rows recorded during an optimizer step once it ends (and
    what is left at the end of training)."""

    def __init__(self, recorder: HeatmapRecorder) -> None:
        self.recorder = recorder

    def on_step_end(self, args, state, control, **kwargs):
        self.recorder.render()

    def on_train_end(self, args, state, control, **kwargs):
        self.recorder.render()

