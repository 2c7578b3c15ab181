"""OPIDConfig validation: bad values fail at construction with the field's name."""

import pytest

from opid_trl import OPIDConfig

BASE = dict(output_dir="/tmp/opid-config-test", use_cpu=True, report_to=[], bf16=False)


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_turns", 0),
        ("history_length", -1),
        ("max_prompt_length", 0),
        ("max_completion_length", 0),
        ("invalid_action_penalty", -0.1),
        ("env_step_workers", -1),
        ("max_rows_per_forward", 0),
        ("outcome_norm", "zscore"),
        ("outcome_grouping", "episode"),
        ("skill_coef_episode", -1e-3),
        ("skill_coef_step", float("nan")),
        ("skill_routing", "random"),
        ("skill_adv_clip", 0.0),
        ("skill_start_step", -1),
        ("max_step_skills", -2),
        ("analysis_gamma", 1.5),
        # booleans where a count is expected: True is an int to Python and would count as 1
        ("max_turns", True),
        ("history_length", False),
        ("max_rows_per_forward", True),
        ("env_step_workers", True),
        ("max_prompt_length", True),
        ("max_step_skills", True),
        ("skill_start_step", False),
        # NaN passes every `<` check, infinities make every advantage or update infinite
        ("skill_coef_episode", float("inf")),
        ("invalid_action_penalty", float("nan")),
        ("skill_adv_clip", float("nan")),
        ("skill_adv_clip", float("inf")),
        ("analysis_gamma", float("nan")),
        ("eval_temperature", float("nan")),
        ("success_threshold", float("nan")),
        ("learning_rate", float("nan")),
        ("learning_rate", float("inf")),
        ("learning_rate", "5e-6"),
        ("beta", -0.1),
        ("beta", float("nan")),
        ("temperature", 0.0),
        ("skill_adv_normalize", "yes"),
        ("log_analyses", 1),
    ],
)
def test_invalid_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"OPIDConfig.{field}"):
        OPIDConfig(**BASE, **{field: value})


def test_end_step_must_follow_start_step():
    with pytest.raises(ValueError, match="OPIDConfig.skill_end_step"):
        OPIDConfig(**BASE, skill_start_step=5, skill_end_step=5)


def test_defaults_follow_the_reference():
    config = OPIDConfig(**BASE)
    assert config.skill_coef_episode == config.skill_coef_step == 1e-3
    assert config.skill_routing == "critical_first"
    assert config.outcome_norm is None and config.episode_outcome_norm == "mean_std_norm"
    assert config.outcome_grouping == "trajectory"
    assert config.invalid_action_penalty == 0.1 and config.analysis_gamma == 0.95
    assert config.max_step_skills == 5 and config.max_completion_length == 512
    assert config.loss_type == "dapo"  # token-mean aggregation, as in the reference


def test_skill_window():
    config = OPIDConfig(**BASE, skill_start_step=2, skill_end_step=4)
    assert [config.skill_window_open(s) for s in range(6)] == [False, False, True, True, False, False]
    assert not OPIDConfig(**BASE, skill_coef_episode=0, skill_coef_step=0).skill_window_open(3)


def test_grpo_validation_still_applies():
    with pytest.raises(ValueError):
        OPIDConfig(**BASE, num_generations=1)


@pytest.mark.parametrize(
    "settings,field",
    [
        (dict(skill_logprob_backend="engine"), "skill_logprob_backend"),
        (dict(skill_logprob_backend="vllm"), "skill_logprob_backend"),  # needs use_vllm
        (dict(async_episodes=True), "async_episodes"),  # needs a server
        (dict(async_episodes=True, use_vllm=True, vllm_mode="colocate"), "async_episodes"),
        (dict(vllm_dtype="float64"), "vllm_dtype"),
        (dict(vllm_block_size=0), "vllm_block_size"),
        (dict(vllm_block_size=32.5), "vllm_block_size"),
    ],
)
def test_vllm_options_are_checked(settings, field):
    with pytest.raises(ValueError, match=f"OPIDConfig.{field}"):
        OPIDConfig(**BASE, **settings)


def test_use_vllm_without_vllm_names_the_field(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ValueError, match="OPIDConfig.use_vllm: vLLM is not installed"):
        OPIDConfig(**BASE, use_vllm=True)


def test_use_vllm_with_a_broken_vllm_names_the_field(monkeypatch):
    """Found but failing on import (a build for another torch or CUDA) is refused at construction too."""
    import importlib.machinery
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: importlib.machinery.ModuleSpec("vllm", None) if name == "vllm"
                        else real(name, *a))
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises
    with pytest.raises(ValueError, match="OPIDConfig.use_vllm: vLLM is installed but cannot be imported"):
        OPIDConfig(**BASE, use_vllm=True)


@pytest.mark.parametrize("field,value", [("skill_end_step", 2.5), ("skill_end_step", True)])
def test_end_step_must_be_a_whole_step(field, value):
    with pytest.raises(ValueError, match=f"OPIDConfig.{field}"):
        OPIDConfig(**BASE, **{field: value})


