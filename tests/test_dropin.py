"""Without an environment OPIDTrainer is a drop-in GRPOTrainer."""

import math

import pytest
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from opid_trl import EpisodeSkills, OPIDTrainer

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
