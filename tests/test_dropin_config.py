"""`OPIDConfig.from_grpo_config`: a pipeline's GRPOConfig becomes an OPIDConfig with every field unchanged.

TrainingArguments / GRPOConfig `__post_init__` rewrites several values (enums, `report_to`, deprecated aliases,
the derived `steps_per_generation` / `generation_batch_size` pair), so the configs below are the ones whose
post-init values could fail to survive a second construction.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
from transformers import TrainingArguments
from trl import GRPOConfig

from opid_trl import OPIDConfig

BASE: dict[str, Any] = dict(output_dir="opid-dropin-config", use_cpu=True, bf16=False, report_to=[])

#: Init values that `__post_init__` transforms; each case is converted on its own.
TRANSFORMED: dict[str, dict[str, Any]] = {
    "defaults": {},
    "report_to_all": dict(report_to="all"),
    "report_to_none": dict(report_to="none"),
    "report_to_string": dict(report_to="tensorboard"),
    "user_home_output_dir": dict(output_dir="~/opid-dropin-config"),
    "eval_steps_from_logging_steps": dict(eval_strategy="steps", logging_steps=3, per_device_eval_batch_size=8),
    "best_model_derives_metric": dict(eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=4,
                                      load_best_model_at_end=True),
    "enums": dict(lr_scheduler_type="cosine", logging_strategy="epoch", save_strategy="no", hub_strategy="end",
                  optim="adamw_torch"),
    "scale_rewards_true": dict(scale_rewards=True),
    "scale_rewards_false": dict(scale_rewards=False),
    "scale_rewards_batch": dict(scale_rewards="batch"),
    "pad_to_multiple_of_auto": dict(pad_to_multiple_of="auto"),
    "pad_to_multiple_of_string": dict(pad_to_multiple_of="16"),
    "generation_batch_size_set": dict(per_device_train_batch_size=4, num_generations=4, generation_batch_size=16),
    "steps_per_generation_set": dict(per_device_train_batch_size=4, num_generations=4, steps_per_generation=3),
    "gradient_accumulation": dict(gradient_accumulation_steps=4),
    "deprecated_importance_sampling_cap": dict(vllm_importance_sampling_cap=3.0),
    "deprecated_transformers_paged": dict(use_transformers_paged=True),
    "deprecated_gradient_checkpointing": dict(gradient_checkpointing=False,
                                              gradient_checkpointing_kwargs={"use_reentrant": False}),
    "torch_compile_from_backend": dict(torch_compile_backend="inductor"),
    "input_tokens_seen_bool": dict(include_num_input_tokens_seen=True),
    "debug_string": dict(debug="underflow_overflow"),
    "dict_fields_from_json": dict(lr_scheduler_kwargs='{"num_cycles": 2}', lr_scheduler_type="cosine_with_restarts"),
    "accelerator_config_dict": dict(accelerator_config={"split_batches": False, "even_batches": True}),
    "grpo_knobs": dict(loss_type="grpo", beta=0.04, epsilon=0.3, epsilon_high=0.4, delta=2.0, num_iterations=2,
                       top_entropy_quantile=0.5, mask_truncated_completions=True, importance_sampling_level="sequence",
                       reward_weights=[1.0, 0.5], temperature=0.7, top_k=20, sync_ref_model=True,
                       ref_model_sync_steps=5, log_completions=True, num_completions_to_print=2,
                       generation_kwargs={"repetition_penalty": 1.1}, chat_template_kwargs={"enable_thinking": False}),
}


def grpo_config(**overrides: Any) -> GRPOConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated values warn, as they would in the pipeline
        return GRPOConfig(**{**BASE, **overrides})


def assert_fields_equal(converted: OPIDConfig, source: GRPOConfig) -> None:
    """Every GRPOConfig field has the same value, and the same type (an enum stays an enum, a list a list)."""
    for f in dataclasses.fields(GRPOConfig):
        expected, got = getattr(source, f.name), getattr(converted, f.name)
        assert got == expected and type(got) is type(expected), (f.name, expected, got)


@pytest.mark.parametrize("overrides", TRANSFORMED.values(), ids=TRANSFORMED.keys())
def test_every_grpo_field_survives(overrides):
    source = grpo_config(**overrides)
    converted = OPIDConfig.from_grpo_config(source)
    assert type(converted) is OPIDConfig
    assert_fields_equal(converted, source)
    assert converted.generation_batch_size == source.generation_batch_size
    serialized = converted.to_dict()  # what a checkpoint's training_args / a logger records
    assert all(serialized[k] == v for k, v in source.to_dict().items())


@pytest.mark.parametrize("overrides", TRANSFORMED.values(), ids=TRANSFORMED.keys())
def test_rebuild_round_trips_without_copying(overrides):
    """The rebuild through `__init__` alone already gives every value back: the copy `from_grpo_config` makes of
    fields that still differ is only for values changed by hand after construction."""
    source = grpo_config(**overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = OPIDConfig(**OPIDConfig._grpo_init_values(source))
    assert_fields_equal(rebuilt, source)


def test_opid_fields_get_opid_defaults():
    converted = OPIDConfig.from_grpo_config(grpo_config())
    defaults = OPIDConfig(**BASE)
    grpo_names = {f.name for f in dataclasses.fields(GRPOConfig)}
    opid_only = [f.name for f in dataclasses.fields(OPIDConfig) if f.name not in grpo_names]
    assert opid_only, "OPIDConfig adds no field?"
    for name in opid_only:
        assert getattr(converted, name) == getattr(defaults, name), name


def test_rebuild_does_not_warn_again():
    source = grpo_config(vllm_importance_sampling_cap=3.0, gradient_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OPIDConfig.from_grpo_config(source)
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]


def test_values_changed_after_construction_are_kept():
    source = grpo_config(per_device_train_batch_size=4, num_generations=2)
    source.temperature = 0.3
    source.report_to = "none"  # never normalised: GRPOTrainer would see the string as it is
    source.learning_rate = 5e-3
    converted = OPIDConfig.from_grpo_config(source)
    assert_fields_equal(converted, source)


@dataclass
class PipelineConfig(GRPOConfig):
    """A pipeline's own GRPOConfig subclass, with a field its callbacks read."""

    dataset_name: str = field(default="gsm8k")


def test_subclass_fields_and_extra_attributes_are_carried():
    source = PipelineConfig(**BASE, dataset_name="math")
    source.run_tag = "nightly"
    converted = OPIDConfig.from_grpo_config(source)
    assert_fields_equal(converted, source)
    assert converted.dataset_name == "math" and converted.run_tag == "nightly"


def test_opid_config_is_returned_as_is():
    config = OPIDConfig(**BASE, skill_coef_step=0.5)
    assert OPIDConfig.from_grpo_config(config) is config


def test_other_arguments_are_refused():
    with pytest.raises(TypeError, match="must be a GRPOConfig, got TrainingArguments"):
        OPIDConfig.from_grpo_config(TrainingArguments(**BASE))
