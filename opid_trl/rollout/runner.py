"""The episode loop: plays a batch of tasks to the end and records one training row per step.

Two schedules give the same rows: turn-synchronous (every turn, one batched generation call for
all still-active episodes; the batch waits for its slowest generation) and asynchronous (every
episode advances on its own thread, sending its own requests; an engine that batches
continuously, such as a vLLM server, keeps generating while other episodes step their
environments).

An environment that raises, hangs past `step_timeout`, or returns something that is not a
:class:`StepResult` fails its episode, never the run: the episode is marked failed (``error``),
ends there, is never a success, and is left out of the advantages and the loss by the trainer.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from environments.base import AgentEnvironment, HistoryEntry, PromptView, StepResult
from opid_trl.generation.base import GenerationBackend, Sample, sample_with
from opid_trl.rollout.episode import Episode
from opid_trl.rollout.prompt_budget import FittedPrompts, fit_prompts
from opid_trl.trajectory import StepRecord
from opid_trl.untrusted_text import clean_text

logger = logging.getLogger(__name__)

Tokenize = Callable[[list[str]], list[list[int]]]


class EpisodeRunner:
    """Plays a batch of tasks to the end (turn-synchronous or asynchronous schedule)."""

    def __init__(
        self,
        env_factory: Callable[[], AgentEnvironment],
        tokenize: Tokenize,
        decode: Callable[[list[list[int]]], list[str]],
        max_turns: int,
        history_length: int,
        max_prompt_length: int,
        step_workers: int = 0,
        step_timeout: float | None = None,
        record_expert: bool = False,
    ) -> None:
        self.env_factory = env_factory
        #: Ask the environment's expert before every step and label the step (the skill-signal
        #: diagnostic); off, no expert is ever called.
        self.record_expert = record_expert
        self.tokenize = tokenize
        self.decode = decode
        self.max_turns = max_turns
        self.history_length = history_length
        self.max_prompt_length = max_prompt_length
        self.step_workers = step_workers
        self.step_timeout = step_timeout
        self._pool: list[AgentEnvironment] = []
        self._executor = ThreadPoolExecutor(step_workers) if step_workers > 0 else None
        self.prompt_overflows = 0
        self.token_cuts = 0
        self.env_errors = 0
        # Asynchronous episodes share the tokenizer (not safe across threads) and the counters.
        self._lock = threading.Lock()

    def _environments(self, count: int) -> list[AgentEnvironment]:
        while len(self._pool) < count:
            self._pool.append(self.env_factory())
        return self._pool[:count]

    def _map(self, fn: Callable, items: Sequence) -> list:
        """``fn`` over ``items``, on the step workers when there are several (environments step in
        parallel), each call bounded by `step_timeout` when one is set."""
        if self.step_timeout is not None:
            return self._map_timed(fn, items)
        if self._executor is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self._executor.map(fn, items))

    def _map_timed(self, fn: Callable, items: Sequence) -> list:
        """``fn`` over ``items``, each call bounded by `step_timeout`: a call past it returns a
        `TimeoutError` and its environment is abandoned. Calls run on daemon threads, so a call that
        never returns keeps neither the batch nor the interpreter's exit waiting: all at once with
        `step_workers`, else one after the other (as without a limit: environments that are not
        safe to step from several threads at once stay safe)."""
        if self._executor is None:
            return [self._timed_result(item, _TimedCall(fn, item), self.step_timeout) for item in items]
        calls = [_TimedCall(fn, item) for item in items]
        deadline = time.monotonic() + self.step_timeout
        return [self._timed_result(item, call, max(deadline - time.monotonic(), 0.0))
                for item, call in zip(items, calls)]

    def _timed_result(self, item: Any, call: _TimedCall, wait: float) -> Any:
        """``call``'s result if it ends within ``wait`` seconds, else a `TimeoutError` (and its
        environment is abandoned)."""
        if call.wait(wait):
            return call.result
        episode = item[0] if isinstance(item, tuple) else item
        self._abandon(episode.env)
        return TimeoutError(f"no answer within step_timeout={self.step_timeout} s")

    def _abandon(self, env: AgentEnvironment) -> None:
        """Drop a hung environment from the pool: the next batch builds a fresh one."""
        with self._lock:
            self._pool = [e for e in self._pool if e is not env]

    def play(
        self,
        tasks: Sequence[Mapping[str, Any]],
        group_ids: Sequence[int],
        trajectory_ids: Sequence[str],
        backend: GenerationBackend,
        asynchronous: bool = False,
    ) -> list[Episode]:
        """Play every task once; ``backend.session()`` must be held by the caller.

        ``asynchronous`` plays each episode on its own thread (the backend must be `thread_safe`).
        """
        self.prompt_overflows = 0
        self.token_cuts = 0
        self.env_errors = 0
        episodes = [
            Episode(env=env, task_row=task, group_id=g, trajectory_id=tid)
            for env, task, g, tid in zip(self._environments(len(tasks)), tasks, group_ids, trajectory_ids)
        ]
        if asynchronous:
            if not getattr(backend, "thread_safe", False):
                raise ValueError("async_episodes: the generation backend cannot serve several threads at once "
                                 "(use vllm_mode='server', or async_episodes=False)")
            with ThreadPoolExecutor(max(len(episodes), 1), thread_name_prefix="opid-episode") as pool:
                list(pool.map(lambda ep: self._play_alone(ep, backend), episodes))
        else:
            for episode, failure in zip(episodes, self._map(_reset, episodes)):
                self._after_reset(episode, failure)
            for turn in range(self.max_turns):
                active = [ep for ep in episodes if not ep.done]
                if not active:
                    break
                views = [self._view(ep, turn) for ep in active]
                fitted = self._fit(active, views)
                samples = sample_with(backend, fitted.token_ids)
                responses = self.decode([s.token_ids for s in samples])
                experts = [self._expert(ep) for ep in active]
                results = self._map(_step_environment, list(zip(active, responses)))
                for i, (ep, sample, response, result) in enumerate(zip(active, samples, responses, results)):
                    self._record(ep, fitted, i, sample, response, result, experts[i])
        self.env_errors = sum(ep.error is not None for ep in episodes)
        return episodes

    def _play_alone(self, episode: Episode, backend: GenerationBackend) -> None:
        """One episode to the end, one request per turn (asynchronous schedule)."""
        self._after_reset(episode, self._map(_reset, [episode])[0])
        for turn in range(self.max_turns):
            if episode.done:
                break
            with self._lock:
                view = self._view(episode, turn)
                fitted = self._fit([episode], [view])
            sample = sample_with(backend, fitted.token_ids)[0]  # the slow part runs unlocked: the engine batches
            with self._lock:
                response = self.decode([sample.token_ids])[0]
            expert = self._expert(episode)
            result = self._map(_step_environment, [(episode, response)])[0]
            with self._lock:
                self._record(episode, fitted, 0, sample, response, result, expert)

    def _after_reset(self, episode: Episode, failure: Exception | None) -> None:
        """Mark an episode whose reset raised as failed: it plays no turn and is left out of the loss."""
        if failure is None:
            return
        episode.done, episode.error = True, f"reset: {type(failure).__name__}: {failure}"
        logger.warning("environment reset failed for %s: %s", episode.trajectory_id, episode.error)

    @staticmethod
    def _view(episode: Episode, turn: int) -> PromptView:
        """What turn ``turn``'s prompt shows, from untrusted environment text cleaned once here."""
        return PromptView(
            task=clean_text(episode.env.task_description),
            step=turn,
            observation=episode.observation,
            admissible_actions=tuple(clean_text(a) for a in episode.env.admissible_actions),
            history=tuple(episode.history),
        )

    def _fit(self, episodes: Sequence[Episode], views: Sequence[PromptView]) -> FittedPrompts:
        """Each prompt fitted to `max_prompt_length` (the longest history window that fits), counted."""
        fitted = fit_prompts(views, [ep.env.render_prompt for ep in episodes], self.history_length,
                             self.max_prompt_length, self.tokenize)
        self.prompt_overflows += fitted.overflow
        self.token_cuts += sum(cut == "tokens" for cut in fitted.cuts)
        return fitted

    def _expert(self, episode: Episode) -> str | None:
        """The expert's action at ``episode``'s current state (`record_expert` only); an expert that
        fails gives ``None`` (the step is then unlabelled), never a failed episode."""
        if not self.record_expert:
            return None
        try:
            action = episode.env.expert_action()
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not change what is trained
            logger.debug("expert_action failed for %s: %s", episode.trajectory_id, exc)
            return None
        return action if isinstance(action, str) else None

    def _record(self, ep: Episode, fitted: FittedPrompts, i: int, sample: Sample, response: str,
                result: StepResult | Exception, expert: str | None = None) -> None:
        """Append one step (row ``i`` of ``fitted`` and its environment outcome) to ``ep``."""
        turn = len(ep.steps)
        ep.views.append(fitted.views[i])
        ep.history_windows.append(fitted.windows[i])
        ep.prompt_cuts.append(fitted.cuts[i])
        ep.prompt_ids.append(fitted.token_ids[i])
        ep.completion_ids.append(sample.token_ids)
        ep.sampling_logps.append(sample.logprobs)
        problem = _step_result_problem(result)
        if problem is not None:
            ep.error = f"step {turn}: {problem} ({type(ep.env).__name__})"
            logger.warning("environment step failed for %s: %s", ep.trajectory_id, ep.error)
            ep.steps.append(StepRecord(index=turn, observation=ep.observation, response=response,
                                       action=None, action_valid=True, reward=0.0))
            ep.step_labels.append(None)
            ep.done, ep.won = True, False
            return
        ep.step_labels.append(ep.env.step_label(expert, result.action, result.action_valid)
                              if self.record_expert else None)
        ep.steps.append(
            StepRecord(
                index=turn,
                observation=ep.observation,
                response=response,
                action=result.action,
                action_valid=result.action_valid,
                reward=result.reward,
                info=dict(result.info),
            )
        )
        # What the next prompts show of this step: the environment decides (the played action in the
        # reference's mode; it may be empty), else the action, else the stripped answer.
        shown = result.history_text if result.history_text is not None else (result.action or response.strip())
        ep.history.append(HistoryEntry(observation=ep.observation, action=clean_text(shown)))
        ep.observation = clean_text(result.observation)
        ep.won = ep.won or result.won
        ep.done = result.done


