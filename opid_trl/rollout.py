"""The episode loop: plays a batch of tasks to the end and records one training row per step.

Two schedules give the same rows: turn-synchronous (every turn, one batched generation call for
all still-active episodes; the batch waits for its slowest generation) and asynchronous (every
episode advances on its own thread, sending its own requests; an engine that batches
continuously, such as a vLLM server, keeps generating while other episodes step their
environments).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from environments.base import AgentEnvironment, HistoryEntry, PromptView, StepResult

from .generation import GenerationBackend, Sample, sample_with
from .routing import inject
from .trajectory import StepRecord, Trajectory

logger = logging.getLogger(__name__)

Tokenize = Callable[[list[str]], list[list[int]]]


@dataclass
class Episode:
    """One episode being played, and afterwards its training rows (one per step)."""

    env: AgentEnvironment
    task_row: Mapping[str, Any]
    group_id: int
    trajectory_id: str
    observation: str = ""
    history: list[HistoryEntry] = field(default_factory=list)
    views: list[PromptView] = field(default_factory=list)
    #: How many history steps each step's prompt showed (the longest window that fit the budget).
    history_windows: list[int] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)
    #: The sampler's log-prob of every token of ``completion_ids`` (None where the engine gives none).
    sampling_logps: list[list[float] | None] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    done: bool = False
    won: bool = False
    error: str | None = None
    #: The environment's task type, recorded at reset (the instance is reused afterwards).
    task_type: str | None = None
    #: The task statement, recorded at reset.
    task: str = ""

    @property
    def env_return(self) -> float:
        """Sum of environment rewards (invalid-action penalties not included)."""
        return sum(step.reward for step in self.steps)

    def skill_prompt(self, t: int, episode_skill: str | None, step_skill: str | None) -> str:
        """Step ``t``'s prompt with the skill(s) injected: the same template over the same history
        window the policy saw (never re-fitted, so the log-prob shift is the skill's alone)."""
        view = self.views[t]
        prompt = self.env.render_prompt(view, self.history_windows[t])
        return inject(prompt, episode_skill, step_skill, task=view.task, anchor=self.env.instruction_anchor)

    def to_trajectory(self, invalid_action_penalty: float, gamma: float) -> Trajectory:
        """The record shown to a skill extractor."""
        penalty = invalid_action_penalty * sum(not s.action_valid for s in self.steps)
        trajectory = Trajectory(
            trajectory_id=self.trajectory_id,
            group_id=self.group_id,
            task=self.task,
            steps=self.steps,
            outcome=self.env_return - penalty,
            success=self.won,
            task_type=self.task_type,
            response_format=self.env.response_format if self.env is not None else None,
        )
        trajectory.fill_discounted_returns(gamma)
        return trajectory


@dataclass
class FittedPrompts:
    """Prompts rendered to fit a token budget."""

    texts: list[str]
    token_ids: list[list[int]]
    #: The history window each prompt was rendered with.
    windows: list[int]
    #: How many prompts exceed the budget even with no history.
    overflow: int


def fit_prompts(
    renderers: Sequence[Callable[[int], str]], history_length: int, max_tokens: int, tokenize: Tokenize
) -> FittedPrompts:
    """Render every prompt with the longest history window that fits ``max_tokens``.

    ``renderers[i](k)`` renders prompt i with its last k history steps. Prompts over budget are
    re-rendered with one step fewer, in batches, down to no history at all; the task statement is
    never cut.
    """
    texts = [render(history_length) for render in renderers]
    ids = tokenize(texts)
    windows = [history_length] * len(texts)
    pending = [i for i, row in enumerate(ids) if len(row) > max_tokens]
    k = history_length
    while pending and k > 0:
        k -= 1
        new_texts = [renderers[i](k) for i in pending]
        new_ids = tokenize(new_texts)
        for i, text, row in zip(pending, new_texts, new_ids):
            texts[i], ids[i], windows[i] = text, row, k
        pending = [i for i in pending if len(ids[i]) > max_tokens]
    return FittedPrompts(texts, ids, windows, len(pending))


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
    ) -> None:
        self.env_factory = env_factory
        self.tokenize = tokenize
        self.decode = decode
        self.max_turns = max_turns
        self.history_length = history_length
        self.max_prompt_length = max_prompt_length
        self.step_workers = step_workers
        self._pool: list[AgentEnvironment] = []
        self._executor = ThreadPoolExecutor(step_workers) if step_workers > 0 else None
        self.prompt_overflows = 0
        self.env_errors = 0
        # Asynchronous episodes share the tokenizer (not safe across threads) and the counters.
        self._lock = threading.Lock()

    def _environments(self, count: int) -> list[AgentEnvironment]:
        while len(self._pool) < count:
            self._pool.append(self.env_factory())
        return self._pool[:count]

    def _map(self, fn: Callable, items: Sequence) -> list:
        if self._executor is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self._executor.map(fn, items))

    def render(self, episode: Episode, view: PromptView) -> Callable[[int], str]:
        """Renderer of ``view`` by ``episode``'s environment, for :func:`fit_prompts`."""
        return lambda k: episode.env.render_prompt(view, k)

    def run(
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
            self._map(self._reset, episodes)
            for turn in range(self.max_turns):
                active = [ep for ep in episodes if not ep.done]
                if not active:
                    break
                views = [self._view(ep, turn) for ep in active]
                fitted = self._fit(active, views)
                samples = sample_with(backend, fitted.token_ids)
                responses = self.decode([s.token_ids for s in samples])
                results = self._map(_play, list(zip(active, responses)))
                for item in zip(active, views, fitted.windows, fitted.token_ids, samples, responses, results):
                    self._record(*item)
        self.env_errors = sum(ep.error is not None for ep in episodes)
        return episodes

    def _play_alone(self, episode: Episode, backend: GenerationBackend) -> None:
        """One episode to the end, one request per turn (asynchronous schedule)."""
        self._reset(episode)
        for turn in range(self.max_turns):
            if episode.done:
                break
            with self._lock:
                view = self._view(episode, turn)
                fitted = self._fit([episode], [view])
            sample = sample_with(backend, fitted.token_ids)[0]  # the slow part runs unlocked: the engine batches
            with self._lock:
                response = self.decode([sample.token_ids])[0]
            result = _play((episode, response))
            with self._lock:
                self._record(episode, view, fitted.windows[0], fitted.token_ids[0], sample, response, result)

    def _reset(self, episode: Episode) -> None:
        try:
            episode.observation = episode.env.reset(episode.task_row)
            episode.task_type = episode.env.task_type
            episode.task = episode.env.task_description
        except Exception as exc:  # an engine failure ends this episode, never the run
            episode.done, episode.error = True, f"reset: {type(exc).__name__}: {exc}"
            logger.warning("environment reset failed for %s: %s", episode.trajectory_id, episode.error)

    @staticmethod
    def _view(episode: Episode, turn: int) -> PromptView:
        return PromptView(
            task=episode.env.task_description,
            step=turn,
            observation=episode.observation,
            admissible_actions=tuple(episode.env.admissible_actions),
            history=tuple(episode.history),
        )

    def _fit(self, episodes: Sequence[Episode], views: Sequence[PromptView]) -> FittedPrompts:
        fitted = fit_prompts(
            [self.render(ep, view) for ep, view in zip(episodes, views)],
            self.history_length,
            self.max_prompt_length,
            self.tokenize,
        )
        self.prompt_overflows += fitted.overflow
        return fitted

    def _record(self, ep: Episode, view: PromptView, window: int, prompt_ids: list[int], sample: Sample,
                response: str, result: StepResult | Exception) -> None:
        """Append one step (its row and its environment outcome) to ``ep``."""
        turn = len(ep.steps)
        ep.views.append(view)
        ep.history_windows.append(window)
        ep.prompt_ids.append(prompt_ids)
        ep.completion_ids.append(sample.token_ids)
        ep.sampling_logps.append(sample.logprobs)
        if isinstance(result, Exception):
            ep.error = f"step {turn}: {type(result).__name__}: {result}"
            logger.warning("environment step failed for %s: %s", ep.trajectory_id, ep.error)
            ep.steps.append(StepRecord(index=turn, observation=ep.observation, response=response,
                                       action=None, action_valid=True, reward=0.0))
            ep.done = True
            return
        if not math.isfinite(result.reward):
            ep.error = f"step {turn}: non-finite reward {result.reward!r} replaced by 0"
            logger.warning("environment returned a non-finite reward for %s", ep.trajectory_id)
            result.reward = 0.0
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
        ep.history.append(HistoryEntry(observation=ep.observation, action=shown))
        ep.observation = result.observation
        ep.won = ep.won or result.won
        ep.done = result.done


def _play(item: tuple[Episode, str]) -> StepResult | Exception:
    """Step ``episode``'s environment with ``response``; an exception is returned, not raised."""
    episode, response = item
    try:
        return episode.env.step(response)
    except Exception as exc:  # recorded on the episode by EpisodeRunner._record
        return exc
