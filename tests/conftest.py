"""Shared test setup: offline, single-threaded, and one tiny random model saved once per session."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny random Llama + BPE tokenizer with a chat template (built, not downloaded)."""
    from opid_trl.testing import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def tiny_config(tmp_path, **overrides):
    """An OPIDConfig small enough to train in seconds on a CPU."""
    from opid_trl import OPIDConfig

    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        max_completion_length=10,
        max_turns=3,
        max_prompt_length=512,
        max_rows_per_forward=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    values.update(overrides)
    return OPIDConfig(**values)
