"""What every LLM-backed skill extractor shares: cache, prompt, parse, one re-ask, accounting.

A subclass only implements `_complete_batch`: a list of chat conversations in, one
`Completion` per conversation out (text or error, latency, tokens). Everything else (which
trajectories need a call, the re-ask with the parse error, caching, the audit details attached to
each result, metrics) lives here once.

Failure is per trajectory: whatever goes wrong for one of them (its request, its answer, the
parser on its answer, even an exception the backend raises for the whole batch) ends as that
trajectory's ``EpisodeSkills(error=...)``, with the cause in ``meta`` (``error_type`` and a
bounded, redacted excerpt of what came back) and in the counters. The valid answers of the same
batch are kept and cached; ``__call__`` does not raise for a bad answer or an outage.
"""

from __future__ import annotations

import logging
import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opid_trl.skills.extractors.cache import AnalysisCache, trajectory_key
from opid_trl.skills.extractors.parsing import AnalysisParseError, parse_analysis
from opid_trl.skills.extractors.prompt import PROMPT_VERSION, build_messages, reask_message
from opid_trl.skills.extractors.protocol import ExtractorContext, SkillExtractor
from opid_trl.trajectory import EpisodeSkills, Trajectory
from opid_trl.untrusted_text import clip_text

logger = logging.getLogger(__name__)

#: Why an analysis failed (``meta["error_type"]``, and a ``failed_<type>`` counter each):
#: ``timeout`` (no answer within the timeout, retries included), ``unreachable`` (connection
#: refused or reset), ``server_error`` (HTTP 5xx), ``rate_limited`` (HTTP 429 after the retries),
#: ``http_error`` (any other refusal: 4xx, bad key), ``bad_response`` (HTTP 200 whose body is not a
#: chat completion: HTML, broken or absurdly nested JSON), ``parse`` (an answer without a usable
#: analysis, after the re-ask) and ``internal`` (an exception in the extractor: parser, prompt, backend).
ERROR_TYPES = ("timeout", "unreachable", "server_error", "rate_limited", "http_error", "bad_response", "parse",
               "internal")
#: A fixed set, so that every process reports the same counters (the trainer sums them by position).
METRIC_NAMES = ("requests", "failures", "cache_hits", "reasks", "retries", "prompt_tokens", "completion_tokens",
                "latency_s") + tuple(f"failed_{kind}" for kind in ERROR_TYPES)

#: Longest excerpt of a bad response body or error message kept in an error and the audit record.
MAX_EXCERPT_CHARS = 500
#: Longest raw answer kept in the audit record (head and tail): a runaway generation of megabytes
#: would otherwise land in every audit line.
MAX_AUDIT_ANSWER_CHARS = 16_000
#: Longest first answer quoted back to the model on a re-ask (its tail, where the analysis sits).
MAX_REASK_ANSWER_CHARS = 8_000