def test_learning_rate_zero_and_beta_zero_stay_valid():
    """0 freezes the weights (used to time the overhead alone) and 0 drops the KL term: both legitimate."""
    config = OPIDConfig(**BASE, learning_rate=0.0, beta=0.0)
    assert config.learning_rate == 0.0 and config.beta == 0.0


@pytest.mark.parametrize("scale_rewards,norm", [("group", "mean_std_norm"), ("batch", "batch_std_norm"),
                                                ("none", "mean_norm"), (False, "mean_norm")])
def test_scale_rewards_sets_the_episode_outcome_norm(scale_rewards, norm):
    assert OPIDConfig(**BASE, scale_rewards=scale_rewards).episode_outcome_norm == norm


def test_explicit_outcome_norm_wins_over_the_default_scale_rewards():
    assert OPIDConfig(**BASE, outcome_norm="mean_norm").episode_outcome_norm == "mean_norm"


def test_contradicting_outcome_norm_and_scale_rewards_fail():
    with pytest.raises(ValueError, match="OPIDConfig.outcome_norm.*scale_rewards"):
        OPIDConfig(**BASE, outcome_norm="mean_std_norm", scale_rewards="none")


# ---------------------------------------------------------------------------- settings that would hang at scale
def test_colocated_vllm_with_tensor_parallelism_is_refused():
    pytest.importorskip("vllm")
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size.*each rank's own turns"):
        OPIDConfig(**BASE, use_vllm=True, vllm_mode="colocate", vllm_tensor_parallel_size=2)


@pytest.mark.parametrize("source", ["dict", "file", "accelerate"])
def test_zero3_without_gathering_for_generation_is_refused(tmp_path, monkeypatch, source):
    import json

    zero3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}
    kwargs = {}
    if source == "dict":
        kwargs["deepspeed"] = zero3
    elif source == "file":
        path = tmp_path / "zero3.json"
        path.write_text(json.dumps(zero3))
        kwargs["deepspeed"] = str(path)
    else:
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ValueError, match="ds3_gather_for_generation.*hang"):
        OPIDConfig(**BASE, ds3_gather_for_generation=False, **kwargs)


def test_gathering_off_without_zero3_is_fine(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    from opid_trl.config import _deepspeed_zero_stage

    assert _deepspeed_zero_stage(None) == 2 and _deepspeed_zero_stage({"zero_optimization": {"stage": 3}}) == 3
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert _deepspeed_zero_stage(None) is None
    assert OPIDConfig(**BASE, ds3_gather_for_generation=False).ds3_gather_for_generation is False


def test_the_policy_cannot_be_its_own_extractor_with_sharded_parameters(tmp_path, monkeypatch):
    import yaml

    from opid_trl import OPIDTrainer
    from opid_trl.config import sharded_parameters
    from opid_trl.runs.run_config import ConfigError, build_skill_extractor, load_run_config
    from opid_trl.skills.extractors import PolicySkillExtractor

    zero3 = {"zero_optimization": {"stage": 3}}
    assert sharded_parameters(zero3, None) == "ZeRO-3" and sharded_parameters(None, "full_shard") == "FSDP"
    assert sharded_parameters({"zero_optimization": {"stage": 2}}, []) is None
    # a run file: refused while reading it, naming the field
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "environment": {"name": "fetch"}, "skill_extractor": {"name": "self"},
                                    "training": {"deepspeed": zero3}}))
    with pytest.raises(ConfigError, match="skill_extractor.name: 'self'.*ZeRO-3"):
        build_skill_extractor(load_run_config(path))
    # from Python: refused before any model is loaded (this model path does not exist)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="skill_extractor: 'self'.*FSDP"):
        OPIDTrainer(model=str(tmp_path / "no-such-model"), args=OPIDConfig(**BASE), environment="fetch",
                    skill_extractor=PolicySkillExtractor())


def test_num_generations_zero_is_named_not_a_division_by_zero():
    with pytest.raises(ValueError, match="num_generations: must be an integer >= 2"):
        OPIDConfig(**BASE, num_generations=0)


def test_a_tokenizer_without_a_chat_template_is_named_before_training(tiny_model_dir, tiny_tokenizer, tmp_path):
    import copy

    from datasets import Dataset

    from opid_trl import OPIDTrainer

    from .conftest import tiny_config

    tokenizer = copy.deepcopy(tiny_tokenizer)  # the fixture is shared by the whole session
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="processing_class: the tokenizer has no chat template"):
        OPIDTrainer(model=tiny_model_dir, processing_class=tokenizer, environment="fetch",
                    args=tiny_config(tmp_path), train_dataset=Dataset.from_list([{"seed": 0}]))
    # a model folder whose tokenizer has none: found from its tokenizer files, before the weights load
    import shutil

    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer.save_pretrained(folder)
    for leftover in folder.glob("chat_template.*"):
        leftover.unlink()
    (folder / "model.safetensors").write_bytes(b"not weights")  # loading them would fail differently
    with pytest.raises(ValueError, match="processing_class: the tokenizer has no chat template"):
        OPIDTrainer(model=str(folder), environment="fetch", args=tiny_config(tmp_path),
                    train_dataset=Dataset.from_list([{"seed": 0}]))
