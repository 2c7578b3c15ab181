"""Without an environment OPIDTrainer is a drop-in GRPOTrainer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from opid_trl import EpisodeSkills, OPIDConfig, OPIDTrainer

from .conftest import tiny_config

COMMON = dict(per_device_train_batch_size=4, num_generations=2, max_steps=2, max_completion_length=8,
              learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False,
              seed=0, beta=0.02, gradient_accumulation_steps=2)


def length_reward(completions, **kwargs):
    return [float(len(c[0]["content"])) / 10 for c in completions]


def dataset():
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(8)])


def losses(trainer):
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


class CountingExtractor:
    def __init__(self):
        self.calls = 0
        self.seen = []

    def __call__(self, trajectories):
        self.calls += 1
        self.seen.extend(trajectories)
        return [EpisodeSkills("Answer with digits only.", {0: "Start with 1."} if i % 2 else {})
                for i, _ in enumerate(trajectories)]


def test_same_loss_as_grpo_with_zero_coefficients(tiny_model_dir, tiny_tokenizer, tmp_path):
    # Each trainer is trained right after it is built: both seed the global RNG at construction.
    grpo = GRPOTrainer(model=tiny_model_dir, reward_funcs=length_reward,
                       args=GRPOConfig(output_dir=str(tmp_path / "grpo"), **COMMON),
                       train_dataset=dataset(), processing_class=tiny_tokenizer)
    grpo_losses = losses(grpo)
    extractor = CountingExtractor()
    opid = OPIDTrainer(model=tiny_model_dir, reward_funcs=length_reward,
                       args=tiny_config(tmp_path, skill_coef_episode=0.0, skill_coef_step=0.0, **COMMON),
                       train_dataset=dataset(), processing_class=tiny_tokenizer, skill_extractor=extractor)
    opid_losses = losses(opid)
    assert len(grpo_losses) == 2
    assert opid_losses == pytest.approx(grpo_losses, rel=1e-6, abs=1e-9)
    assert extractor.calls == 0  # coefficients 0: no analysis at all
    assert not any(k.startswith("skill/") for h in opid.state.log_history for k in h)


def test_single_turn_completions_become_one_step_episodes(tiny_model_dir, tiny_tokenizer, tmp_path):
    extractor = CountingExtractor()
    trainer = OPIDTrainer(model=tiny_model_dir, reward_funcs=length_reward,
                          args=tiny_config(tmp_path, skill_coef_episode=0.5, skill_coef_step=0.5, **COMMON),
                          train_dataset=dataset(), processing_class=tiny_tokenizer, skill_extractor=extractor)
    history = losses(trainer)
    assert all(math.isfinite(v) for v in history)
    assert extractor.calls == 2
    first = extractor.seen[0]
    assert len(first.steps) == 1 and first.task.startswith("Count to")
    assert first.outcome == pytest.approx(len(first.steps[0].response) / 10, abs=0.2)
    logged = [h for h in trainer.state.log_history if "skill/adv_abs_max" in h]
    assert logged and all(h["skill/adv_abs_max"] > 0 for h in logged)
    assert all(h["skill/routed_step_frac"] == pytest.approx(0.5) for h in logged)


# ---------------------------------------------------------------------------------------------------------
# A GRPO pipeline that keeps its GRPOConfig and only swaps the trainer class: same losses, metrics, weights.
# The helpers below are shared by tests/test_dropin_*.py, which compare one GRPOTrainer feature each.

#: Logged values that measure wall-clock time, never equal between two runs.
TIMING_KEYS = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second",
               "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def grpo_args(tmp_path: Path, name: str, **overrides: Any) -> GRPOConfig:
    """The GRPOConfig of a small existing pipeline (TRL's defaults otherwise), trained in seconds on a CPU."""
    values: dict[str, Any] = dict(
        output_dir=str(tmp_path / name), per_device_train_batch_size=4, num_generations=2, max_steps=2,
        max_completion_length=8, learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, bf16=False, seed=0,
    )
    values.update(overrides)
    return GRPOConfig(**values)


@dataclass
class Run:
    """What one training run leaves behind: the trainer, its log history, its trainable weights before and after,
    and the number of rows of each forward pass run with grad (to tell whether a loss pass was chunked)."""

    trainer: GRPOTrainer
    history: list[dict[str, Any]]
    initial: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    grad_forward_rows: list[int]


def trainable_weights(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def train_run(trainer_class: type[GRPOTrainer], **kwargs: Any) -> Run:
    """Build ``trainer_class`` and train it at once: both trainers seed the global RNG at construction, so
    building the second trainer before training the first would shift the first one's random stream."""
    trainer = trainer_class(**kwargs)
    initial = trainable_weights(trainer)
    rows: list[int] = []

    def count_rows(module, args, kwargs):
        if torch.is_grad_enabled():
            rows.append((kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).size(0))

    hook = trainer.model.register_forward_pre_hook(count_rows, with_kwargs=True)
    try:
        trainer.train()
    finally:
        hook.remove()
    return Run(trainer, list(trainer.state.log_history), initial, trainable_weights(trainer), rows)


def assert_chunked(grpo: Run, opid: Run) -> None:
    """OPIDTrainer's loss pass ran in chunks of at most `max_rows_per_forward` rows where GRPO's did not."""
    limit = opid.trainer.args.max_rows_per_forward
    assert opid.grad_forward_rows and max(opid.grad_forward_rows) <= limit < max(grpo.grad_forward_rows)


def train_pair(build: Callable[[str], dict[str, Any]]) -> tuple[Run, Run]:
    """Train GRPOTrainer, then OPIDTrainer, each on ``build(name)``: fresh model, data and config per run, so
    neither run can see state the other one left on a shared object (a tokenizer's response template, say)."""
    return train_run(GRPOTrainer, **build("grpo")), train_run(OPIDTrainer, **build("opid"))


def comparable(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in TIMING_KEYS}


def assert_same_training(grpo: Run, opid: Run, rel: float = 1e-6, abs_: float = 1e-9,
                         update_rtol: float | None = None) -> None:
    """Same logged entries (same metric names: OPID adds none without skills), same values, same final weights,
    and weights that training did move (so that equal weights mean something).

    With ``update_rtol``, each tensor's update (final - initial weights) is compared as a whole instead of
    element by element: |dW_opid - dW_grpo| <= update_rtol * |dW_grpo|. That is the check for gradients equal up
    to float rounding: Adam divides by the gradient's running scale, so where one element's gradient is a sum
    that nearly cancels, rounding moves that element's update by a relative 1e-3 while the update of the whole
    tensor stays within ~1e-5."""
    assert isinstance(opid.trainer.args, OPIDConfig) and opid.trainer.skill_extractor is None
    assert [sorted(comparable(e)) for e in opid.history] == [sorted(comparable(e)) for e in grpo.history]
    assert any("loss" in e for e in grpo.history), "the run logged no loss"
    for expected, got in zip(grpo.history, opid.history):
        for key, value in comparable(expected).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert got[key] == pytest.approx(value, rel=rel, abs=abs_, nan_ok=True), (key, expected, got)
            else:
                assert got[key] == value, key
    assert opid.weights.keys() == grpo.weights.keys()
    assert any(not torch.equal(grpo.initial[n], w) for n, w in grpo.weights.items()), "training moved no weight"
    for name, expected in grpo.weights.items():
        torch.testing.assert_close(opid.initial[name], grpo.initial[name], rtol=0, atol=0)
        if update_rtol is None:
            torch.testing.assert_close(opid.weights[name], expected, rtol=rel, atol=abs_,
                                       msg=lambda m, name=name: f"{name}: {m}")
        else:
            expected_update = expected - grpo.initial[name]
            error = (opid.weights[name] - opid.initial[name] - expected_update).norm()
            assert error <= update_rtol * expected_update.norm() + abs_, (name, error, expected_update.norm())
    assert grpo.trainer.state.global_step == opid.trainer.state.global_step


def text_dataset(n: int = 8) -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(n)])


