"""Skill extraction: the skill extractor turns a batch's completed trajectories into routed skills.

The extractor runs in a background thread while the trainer's log-prob passes run (when it allows
it), and whatever goes wrong with it (an outage, an exception, a wrong number of answers, a
malformed answer) costs those trajectories their skill signal, never the run. Its answers are
cleaned (indices inside the trajectory, at most `max_step_skills`), routed to steps
(:func:`opid_trl.algorithms.routing.route_skills`) and written to the audit log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from opid_trl.algorithms.routing import RoutedSkill, route_skills
from opid_trl.skills.audit import AnalysisAuditLog
from opid_trl.skills.extractors import SkillExtractor
from opid_trl.trajectory import EpisodeSkills, Trajectory

logger = logging.getLogger(__name__)


@dataclass
class ExtractionResult:
    """The cleaned skills of every trajectory (``None``: no signal) and what the analysis cost."""

    skills: list[EpisodeSkills | None]
    #: Trajectories that got no skill signal.
    failures: int
    #: The extractor's own wall time.
    seconds: float


class SkillExtraction:
    """Runs a skill extractor over batches of trajectories and routes its skills to steps."""

    def __init__(self, extractor: SkillExtractor, max_step_skills: int, routing: str,
                 use_step_skills: bool = True, overlap: bool = True,
                 audit: AnalysisAuditLog | None = None) -> None:
        """See the class docstring; the overlap thread exists only when the extractor allows it."""
        self.extractor = extractor
        self.max_step_skills = max_step_skills
        self.routing = routing
        self.use_step_skills = use_step_skills
        self.overlap = overlap and extractor.supports_overlap
        self.audit = audit
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="opid-analysis") if self.overlap else None

    def submit(self, trajectories: Sequence[Trajectory]) -> Future[ExtractionResult]:
        """Start the analysis: in the background when the extractor allows it, else right here."""
        if self._pool is not None:
            return self._pool.submit(self.run, trajectories)
        done: Future[ExtractionResult] = Future()
        done.set_result(self.run(trajectories))
        return done

    def run(self, trajectories: Sequence[Trajectory]) -> ExtractionResult:
        """The extractor on one batch, in the calling thread: its answers cleaned (step indices
        inside the trajectory, at most `max_step_skills`), or no skills at all when it fails, so an
        outage costs this batch its skill signal, never the run."""
        start = time.perf_counter()
        try:
            answers = list(self.extractor(list(trajectories)))
        except Exception as exc:  # noqa: BLE001 - extractor outages must not stop training
            logger.warning("skill extractor failed on %d trajectories (%s: %s); they get no skill signal",
                           len(trajectories), type(exc).__name__, exc)
            answers = None
        seconds = time.perf_counter() - start
        if answers is not None and len(answers) != len(trajectories):
            logger.warning("skill extractor returned %d results for %d trajectories; ignoring them",
                           len(answers), len(trajectories))
            answers = None
        if answers is None:
            return ExtractionResult([None] * len(trajectories), len(trajectories), seconds)
        skills = [a.cleaned(len(t.steps), self.max_step_skills) if isinstance(a, EpisodeSkills) else None
                  for a, t in zip(answers, trajectories)]
        return ExtractionResult(skills, sum(s is None or s.failed for s in skills), seconds)

    def route(self, global_step: int, trajectories: Sequence[Trajectory],
              result: ExtractionResult) -> list[list[RoutedSkill]]:
        """Each trajectory's skill per step, written to the audit log with the analysis."""
        routed = [route_skills(None if s is None or s.failed else s, len(t.steps), self.routing,
                               use_step_skills=self.use_step_skills)
                  for s, t in zip(result.skills, trajectories)]
        if self.audit is not None:
            self.audit.write(global_step, list(trajectories), result.skills, routed)
        return routed

    def pop_metrics(self) -> dict[str, float]:
        """The extractor's counters since the last call."""
        return dict(self.extractor.pop_metrics())


class CoverageWatch:
    """Says so in the log, at warning level, when OPID has quietly become GRPO.

    A trajectory whose analysis failed gets no skill signal; an extractor that is down, or answers
    in a form the parser no longer reads, leaves every trajectory without one, and the run goes on
    as plain GRPO with only a counter (`skill/analysis_failure_rate`) to show it. After `patience`
    batches in a row in which fewer than `min_share` of the trajectories got a skill, this warns
    once, and again (at info level) when coverage is back.
    """

    def __init__(self, min_share: float = 0.5, patience: int = 3) -> None:
        self.min_share = min_share
        self.patience = patience
        self.low_batches = 0

    def update(self, failure_rate: float, global_step: int) -> None:
        """Record one batch's share of trajectories without a skill (``failure_rate``)."""
        if 1.0 - failure_rate >= self.min_share:
            if self.low_batches >= self.patience:
                logger.info("skill extractor: skills are back at step %d (%.0f%% of trajectories have one)",
                            global_step, 100 * (1.0 - failure_rate))
            self.low_batches = 0
            return
        self.low_batches += 1
        if self.low_batches == self.patience:
            logger.warning("skill extractor: for %d batches in a row (up to step %d) fewer than %.0f%% of the "
                           "trajectories got a skill (%.0f%% in the last one): OPID is training as GRPO on them. "
                           "Check the extractor (skill_extractor/failed_* metrics, the audit trail in "
                           "<output_dir>/analysis/)", self.patience, global_step, 100 * self.min_share,
                           100 * (1.0 - failure_rate))

