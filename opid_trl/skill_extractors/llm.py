"""What every LLM-backed skill extractor shares: cache, prompt, parse, one re-ask, accounting.

A subclass only implements `_complete_batch`: a list of chat conversations in, one
`Completion` per conversation out (text or error, latency, tokens). Everything else (which
trajectories need a call, the re-ask with the parse error, caching, the audit details attached to
each result, metrics) lives here once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..trajectory import EpisodeSkills, Trajectory
from .cache import AnalysisCache, trajectory_key
from .parsing import AnalysisParseError, parse_analysis
from .prompt import PROMPT_VERSION, build_messages, reask_message
from .protocol import SkillExtractor

METRIC_NAMES = ("requests", "failures", "cache_hits", "reasks", "retries", "prompt_tokens", "completion_tokens",
                "latency_s")


@dataclass
class Completion:
    """One model answer to an analysis prompt, or why there is none."""

    text: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0


class LLMSkillExtractor(SkillExtractor):
    """Skill extractor that asks a language model about each trajectory (one request each).

    Args:
        max_step_skills: cap on step skills per trajectory; `None` takes the trainer's
            `OPIDConfig.max_step_skills` when bound to a trainer (5 otherwise).
        max_record_chars: length budget of the trajectory record in the prompt.
        reask: ask once more, quoting the parse error, when an answer cannot be parsed.
        cache: `True` (in memory, persisted under the trainer's output dir when bound),
            `False`, or an `AnalysisCache`.
    """

    def __init__(self, max_step_skills: int | None = None, max_record_chars: int = 24_000, reask: bool = True,
                 cache: bool | AnalysisCache = True) -> None:
        self.max_step_skills = max_step_skills
        self.max_record_chars = max_record_chars
        self.reask = reask
        self._cache_setting = cache
        self.cache = cache if isinstance(cache, AnalysisCache) else AnalysisCache() if cache else None
        self._metrics = dict.fromkeys(METRIC_NAMES, 0.0)

    # -- trainer integration
    def bind_trainer(self, trainer: Any) -> None:
        """Take defaults from the trainer: the step-skill cap and a persistent cache file."""
        if self.max_step_skills is None:
            self.max_step_skills = trainer.args.max_step_skills
        if self._cache_setting is True and self.cache is not None and self.cache.path is None and not len(self.cache):
            rank = trainer.accelerator.process_index
            self.cache = AnalysisCache(Path(trainer.args.output_dir) / "analysis" / f"cache-rank{rank}.jsonl")

    def pop_metrics(self) -> dict[str, float]:
        """Counters since the last call (requests, failures, cache hits, tokens, latency)."""
        metrics, self._metrics = self._metrics, dict.fromkeys(METRIC_NAMES, 0.0)
        return metrics

    @property
    def cache_salt(self) -> str:
        """What, besides the trajectory, changes the answer (model name, prompt version)."""
        return f"{type(self).__name__}:{PROMPT_VERSION}"

    @abstractmethod
    def _complete_batch(self, conversations: list[list[dict]]) -> list[Completion]:
        """One completion per conversation."""

    # -- the pipeline
    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        cap = self.max_step_skills if self.max_step_skills is not None else 5
        results: list[EpisodeSkills | None] = [None] * len(trajectories)
        keys = [trajectory_key(t, self.cache_salt) for t in trajectories]
        pending = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = hit.cleaned(len(trajectories[i].steps), cap)
                self._metrics["cache_hits"] += 1
            else:
                pending.append(i)
        conversations = {i: build_messages(trajectories[i], cap, self.max_record_chars) for i in pending}
        answers = self._call(conversations)
        retry = {}
        for i, (completion, conversation) in answers.items():
            results[i], error = self._finish(trajectories[i], conversation, completion, cap)
            if error is not None and self.reask and completion.text is not None:
                retry[i] = conversation + [{"role": "assistant", "content": completion.text}, reask_message(error)]
        if retry:
            self._metrics["reasks"] += len(retry)
            for i, (completion, conversation) in self._call(retry).items():
                results[i], _ = self._finish(trajectories[i], conversation, completion, cap, reasked=True)
        for i in pending:
            if not results[i].failed and self.cache is not None:
                self.cache.put(keys[i], results[i])
        self._metrics["failures"] += sum(results[i].failed for i in pending)
        return results

    def _call(self, conversations: dict[int, list[dict]]) -> dict[int, tuple[Completion, list[dict]]]:
        if not conversations:
            return {}
        order = list(conversations)
        completions = self._complete_batch([conversations[i] for i in order])
        for c in completions:
            self._metrics["requests"] += 1
            self._metrics["retries"] += c.retries
            self._metrics["prompt_tokens"] += c.prompt_tokens
            self._metrics["completion_tokens"] += c.completion_tokens
            self._metrics["latency_s"] += c.latency_s
        return {i: (c, conversations[i]) for i, c in zip(order, completions)}

    def _finish(self, trajectory: Trajectory, conversation: list[dict], completion: Completion, cap: int,
                reasked: bool = False) -> tuple[EpisodeSkills, str | None]:
        meta = {
            "prompt": conversation,
            "raw_answer": completion.text,
            "latency_s": round(completion.latency_s, 4),
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "retries": completion.retries,
            "reasked": reasked,
            "cached": False,
        }
        if completion.error is not None:
            return EpisodeSkills(error=completion.error, meta=meta), completion.error
        try:
            skills, summary = parse_analysis(completion.text, len(trajectory.steps), cap)
        except AnalysisParseError as exc:
            return EpisodeSkills(error=f"parse: {exc}", meta=meta), str(exc)
        meta["summary"] = summary
        skills.meta = meta
        return skills, None