def text_pipeline(model_dir: str, tmp_path: Path, reward_funcs: Any = length_reward,
                  **overrides: Any) -> Callable[[str], dict[str, Any]]:
    """Trainer arguments of a plain text GRPO pipeline (length reward by default, conversational prompts)."""

    def build(name: str) -> dict[str, Any]:
        return dict(model=model_dir, reward_funcs=reward_funcs, args=grpo_args(tmp_path, name, **overrides),
                    train_dataset=text_dataset(), processing_class=AutoTokenizer.from_pretrained(model_dir))

    return build


def test_grpo_config_becomes_an_opid_config_with_skills_off(tiny_model_dir, tmp_path):
    args = grpo_args(tmp_path, "opid")
    trainer = OPIDTrainer(model=tiny_model_dir, reward_funcs=length_reward, args=args, train_dataset=text_dataset())
    assert type(trainer.args) is OPIDConfig
    assert all(getattr(trainer.args, f.name) == getattr(args, f.name) for f in dataclasses.fields(GRPOConfig))
    assert trainer.skill_extractor is None and trainer.environment_factory is None


def test_grpo_config_with_a_skill_extractor_uses_opid_defaults(tiny_model_dir, tmp_path):
    """A GRPOConfig carries no OPID knob, so an extractor runs with OPID's default coefficients."""
    extractor = CountingExtractor()
    trainer = OPIDTrainer(model=tiny_model_dir, reward_funcs=length_reward,
                          args=grpo_args(tmp_path, "opid", max_steps=1), train_dataset=text_dataset(),
                          skill_extractor=extractor)
    trainer.train()
    assert trainer.args.skill_coef_episode == OPIDConfig.skill_coef_episode > 0
    assert extractor.calls == 1
    assert any("skill/adv_abs_max" in e for e in trainer.state.log_history)


def test_plain_grpo_pipeline_trains_identically(tiny_model_dir, tmp_path):
    grpo, opid = train_pair(text_pipeline(tiny_model_dir, tmp_path, beta=0.02, gradient_accumulation_steps=2))
    assert_same_training(grpo, opid)
