"""Every GRPO loss and importance-sampling / masking option trains OPIDTrainer exactly like GRPOTrainer.

Each test trains both trainers from the same seed on a GRPOConfig (no environment, no skill extractor) and
compares every logged value and the final weights. Off-policy options only matter when the policy has moved
since sampling, so the runs use `num_iterations=2` (the second pass over a generation batch is off-policy).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import torch
from trl import GRPOConfig

from opid_trl.testing import SPECIAL_TOKENS

from .test_dropin import assert_chunked, assert_same_training, length_reward, text_pipeline, train_pair

EOS_ID = SPECIAL_TOKENS.index("<|im_end|>")  # the tiny BPE numbers its special tokens first, in this order
#: Makes the tiny random model stop early in some completions (and run to the budget in others).
EOS_BIAS = {"sequence_bias": {(EOS_ID,): 3.0}}


def grpo_choices(name: str) -> list[str]:
    """The values a GRPOConfig field accepts, from its metadata: `choices` when TRL gives them, else the
    "Supported values are ..." sentence of its help (TRL 1.16's `loss_type` has only the sentence)."""
    metadata = {f.name: f for f in dataclasses.fields(GRPOConfig)}[name].metadata
    if "choices" in metadata:
        return list(metadata["choices"])
    sentence = re.search(r"Supported values are (.*?)\.\s", metadata["help"])
    assert sentence, f"GRPOConfig.{name}: no choices in its metadata"
    return re.findall(r"'([a-z0-9_]+)'", sentence.group(1))


LOSS_TYPES = grpo_choices("loss_type")


def loss_options(loss_type: str) -> dict[str, Any]:
    """Off-policy, KL and asymmetric clipping on, with the importance level each loss is meant for."""
    level = "sequence" if loss_type == "luspo" else "token"
    return dict(loss_type=loss_type, importance_sampling_level=level, num_iterations=2, beta=0.02,
                epsilon_high=0.28, gradient_accumulation_steps=2)


def test_loss_types_come_from_the_config_metadata():
    assert {"grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"} <= set(LOSS_TYPES)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_type(tiny_model_dir, tmp_path, loss_type):
    grpo, opid = train_pair(text_pipeline(tiny_model_dir, tmp_path, **loss_options(loss_type)))
    assert_same_training(grpo, opid)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_type_chunked(tiny_model_dir, tmp_path, loss_type):
    """12 rows per micro-step, above OPIDConfig's default `max_rows_per_forward=8`: OPIDTrainer back-propagates
    8 + 4 rows with per-token weights from the full loss, which must give GRPO's gradient.

    Compared as a gradient: plain SGD makes each update proportional to it (Adam divides by the gradient's
    scale, so float rounding in near-zero entries would move whole updates), and float64 weights leave only
    the rounding of TRL's fused LM head, which runs in float32 tiles: measured ~1e-7 on the update, asserted 1e-6;
    the logged loss, a float32 sum, differed by 1.0e-6 relative on one machine, so logged values get 5e-6."""
    grpo, opid = train_pair(text_pipeline(tiny_model_dir, tmp_path, per_device_train_batch_size=12, num_generations=4,
                                          optim="sgd", model_init_kwargs={"dtype": torch.float64},
                                          **loss_options(loss_type)))
    assert opid.trainer.args.max_rows_per_forward == 8
    assert next(opid.trainer.model.parameters()).dtype == torch.float64
    assert_chunked(grpo, opid)
    assert_same_training(grpo, opid, rel=5e-6, abs_=1e-9, update_rtol=1e-6)


#: Importance-sampling, masking and advantage options that need no vLLM engine, grouped into few runs.
OPTIONS: dict[str, dict[str, Any]] = {
    "truncation_entropy_delta": dict(mask_truncated_completions=True, generation_kwargs=EOS_BIAS,
                                     max_completion_length=12, top_entropy_quantile=0.5, delta=1.5,
                                     epsilon_high=0.28, num_iterations=2, beta=0.02, scale_rewards="batch"),
    "off_policy_mask_bias_corrected_kl": dict(off_policy_mask_threshold=0.01, use_bias_correction_kl=True, beta=0.05,
                                              num_iterations=2, scale_rewards="none", loss_type="grpo"),
    "sequence_level_gspo": dict(importance_sampling_level="sequence", loss_type="grpo", num_iterations=2,
                                epsilon=3e-4, epsilon_high=4e-4, scale_rewards=False),
    "entropy_bonus_adaptive": dict(entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=1.0,
                                   num_iterations=2, top_entropy_quantile=0.8),
    "steps_per_generation": dict(steps_per_generation=2, gradient_accumulation_steps=1, max_steps=3, beta=0.02),
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_sampling_and_masking_options(tiny_model_dir, tmp_path, options):
    grpo, opid = train_pair(text_pipeline(tiny_model_dir, tmp_path, **options))
    assert_same_training(grpo, opid)


def vowel_reward(completions: list, **kwargs: Any) -> list[float | None]:
    """A second objective, unscorable (None) on empty completions as TRL allows."""
    return [sum(ch in "aeiou" for ch in c[0]["content"]) / 5 if c[0]["content"] else None for c in completions]


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_weighted_reward_functions(tiny_model_dir, tmp_path, aggregation):
    grpo, opid = train_pair(text_pipeline(tiny_model_dir, tmp_path, reward_funcs=[length_reward, vowel_reward],
                                          reward_weights=[1.0, 0.5], multi_objective_aggregation=aggregation,
                                          beta=0.02))
    assert_same_training(grpo, opid)
    assert any("rewards/vowel_reward/mean" in e for e in opid.history)


def test_truncated_completions_are_masked_in_both(tiny_model_dir, tmp_path):
    """The EOS bias does make some completions stop early, so masking the truncated ones is exercised."""
    grpo, _ = train_pair(text_pipeline(tiny_model_dir, tmp_path, **OPTIONS["truncation_entropy_delta"]))
    clipped = [e["completions/clipped_ratio"] for e in grpo.history if "completions/clipped_ratio" in e]
    assert clipped and all(0.0 < c < 1.0 for c in clipped), clipped


def test_chunked_options(tiny_model_dir, tmp_path):
    """Entropy bonus and masking under OPIDTrainer's chunked loss pass (the entropy gradient is chunked too), in a
    pipeline's float32 with Adam: rounding differs between one 12-row forward and 8 + 4 rows and Adam amplifies it
    in near-zero gradient entries (measured ~1e-5 of each update), hence the looser bound."""
    options = dict(OPTIONS["truncation_entropy_delta"], entropy_coef=0.01, per_device_train_batch_size=12,
                   num_generations=4)
    grpo, opid = train_pair(text_pipeline(tiny_model_dir, tmp_path, **options))
    assert_chunked(grpo, opid)
    assert_same_training(grpo, opid, rel=1e-5, abs_=1e-7, update_rtol=5e-5)
