"""Prompt fitting and the batched episode loop, with a scripted generation backend."""

import contextlib

import pytest

from environments import FetchEnvironment, make_fetch_task
from environments.base import AgentEnvironment, HistoryEntry, PromptView
from opid_trl.rollout.prompt_budget import fit_prompts
from opid_trl.rollout.runner import EpisodeRunner


def word_tokenize(texts):
    return [text.split() for text in texts]


def test_fit_prompts_drops_oldest_history_first_and_keeps_task():
    def view(i):
        return PromptView(task="TASK", step=0, observation=" ".join(["OBS"] * (i + 1)), admissible_actions=(),
                          history=tuple(HistoryEntry("", f"h{j}") for j in range(5)))

    def render(v, k):
        return " ".join(["TASK"] + [h.action for h in v.history[len(v.history) - k:]] + [v.observation])

    fitted = fit_prompts([view(0), view(3)], [render, render], 4, 5, word_tokenize)
    texts, ids = fitted.texts, fitted.token_ids
    assert texts[0] == "TASK h2 h3 h4 OBS"  # 3 history steps fit in 5 tokens
    assert texts[1] == "TASK OBS OBS OBS OBS"  # no history left
    assert [len(row) for row in ids] == [5, 5]
    assert fitted.windows == [3, 0] and fitted.cuts == [None, None] and fitted.overflow == 0


class ExpertBackend:
    """Answers every prompt with the expert action of the environment that rendered it."""

    def __init__(self, runner):
        self.runner = runner
        self.calls = []

    def session(self):
        return contextlib.nullcontext()

    def generate(self, prompt_ids):
        self.calls.append(len(prompt_ids))
        active = [env for env in self.runner._pool if env._active]
        return [list(f"<think>x</think><action>{env.expert_action()}</action>") for env in active]


class TrackedFetch(FetchEnvironment):
    def __init__(self):
        super().__init__()
        self._active = False

    def reset(self, task):
        self._active = True
        return super().reset(task)

    def step(self, text):
        result = super().step(text)
        self._active = not result.done
        return result


def make_runner(factory=TrackedFetch, max_turns=6):
    return EpisodeRunner(factory, tokenize=lambda texts: [list(t) for t in texts],
                         decode=lambda ids: ["".join(row) for row in ids], max_turns=max_turns,
                         history_length=2, max_prompt_length=10_000)


def test_one_generation_call_per_turn_for_all_active_episodes():
    runner = make_runner()
    backend = ExpertBackend(runner)
    tasks = [make_fetch_task(s) for s in range(6)]
    episodes = runner.play(tasks, [0, 0, 1, 1, 2, 2], [str(i) for i in range(6)], backend)
    lengths = [len(ep.steps) for ep in episodes]
    assert all(ep.won for ep in episodes)
    assert lengths == [t["target_room"] + 1 for t in tasks]
    # turn k generates for the episodes still running at turn k
    assert backend.calls == [sum(n > k for n in lengths) for k in range(max(lengths))]
    assert all(len(ep.prompt_ids) == len(ep.completion_ids) == len(ep.steps) for ep in episodes)


class Exploding(AgentEnvironment):
    def reset(self, task):
        if task.get("fail") == "reset":
            raise RuntimeError("engine crashed")
        self.task_description, self.admissible_actions = "t", ("a",)
        return "obs"

    def execute(self, action):
        raise RuntimeError("engine crashed mid-episode")

    def render_prompt(self, view, history_length):
        return f"{view.task} {view.observation}"


class ValidBackend:
    def session(self):
        return contextlib.nullcontext()

    def generate(self, prompt_ids):
        return [list("<think>x</think><action>a</action>") for _ in prompt_ids]


def test_environment_exceptions_end_episodes_not_the_run():
    runner = make_runner(Exploding)
    episodes = runner.play([{"fail": "reset"}, {}], [0, 0], ["a", "b"], ValidBackend())
    assert episodes[0].error.startswith("reset") and episodes[0].steps == []
    assert episodes[1].error.startswith("step 0") and len(episodes[1].steps) == 1
    assert runner.env_errors == 2


class PromptReadingBackend:
    """Answers from the prompt text alone (take the target when it is offered, else go east), with a
    small delay per call, from any number of threads: the same answers whatever the schedule."""

    thread_safe = True

    def __init__(self):
        self.calls = []

    def session(self):
        return contextlib.nullcontext()

    def generate(self, prompt_ids):
        import re
        import time

        time.sleep(0.01)
        self.calls.append(len(prompt_ids))
        out = []
        for ids in prompt_ids:
            text = "".join(ids)
            current = text.rsplit("admissible actions", 1)[-1]
            take = re.search(r"'(take [^']+)'", current)
            out.append(list(f"<think>x</think><action>{take.group(1) if take else 'go east'}</action>"))
        return out


def test_asynchronous_episodes_give_the_same_rows():
    tasks = [make_fetch_task(s) for s in range(6)]
    groups, ids = [0, 0, 1, 1, 2, 2], [str(i) for i in range(6)]
    sync_backend, async_backend = PromptReadingBackend(), PromptReadingBackend()
    synchronous = make_runner(FetchEnvironment).play(tasks, groups, ids, sync_backend)
    asynchronous = make_runner(FetchEnvironment).play(tasks, groups, ids, async_backend, asynchronous=True)
    for a, b in zip(synchronous, asynchronous):
        assert a.prompt_ids == b.prompt_ids and a.completion_ids == b.completion_ids
        assert [s.reward for s in a.steps] == [s.reward for s in b.steps] and a.won == b.won
    assert all(ep.won for ep in asynchronous)
    # one request per episode per turn instead of one batched call per turn
    assert set(async_backend.calls) == {1} and len(async_backend.calls) == sum(len(ep.steps) for ep in synchronous)
    assert len(sync_backend.calls) == max(len(ep.steps) for ep in synchronous)


def test_asynchronous_episodes_need_a_thread_safe_backend():
    with pytest.raises(ValueError, match="async_episodes"):
        make_runner().play([make_fetch_task(0)], [0], ["0"], ValidBackend(), asynchronous=True)


class AnswerBackend:
    """Answers every prompt with the same text."""

    def __init__(self, text):
        self.text = text

    def session(self):
        return contextlib.nullcontext()

    def generate(self, prompt_ids):
        return [list(self.text) for _ in prompt_ids]


def test_history_shows_what_the_environment_says_was_played():
    # reference parsing: a tagless answer is played as its last characters, and that is what the
    # next prompt's history shows; strict parsing shows the stripped answer.
    answer = "  I would rather walk east  "
    for parsing, expected in (("reference", answer.lower()[-30:]), ("strict", answer.strip())):
        runner = make_runner(factory=lambda: FetchEnvironment(action_parsing=parsing), max_turns=2)
        (episode,) = runner.play([make_fetch_task(0)], [0], ["0"], AnswerBackend(answer))
        assert not episode.steps[0].action_valid
        assert episode.history[0].action == expected, parsing
        assert episode.history_windows == [2, 2]
