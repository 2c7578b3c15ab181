"""Local run records: every logged metric to JSONL, and PNG plots of the main curves at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from opid_trl.files import ends_with_newline, parse_jsonl, rewrite_jsonl

logger = logging.getLogger(__name__)

PLOTS = {
    "success_rate": ["env/success_rate", "eval_env/success_rate"],
    "reward": ["reward", "eval_reward"],
    "episode_length": ["env/episode_length", "eval_env/episode_length"],
    "skill_advantage": ["skill/adv_mean", "skill/adv_std", "skill/adv_abs_max"],
}


class MetricsJSONLCallback(TrainerCallback):
    """Appends each `Trainer.log` call (with its global step) to ``<output_dir>/metrics.jsonl``.

    At the start of training the file is cut back to the step training starts from (the resumed
    checkpoint's, 0 for a fresh run), so the records of a resumed run are those of an uninterrupted
    one. A line cut short by a crash is dropped there with a warning: appending after it would
    glue the next record onto it.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"

    def on_train_begin(self, args, state, control, **kwargs):
        if not (state.is_world_process_zero and self.path.exists()):
            return
        parsed, torn = parse_jsonl(self.path)
        kept = [line for line, record in parsed if record.get("step", 0) <= state.global_step]
        if torn:
            logger.warning("%s: dropped %d unreadable line(s), cut short by an interrupted write",
                           self.path, torn)
        if torn or len(kept) < len(parsed) or not ends_with_newline(self.path):
            rewrite_jsonl(self.path, kept)

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a line cut short by a crash is skipped with a warning."""
    parsed, torn = parse_jsonl(Path(path))
    if torn:
        logger.warning("%s: skipped %d unreadable line(s)", path, torn)
    return [record for _, record in parsed]


def plot_metrics(metrics_file: str | Path, out_dir: str | Path) -> list[Path]:
    """One PNG per curve group of `PLOTS` that has data; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_file)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, keys in PLOTS.items():
        series = {k: [(r["step"], r[k]) for r in records if k in r] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        ax.set_xlabel("optimizer step")
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
