"""GRPOTrainer's training features (PEFT, iterable data, evaluation, reference-model sync, completion logging)
train OPIDTrainer exactly like GRPOTrainer when a pipeline only swaps the trainer class."""

from __future__ import annotations

from typing import Any

import pytest
from datasets import Dataset, IterableDataset
from transformers import AutoTokenizer

from .test_dropin import assert_chunked, assert_same_training, grpo_args, length_reward, text_dataset, train_pair

peft = pytest.importorskip("peft", reason="PEFT is an optional dependency of TRL")


def lora(dropout: float = 0.0):
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=dropout,
                           task_type="CAUSAL_LM")


def peft_pipeline(model_dir: str, tmp_path, dropout: float = 0.0, **overrides: Any):
    def build(name: str) -> dict[str, Any]:
        return dict(model=model_dir, reward_funcs=length_reward, train_dataset=text_dataset(),
                    args=grpo_args(tmp_path, name, learning_rate=5e-2, **overrides),
                    processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=lora(dropout))

    return build


def test_peft_lora(tiny_model_dir, tmp_path):
    """LoRA adapters only are trained, and the reference is the base model (adapters disabled)."""
    grpo, opid = train_pair(peft_pipeline(tiny_model_dir, tmp_path, beta=0.05, num_iterations=2))
    assert_same_training(grpo, opid)
    assert opid.weights and all("lora_" in name for name in opid.weights)
    assert opid.trainer.ref_model is None and any(e.get("kl", 0) > 0 for e in opid.history)


def test_peft_lora_chunked(tiny_model_dir, tmp_path):
    grpo, opid = train_pair(peft_pipeline(tiny_model_dir, tmp_path, beta=0.05, per_device_train_batch_size=12,
                                          num_generations=4))
    assert_chunked(grpo, opid)
    assert_same_training(grpo, opid, rel=1e-5, abs_=1e-7, update_rtol=5e-5)


# Dropout with more rows than `max_rows_per_forward` is not compared with GRPOTrainer: the chunked
# loss draws its dropout masks chunk by chunk, GRPO over the whole batch, so the two sample
# different networks. That the chunked gradient is exact for the masks it draws is tested in
# tests/test_trainer_loss.py (test_chunked_loss_with_dropout_replays_the_masks_of_its_weights).


def test_dropout_without_chunking(tiny_model_dir, tmp_path):
    grpo, opid = train_pair(peft_pipeline(tiny_model_dir, tmp_path, dropout=0.1, beta=0.05))
    assert_same_training(grpo, opid)


def streamed_rows(n: int = 8) -> IterableDataset:
    def rows():
        for i in range(n):
            yield {"prompt": [{"role": "user", "content": f"Count to {i}."}]}

    return IterableDataset.from_generator(rows)


def test_iterable_dataset_evaluation_reference_sync_and_completion_logs(tiny_model_dir, tmp_path):
    """A streamed train set, evaluation every step on a held-out set, the reference model pulled towards the
    policy every step (TR-DPO style) and completion tables printed: one run, every feature on."""

    def build(name: str) -> dict[str, Any]:
        eval_rows = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Spell {w}."}]}
                                       for w in ("cat", "sea", "sun", "map")])
        args = grpo_args(tmp_path, name, max_steps=3, beta=0.05, sync_ref_model=True, ref_model_sync_steps=1,
                         ref_model_mixup_alpha=0.6, eval_strategy="steps", eval_steps=1,
                         per_device_eval_batch_size=4, log_completions=True, num_completions_to_print=2)
        return dict(model=tiny_model_dir, reward_funcs=length_reward, args=args, train_dataset=streamed_rows(),
                    eval_dataset=eval_rows, processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))

    grpo, opid = train_pair(build)
    assert_same_training(grpo, opid)
    evaluations = [e for e in grpo.history if "eval_loss" in e]
    assert len(evaluations) == 3 and all("eval_reward" in e for e in evaluations)
    kls = [e["kl"] for e in grpo.history if "kl" in e]
    assert kls[0] == 0 and kls[-1] > 0
    assert opid.trainer.ref_model is not None
    for name, weight in opid.trainer.ref_model.named_parameters():  # synced reference, same in both
        assert weight.detach().equal(grpo.trainer.ref_model.get_parameter(name).detach()), name
