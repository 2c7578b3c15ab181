"""Audit trail of every analysis: one JSONL line per trajectory, and a wandb table when wandb runs.

Users debug skills here: what the skill extractor was shown, what it answered, what was parsed, and
which skill each step was scored with. Skill extractors never put credentials in the records.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from opid_trl.algorithms.routing import RoutedSkill
from opid_trl.files import ends_with_newline, parse_jsonl, rewrite_jsonl
from opid_trl.trajectory import EpisodeSkills, Trajectory

logger = logging.getLogger(__name__)

WANDB_COLUMNS = ["global_step", "trajectory_id", "task", "success", "outcome", "episode_skill", "step_skills",
                 "error", "latency_s"]


class AnalysisAuditLog:
    """Appends analysis records to ``<output_dir>/analysis/analyses-rank<r>.jsonl``.

    A resumed run analyses again the steps after its checkpoint, which the interrupted process may
    already have recorded: before its first record, a process drops the records of that step and
    later ones (and a line cut short by the crash), so each (global_step, trajectory_id) appears
    once and the file reads as the one of an uninterrupted run. This needs no resume signal from
    the trainer: the first step a process analyses is where it started.
    """

    def __init__(self, output_dir: str | Path, rank: int, use_wandb: bool = False) -> None:
        self.path = Path(output_dir) / "analysis" / f"analyses-rank{rank}.jsonl"
        self.use_wandb = use_wandb
        self._replayed_steps_dropped = False

    def write(self, global_step: int, trajectories: list[Trajectory], skills: list[EpisodeSkills | None],
              routing: list[list[RoutedSkill]]) -> None:
        rows = [self.record(global_step, t, s, r) for t, s, r in zip(trajectories, skills, routing)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._replayed_steps_dropped:
            self._drop_records_from(global_step)
        with self.path.open("a") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=True, default=str) + "\n")
        if self.use_wandb:
            self._log_wandb(rows)

    def _drop_records_from(self, global_step: int) -> None:
        """Drop the records of ``global_step`` and later steps written by an earlier process."""
        self._replayed_steps_dropped = True
        if not self.path.exists():
            return
        parsed, torn = parse_jsonl(self.path)
        kept = [line for line, record in parsed if record.get("global_step", -1) < global_step]
        if torn:
            logger.warning("%s: dropped %d unreadable line(s), cut short by an interrupted write", self.path, torn)
        if len(kept) < len(parsed):
            logger.warning("%s: dropped %d record(s) of steps >= %d, written before the resume (analysed again)",
                           self.path, len(parsed) - len(kept), global_step)
        if torn or len(kept) < len(parsed) or not ends_with_newline(self.path):
            rewrite_jsonl(self.path, kept)

    @staticmethod
    def record(global_step: int, trajectory: Trajectory, skills: EpisodeSkills | None,
               routing: list[RoutedSkill]) -> dict[str, Any]:
        meta = dict(skills.meta) if skills is not None else {}
        return {
            "global_step": global_step,
            "trajectory_id": trajectory.trajectory_id,
            "group_id": trajectory.group_id,
            "task": trajectory.task,
            "task_type": trajectory.task_type,
            "success": trajectory.success,
            "outcome": trajectory.outcome,
            "num_steps": len(trajectory.steps),
            "steps": [{"step": s.index, "action": s.action, "valid": s.action_valid, "reward": s.reward,
                       "return": round(s.discounted_return, 6)} for s in trajectory.steps],
            "episode_skill": skills.episode_skill if skills is not None else None,
            "step_skills": {str(k): v for k, v in (skills.step_skills if skills is not None else {}).items()},
            "error": (skills.error if skills is not None else "no result from the extractor"),
            # Why it failed, as a category to filter on (see skill_extractors.llm.ERROR_TYPES);
            # the error text, `response_excerpt` and `raw_answer` are bounded and credential-free.
            "error_type": meta.pop("error_type", None) if skills is not None else "no_result",
            "routing": [r.kind for r in routing],
            "summary": meta.pop("summary", None),
            "prompt": meta.pop("prompt", None),
            "raw_answer": meta.pop("raw_answer", None),
            **meta,
        }

    @staticmethod
    def _log_wandb(rows: list[dict[str, Any]]) -> None:
        try:
            import wandb
        except ImportError:
            return
        if wandb.run is None:
            return
        table = wandb.Table(columns=WANDB_COLUMNS)
        for row in rows:
            table.add_data(*[json.dumps(row.get(c)) if isinstance(row.get(c), dict) else row.get(c)
                             for c in WANDB_COLUMNS])
        wandb.log({"opid/analyses": table}, commit=False)
