"""A cache of analyses keyed by the trajectory's content, so no trajectory is analysed twice.

Kept in memory and, when given a path, appended to a JSONL file that a resumed run reloads.
Only successful analyses are cached: a failure is retried the next time the same trajectory
comes back.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from opid_trl.trajectory import EpisodeSkills, Trajectory


def trajectory_key(trajectory: Trajectory, salt: str) -> str:
    """Hash of what the skill extractor sees (task, outcome, steps) and of ``salt`` (model, prompt version)."""
    content = {
        "salt": salt,
        "task": trajectory.task,
        "success": trajectory.success,
        "outcome": round(trajectory.outcome, 6),
        "steps": [(s.observation, s.response, round(s.reward, 6), s.action_valid) for s in trajectory.steps],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class AnalysisCache:
    """Thread-safe map from trajectory key to skills, optionally persisted to ``path``.

    Deliberately unbounded (not an LRU): entries are a few sentences each, and the JSONL file
    holds every analysis of the run anyway, so evicting from memory would save little.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._entries: dict[str, EpisodeSkills] = {}
        self._lock = threading.Lock()
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._entries[row["key"]] = EpisodeSkills(
                        row["episode_skill"], {int(k): v for k, v in row["step_skills"].items()},
                        meta={"summary": row.get("summary", "")})
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> EpisodeSkills | None:
        with self._lock:
            hit = self._entries.get(key)
        if hit is None:
            return None
        return EpisodeSkills(hit.episode_skill, dict(hit.step_skills), meta={**hit.meta, "cached": True})

    def put(self, key: str, skills: EpisodeSkills) -> None:
        if skills.failed:
            return
        with self._lock:
            self._entries[key] = skills
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write(json.dumps({"key": key, "episode_skill": skills.episode_skill,
                                        "step_skills": {str(k): v for k, v in skills.step_skills.items()},
                                        "summary": skills.meta.get("summary", "")}) + "\n")
