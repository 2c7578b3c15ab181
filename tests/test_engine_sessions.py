"""Engine skill scoring and the engine's sessions (`skill_logprob_backend="vllm"`).

Skill prompts share their leading tokens with the prompts the engine just generated from, so the
engine scores them reading its prefix cache. A colocated engine in sleep mode forgets that cache
when its session closes, so the trainer then scores the skills inside the rollout's session,
before the policy passes (which run with the engine asleep otherwise). Tested here without vLLM:
the real engine's cache reads are tested in tests/test_vllm.py.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from opid_trl import OPIDTrainer
from opid_trl.generation.base import PrefillCount, SyncState
from opid_trl.generation.vllm import SamplingSettings, VLLMColocateBackend
from opid_trl.rollout.step_rows import pad_token_lists

from .conftest import tiny_config
from .dist_worker import ShapedFetch, fixed_skills


class RecordingLLM:
    """An engine that only records being woken up and put to sleep."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def wake_up(self) -> None:
        self.events.append("wake")

    def sleep(self, level: int) -> None:
        self.events.append(f"sleep{level}")


def colocated_backend(sleep: bool) -> tuple[VLLMColocateBackend, RecordingLLM]:
    llm = RecordingLLM()
    generation = SimpleNamespace(llm=llm, enable_sleep_mode=sleep, _llm_weights_sleeping=False)
    policy = SimpleNamespace(global_step=lambda: 0, sync=SyncState())
    policy.sync.last_loaded_step = 0  # the engine holds this step's weights: no push
    sampling = SamplingSettings(1.0, 1.0, None, None, 1.0, 8)
    return VLLMColocateBackend(policy, generation, sampling), llm


def test_colocated_sessions_nest_and_only_the_outermost_sleeps():
    backend, llm = colocated_backend(sleep=True)
    assert backend.forgets_prefix_cache
    with backend.session():
        with backend.session():
            assert llm.events == ["wake"]
        assert llm.events == ["wake"]  # still awake: the outer session holds the prefix cache
    assert llm.events == ["wake", "sleep1"]
    with backend.session():
        pass
    assert llm.events == ["wake", "sleep1", "wake", "sleep1"]
    awake, llm = colocated_backend(sleep=False)
    with awake.session(), awake.session():
        pass
    assert not awake.forgets_prefix_cache and llm.events == []


class ScoringEngine:
    """The trainer's transformers backend, posing as a rollout engine that scores prompts (with the
    trainer's forward) and may forget its prefix cache between sessions. Records in which session
    each scoring call ran, and whether it was allowed to read the cache."""

    def __init__(self, trainer: OPIDTrainer, forgets: bool) -> None:
        self.inner, self.trainer, self.forgets_prefix_cache = trainer.generation_backend, trainer, forgets
        self.thread_safe = self.inner.thread_safe
        self.prefill = PrefillCount()
        self.depth, self.sessions, self.calls = 0, 0, []  # calls: (kind, session number, reuse_prefix)

    @contextlib.contextmanager
    def session(self):
        outermost = self.depth == 0
        if outermost:
            self.sessions += 1
        self.depth += 1
        try:
            with self.inner.session() if outermost else contextlib.nullcontext():
                yield
        finally:
            self.depth -= 1

    def sample(self, prompt_ids, max_new_tokens=None):
        assert self.depth > 0
        self.calls.append(("sample", self.sessions, None))
        return self.inner.sample(prompt_ids, max_new_tokens)

    def generate(self, prompt_ids, max_new_tokens=None):
        return [s.token_ids for s in self.sample(prompt_ids, max_new_tokens)]

    def score(self, prompt_ids, completion_ids, reuse_prefix=True):
        assert self.depth > 0
        self.calls.append(("score", self.sessions, reuse_prefix))
        pad, device = self.trainer.processing_class.pad_token_id, self.trainer.accelerator.device
        logps = self.trainer._logps(*pad_token_lists([list(p) for p in prompt_ids], pad, "left", device),
                                    *pad_token_lists([list(c) for c in completion_ids], pad, "right", device))
        for p, c in zip(prompt_ids, completion_ids):
            self.prefill.add(tokens=len(p) + len(c), computed=len(p) + len(c) - 8)  # as if 8 came from the cache
        self.prefill.rows += len(prompt_ids)
        return [logps[i, : len(c)].tolist() for i, c in enumerate(completion_ids)]


def train(tiny_model_dir, tiny_tokenizer, tmp_path, forgets: bool, **overrides):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment=ShapedFetch,
                          skill_extractor=fixed_skills, train_dataset=Dataset.from_list([{"seed": i} for i in range(8)]),
                          args=tiny_config(tmp_path / f"forgets-{forgets}", beta=0.0, **overrides))
    engine = ScoringEngine(trainer, forgets)
    trainer.generation_backend = trainer.skill_stage.scoring_backend = engine
    trainer.args.skill_logprob_backend = "vllm"  # the skill stage scores on `engine`
    trainer.train()
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return engine, logs, weights


def test_an_engine_that_forgets_its_cache_scores_skills_inside_the_rollout_session(tiny_model_dir, tiny_tokenizer,
                                                                                   tmp_path):
    early, early_logs, early_weights = train(tiny_model_dir, tiny_tokenizer, tmp_path, forgets=True)
    late, late_logs, late_weights = train(tiny_model_dir, tiny_tokenizer, tmp_path, forgets=False)
    for engine in (early, late):
        scores = [c for c in engine.calls if c[0] == "score"]
        # per step: one pass per skill kind reading the cache, then l_old's rescoring without it
        assert [reuse for _, _, reuse in scores] == [True, True, False] * 2
    rollout_sessions = {s for kind, s, _ in early.calls if kind == "sample"}
    assert {s for kind, s, _ in early.calls if kind == "score"} <= rollout_sessions
    assert early.sessions == 2  # one per step, the scoring inside it
    assert not {s for kind, s, _ in late.calls if kind == "score"} & {s for kind, s, _ in late.calls if kind == "sample"}
    # the order of the stages changes nothing else
    assert [h["loss"] for h in early_logs] == pytest.approx([h["loss"] for h in late_logs], rel=1e-6, abs=1e-9)
    assert all(torch.allclose(early_weights[n], late_weights[n], atol=1e-7) for n in early_weights)
    assert all(h["skill/adv_abs_max"] > 0 for h in early_logs)
    for h in early_logs:  # what engine scoring computed, per scored row
        assert h["skill/engine_prefill_tokens_per_row"] > 0
        assert 0 < h["skill/engine_prefix_cached_frac"] < 1
