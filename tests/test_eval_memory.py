"""Evaluation's loss pass holds at most `max_rows_per_forward` rows in one forward, as training does."""

import torch
from datasets import Dataset

from opid_trl import OPIDTrainer

from .conftest import tiny_config


def test_evaluation_forwards_are_chunked(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1, beta=0.0, max_rows_per_forward=2,
                                           per_device_eval_batch_size=4, num_generations_eval=1, max_turns=3),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(4)]),
                          eval_dataset=Dataset.from_list([{"seed": 100 + i} for i in range(4)]))
    rows: list[int] = []
    in_loss = []
    compute_loss = trainer.compute_loss

    def counted_loss(*args, **kwargs):  # only the loss pass's forwards, not the rollout's generation
        in_loss.append(True)
        try:
            return compute_loss(*args, **kwargs)
        finally:
            in_loss.pop()

    def count_rows(module, args, kwargs):
        if in_loss:
            assert not torch.is_grad_enabled()
            rows.append((kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).size(0))

    trainer.compute_loss = counted_loss
    hook = trainer.model.register_forward_pre_hook(count_rows, with_kwargs=True)
    try:
        metrics = trainer.evaluate()
    finally:
        hook.remove()
    assert metrics["eval_env/rows"] > 2  # 4 episodes of up to 3 turns: more rows than one chunk
    assert rows and max(rows) <= 2
