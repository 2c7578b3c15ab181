"""TRL's sampler-vs-trainer importance correction on step rows without a forward of its own: when
aligned, the loss forward's detached log-probs are the old policy's, so the weights are computed in
the loss step. Same losses and weights as the explicit old-policy pass, for every mode, and no pass.

The rollout engine is the transformers backend reporting made-up sampler log-probs, as a vLLM engine
in another precision would (the correction is on only with `use_vllm`, which the trainer is told).
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer

from opid_trl import OPIDTrainer
from opid_trl.generation.base import Sample

from .conftest import tiny_config
from .dist_worker import ShapedFetch


class MadeUpSamplerLogprobs:
    """A backend's samples, with sampler log-probs that differ from the trainer's token by token."""

    def __init__(self, inner) -> None:
        self.inner, self.thread_safe = inner, inner.thread_safe

    def session(self):
        return self.inner.session()

    def sample(self, prompt_ids, max_new_tokens=None):
        return [Sample(s.token_ids, [-6.0 + 0.4 * ((token * 7 + i) % 5 - 2) for i, token in enumerate(s.token_ids)])
                for s in self.inner.sample(prompt_ids, max_new_tokens)]

    def generate(self, prompt_ids, max_new_tokens=None):
        return [s.token_ids for s in self.sample(prompt_ids, max_new_tokens)]


def train(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch, mode: str, fused: bool, **overrides):
    """Two steps; returns the losses, the final weights, the number of old-policy passes, every
    importance ratio TRL's loss read and the logged sampler-vs-trainer gaps."""
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment=ShapedFetch,
                          args=tiny_config(tmp_path / f"{mode}-{fused}", beta=0.0, vllm_importance_sampling_mode=mode,
                                           vllm_importance_sampling_clip_min=0.5 if "mask" in mode else None,
                                           vllm_importance_sampling_clip_max=3.0, **overrides),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(8)]))
    trainer.generation_backend = MadeUpSamplerLogprobs(trainer.generation_backend)
    trainer.use_vllm = True  # the correction applies to vLLM rollouts only
    settings = trainer._policy_pass_settings
    trainer._policy_pass_settings = lambda *a: {**settings(*a), "fuse_correction": fused}
    passes, ratios = [], []
    logps = trainer._logps
    trainer._logps = lambda *a, **k: passes.append(1) or logps(*a, **k)
    compute_loss = GRPOTrainer._compute_loss

    def keep_ratio(self, model, inputs):
        loss = compute_loss(self, model, inputs)  # the fused weights are completed inside it
        ratios.append(inputs["importance_sampling_ratio"].detach().clone())
        return loss

    with monkeypatch.context() as patch:
        patch.setattr(GRPOTrainer, "_compute_loss", keep_ratio)
        trainer.train()
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    gaps = [h.get("sampling/logp_gap_max") for h in trainer.state.log_history if "loss" in h]
    return losses, weights, len(passes), ratios, gaps


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("chunk", [64, 4], ids=["one-forward", "chunked"])
def test_fused_importance_weights_equal_the_explicit_pass(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch, mode,
                                                          chunk):
    """4 episodes of 3 steps: 12 rows per micro-step, in one loss forward or in chunks of 4."""
    explicit = train(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch, mode, False, max_rows_per_forward=chunk)
    fused = train(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch, mode, True, max_rows_per_forward=chunk)
    assert explicit[2] == 2 and fused[2] == 0  # one old-policy pass per step, or none
    assert len(explicit[3]) == len(fused[3]) == 2 and not all(loss == 0 for loss in explicit[0])
    assert fused[0] == pytest.approx(explicit[0], rel=1e-5, abs=1e-7)
    for name, weight in explicit[1].items():
        torch.testing.assert_close(fused[1][name], weight, rtol=1e-5, atol=1e-7)
    for got, expected in zip(fused[3], explicit[3]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the sampler-vs-trainer gap is logged either way (fused: from the loss step)
    assert None not in explicit[4] and fused[4] == pytest.approx(explicit[4], rel=1e-5)
    # the made-up sampler log-probs do move the weights: some ratio is not 1 (and with *_mask some is 0)
    assert any((r != 1).any() for r in explicit[3])
    if mode.endswith("mask"):
        assert any((r == 0).any() for r in explicit[3])