class _TimedCall:
    """``fn(item)`` on a daemon thread; `wait` says whether it finished in time."""

    def __init__(self, fn: Callable, item: Any) -> None:
        self.result: Any = None
        self._done = threading.Event()
        self._fn, self._item = fn, item
        threading.Thread(target=self._run, name="opid-env-call", daemon=True).start()

    def _run(self) -> None:
        """The call, on its own daemon thread; a failure is kept as the result, like a step's own."""
        try:
            self.result = self._fn(self._item)
        except Exception as exc:  # noqa: BLE001 - returned to the caller like the call's own failures
            self.result = exc
        finally:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


def _reset(episode: Episode) -> Exception | None:
    """Reset ``episode``'s environment on its task; a failure is returned, not raised."""
    try:
        observation = episode.env.reset(episode.task_row)
        if not isinstance(observation, str):
            return TypeError(f"{type(episode.env).__name__}.reset returned {type(observation).__name__}, "
                             "expected the first observation as a str")
        episode.observation = clean_text(observation)
        episode.task_type = episode.env.task_type
        episode.task = clean_text(episode.env.task_description)
    except Exception as exc:  # an engine failure ends this episode, never the run
        return exc
    return None


def _step_environment(item: tuple[Episode, str]) -> StepResult | Exception:
    """Step ``episode``'s environment with ``response``; an exception is returned, not raised."""
    episode, response = item
    try:
        return episode.env.step(response)
    except Exception as exc:  # recorded on the episode by EpisodeRunner._record
        return exc


def _step_result_problem(result: Any) -> str | None:
    """What is wrong with what `step` returned (None when it is a well-formed `StepResult`)."""
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    if not isinstance(result, StepResult):
        return f"step returned {type(result).__name__}, expected a StepResult"
    if not isinstance(result.observation, str):
        return f"StepResult.observation is {type(result.observation).__name__}, expected str"
    if isinstance(result.reward, bool) or not isinstance(result.reward, numbers.Real):
        return f"StepResult.reward is {type(result.reward).__name__} ({result.reward!r}), expected a number"
    if not math.isfinite(result.reward):
        return f"non-finite reward {result.reward!r}"
    if not isinstance(result.done, (bool, int)) or not isinstance(result.won, (bool, int)):
        return "StepResult.done / won must be booleans"
    return None
