"""Per-token advantages reach TRL's loss, and the chunked loss pass has the exact gradient."""

import pytest
import torch
from datasets import Dataset

from opid_trl import OPIDTrainer

from .conftest import tiny_config


def length_reward(completions, **kwargs):
    return [float(len(c[0]["content"] if isinstance(c, list) else c)) / 10 for c in completions]


def make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, **overrides):
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Say {i}."}]} for i in range(4)])
    trainer = OPIDTrainer(model=tiny_model_dir, reward_funcs=length_reward,
                          args=tiny_config(tmp_path, **overrides), train_dataset=dataset,
                          processing_class=tiny_tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`; the tests call the loss directly
    return trainer


def batch(trainer, advantages):
    torch.manual_seed(0)
    rows, width = advantages.shape
    vocab = trainer.model.config.vocab_size
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[0, -1] = 0
    return {
        "prompt_ids": torch.randint(3, vocab, (rows, 5)),
        "prompt_mask": torch.ones(rows, 5, dtype=torch.long),
        "completion_ids": torch.randint(3, vocab, (rows, width)),
        "completion_mask": mask,
        "advantages": advantages,
        "num_items_in_batch": mask.sum(),
    }


def test_token_level_advantages_reach_the_loss(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, beta=0.0, loss_type="dapo")
    advantages = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    inputs = batch(trainer, advantages)
    trainer.model.train()
    loss = trainer._compute_loss(trainer.model, inputs)
    # ratio 1 (old log-probs = current), dapo: -sum(A * mask) / tokens = -(1 + 3) / 7
    assert loss.item() == pytest.approx(-4 / 7, abs=1e-6)
    # a per-sequence reduction of the same advantages would give another value
    per_row = advantages.mean(dim=1, keepdim=True).expand_as(advantages)
    assert trainer._compute_loss(trainer.model, {**inputs, "advantages": per_row}).item() != pytest.approx(-4 / 7)
    # and the gradient of each token's log-prob is exactly its own advantage
    logps_leaf = torch.zeros(2, 4, requires_grad=True)
    trainer._precomputed_loss_inputs = (logps_leaf, torch.zeros(2, 4, requires_grad=True))
    try:
        grad = torch.autograd.grad(trainer._compute_loss(trainer.model, inputs), logps_leaf)[0]
    finally:
        trainer._precomputed_loss_inputs = None
    assert torch.allclose(grad, -advantages * inputs["completion_mask"] / 7)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo"])
def test_chunked_loss_pass_has_the_exact_gradient(tiny_model_dir, tiny_tokenizer, tmp_path, loss_type):
    grads, losses = [], []
    advantages = torch.tensor([[1.0, -0.5, 0.2, 0.0], [0.3, 0.3, -1.0, 2.0], [0.0, 1.0, 1.0, 1.0],
                               [-2.0, 0.1, 0.0, 0.4], [0.5, 0.5, 0.5, 0.5]])
    for chunk in (16, 2):
        trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, beta=0.05, loss_type=loss_type,
                               max_rows_per_forward=chunk, entropy_coef=0.01)
        inputs = batch(trainer, advantages)
        inputs["old_per_token_logps"] = torch.full((5, 4), -6.0)
        inputs["ref_per_token_logps"] = torch.full((5, 4), -6.1)
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert grads[0].abs().sum() > 0


def test_non_finite_loss_stops_before_the_step(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, beta=0.0)
    inputs = batch(trainer, torch.tensor([[float("nan"), 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    trainer.model.train()
    with pytest.raises(FloatingPointError, match="weights and the last checkpoint"):
        trainer.compute_loss(trainer.model, inputs)


def test_chunked_loss_with_dropout_replays_the_masks_of_its_weights(tiny_model_dir, tiny_tokenizer, tmp_path):
    """With dropout, each chunk's grad forward must draw the masks of the no-grad pass that gave the
    per-token loss weights: the gradient is then exactly that of the loss over those chunk forwards."""
    from trl import GRPOTrainer

    advantages = torch.tensor([[1.0, -0.5, 0.2, 0.0], [0.3, 0.3, -1.0, 2.0], [0.0, 1.0, 1.0, 1.0],
                               [-2.0, 0.1, 0.0, 0.4], [0.5, 0.5, 0.5, 0.5]])
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, beta=0.0, max_rows_per_forward=2,
                           entropy_coef=0.01)
    model = trainer.model
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    model.train()
    inputs = batch(trainer, advantages)
    inputs["old_per_token_logps"] = torch.full((5, 4), -6.0)
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)

    def forward(rows):
        return GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, input_ids[rows], attention_mask[rows], 4,
                                                              compute_entropy=True)[:2]

    assert not torch.equal(forward(slice(0, 2))[0], forward(slice(0, 2))[0])  # dropout is really on

    def gradient(loss):  # the chunked loss back-propagates its first chunks itself: grads start at 0 before it
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    model.zero_grad()
    torch.manual_seed(123)  # reference: the loss over the chunks' own grad forwards, one graph
    parts = [forward(slice(start, start + 2)) for start in range(0, 5, 2)]
    trainer._precomputed_loss_inputs = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    try:
        reference_loss = trainer._compute_loss(model, inputs)
    finally:
        trainer._precomputed_loss_inputs = None
    reference = gradient(reference_loss)
    model.zero_grad()
    torch.manual_seed(123)  # the chunked path: no-grad pass, weights, then replayed grad forwards
    loss = trainer.compute_loss(model, inputs)
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-6)
    assert torch.allclose(gradient(loss), reference, rtol=1e-5, atol=1e-8)