#: What looks like a credential in text that came back from a server (an error page may echo
#: request headers): bearer tokens and ``sk-`` style keys.
_CREDENTIAL_RE = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{8,}")


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``***``."""
    return _CREDENTIAL_RE.sub(lambda m: (m.group(1) or "") + "***", text)


@dataclass
class Completion:
    """One model answer to an analysis prompt, or why there is none."""

    text: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    #: One of `ERROR_TYPES` when ``error`` is set (``internal`` when the backend did not say).
    error_type: str | None = None
    #: A failed response's body (or its head), for the audit record; redacted and cut there.
    response_excerpt: str | None = None


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
    def bind(self, context: ExtractorContext) -> None:
        """Take defaults from the run: the step-skill cap and a persistent cache file."""
        if self.max_step_skills is None:
            self.max_step_skills = context.max_step_skills
        if self._cache_setting is True and self.cache is not None and self.cache.path is None and not len(self.cache):
            rank = context.process_index
            self.cache = AnalysisCache(Path(context.output_dir) / "analysis" / f"cache-rank{rank}.jsonl")

    def pop_metrics(self) -> dict[str, float]:
        """Counters since the last call (requests, failures and ``failed_<type>`` per `ERROR_TYPES`,
        cache hits, re-asks, retries, tokens, latency); always the same names."""
        metrics, self._metrics = self._metrics, dict.fromkeys(METRIC_NAMES, 0.0)
        return metrics

    @property
    def cache_salt(self) -> str:
        """What, besides the trajectory, changes the answer (model name, prompt version)."""
        return f"{type(self).__name__}:{PROMPT_VERSION}"

    @abstractmethod
    def _complete_batch(self, conversations: list[list[dict]]) -> list[Completion]:
        """One completion per conversation, in order.

        A failed request should come back as a `Completion` with ``error`` and ``error_type``; an
        exception (or too few completions) is tolerated but fails every conversation left unanswered.
        """

    # -- the pipeline
    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        """Skills for each trajectory: cached answers reused, the rest asked in one batch (re-asked
        once on a parse error), every failure recorded on its trajectory, never raised."""
        cap = self.max_step_skills if self.max_step_skills is not None else 5
        results: list[EpisodeSkills | None] = [None] * len(trajectories)
        keys: list[str | None] = [None] * len(trajectories)
        conversations: dict[int, list[dict]] = {}
        for i, trajectory in enumerate(trajectories):
            try:
                keys[i] = trajectory_key(trajectory, self.cache_salt)
                hit = self.cache.get(keys[i]) if self.cache is not None else None
                if hit is not None:
                    results[i] = hit.cleaned(len(trajectory.steps), cap)
                    self._metrics["cache_hits"] += 1
                    continue
                conversations[i] = build_messages(trajectory, cap, self.max_record_chars)
            except Exception as exc:  # noqa: BLE001 - a malformed trajectory costs only itself
                results[i] = self._failure("internal", f"internal: cannot build the prompt: {self._describe(exc)}", {})
        pending = list(conversations)
        retry = {}
        for i, (completion, conversation) in self._call(conversations).items():
            results[i], error = self._finish(trajectories[i], conversation, completion, cap)
            if error is not None and self.reask and completion.text is not None:
                answer = clip_text(completion.text, MAX_REASK_ANSWER_CHARS, head_share=0.25)
                retry[i] = conversation + [{"role": "assistant", "content": answer}, reask_message(error)]
        if retry:
            self._metrics["reasks"] += len(retry)
            for i, (completion, conversation) in self._call(retry).items():
                results[i], _ = self._finish(trajectories[i], conversation, completion, cap, reasked=True)
        for i in pending:
            if not results[i].failed and self.cache is not None and keys[i] is not None:
                try:
                    self.cache.put(keys[i], results[i])
                except Exception as exc:  # noqa: BLE001 - a full disk loses persistence, not the analysis
                    logger.warning("skill extractor: cannot cache an analysis (%s)", self._describe(exc))
        for result in results:
            if result is not None and result.failed:
                kind = result.meta.get("error_type")
                self._metrics["failures"] += 1
                self._metrics[f"failed_{kind if kind in ERROR_TYPES else 'internal'}"] += 1
        return results

    def _call(self, conversations: dict[int, list[dict]]) -> dict[int, tuple[Completion, list[dict]]]:
        """One completion per conversation; a backend that raises, or answers too few, fails only the
        conversations it left without an answer."""
        if not conversations:
            return {}
        order = list(conversations)
        try:
            completions = list(self._complete_batch([conversations[i] for i in order]))
        except Exception as exc:  # noqa: BLE001 - the batch fails per trajectory, training goes on
            logger.warning("skill extractor: the backend failed on %d conversations (%s)", len(order),
                           self._describe(exc))
            completions = [Completion(error=f"internal: {self._describe(exc)}", error_type="internal")] * len(order)
        if len(completions) < len(order):
            missing = Completion(error="internal: the backend returned no completion", error_type="internal")
            completions += [missing] * (len(order) - len(completions))
        for c in completions[: len(order)]:
            self._metrics["requests"] += 1
            self._metrics["retries"] += _number(c.retries)
            self._metrics["prompt_tokens"] += _number(c.prompt_tokens)
            self._metrics["completion_tokens"] += _number(c.completion_tokens)
            self._metrics["latency_s"] += _number(c.latency_s)
        return {i: (c, conversations[i]) for i, c in zip(order, completions)}

    def _scrub(self, text: str) -> str:
        """``text`` without credentials, before it goes into an error or the audit record."""
        return redact(text)

    def _describe(self, exc: BaseException) -> str:
        """``Type: message`` of an exception, scrubbed, then cut to `MAX_EXCERPT_CHARS` (a server's
        message can be a whole web page, and may echo a credential)."""
        return clip_text(self._scrub(f"{type(exc).__name__}: {exc}"), MAX_EXCERPT_CHARS)

    def _failure(self, error_type: str, error: str, meta: dict[str, Any]) -> EpisodeSkills:
        meta["error_type"] = error_type
        return EpisodeSkills(error=clip_text(self._scrub(error), MAX_EXCERPT_CHARS), meta=meta)

    def _finish(self, trajectory: Trajectory, conversation: list[dict], completion: Completion, cap: int,
                reasked: bool = False) -> tuple[EpisodeSkills, str | None]:
        text = completion.text if isinstance(completion.text, str) else None
        meta = {
            "prompt": conversation,
            "raw_answer": clip_text(self._scrub(text), MAX_AUDIT_ANSWER_CHARS, head_share=0.25) if text is not None else None,
            "latency_s": round(_number(completion.latency_s), 4),
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "retries": completion.retries,
            "reasked": reasked,
            "cached": False,
        }
        if completion.response_excerpt is not None:
            meta["response_excerpt"] = clip_text(self._scrub(completion.response_excerpt), MAX_EXCERPT_CHARS)
        if completion.error is not None or text is None:
            error = completion.error if completion.error is not None else "internal: the backend gave no text"
            kind = completion.error_type if completion.error_type in ERROR_TYPES else "internal"
            result = self._failure(kind, error, meta)
            return result, result.error
        try:
            skills, summary = parse_analysis(text, len(trajectory.steps), cap)
        except AnalysisParseError as exc:
            result = self._failure("parse", f"parse: {exc}", meta)
            return result, str(exc)
        except Exception as exc:  # noqa: BLE001 - a parser bug on one answer costs that answer only
            result = self._failure("internal", f"internal: the parser failed: {self._describe(exc)}", meta)
            return result, None  # not the model's fault: no re-ask
        meta["summary"] = summary
        skills.meta = meta
        return skills, None


def _number(value: Any) -> float:
    """A counter's increment; a backend's garbage (None, a string) counts as 0."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
