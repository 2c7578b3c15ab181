"""Skills end to end when generation and optimization are not aligned (several micro-steps per
generation, several passes over one generation), with a row count that needs padding: the skill
advantage is completed from an explicit old-policy pass, reaches every micro-step, and padding rows
carry no signal."""

import math

import pytest
import torch
from datasets import Dataset

from environments import FetchEnvironment
from opid_trl import EpisodeSkills, OPIDTrainer

from .conftest import tiny_config


class FixedLengthFetch(FetchEnvironment):
    """Episodes of task seed 0 last two steps, the others three (whatever the model answers)."""

    def step(self, text):
        result = super().step(text)
        result.done = self._steps >= (2 if self._task["seed"] == 0 else 3)
        return result


def extractor(trajectories):
    return [EpisodeSkills("Walk east until the item is here, then take it.", {1: "Go east."}) for _ in trajectories]


@pytest.mark.parametrize("settings,micro_batches,real_rows,rows", [
    # tasks 0, 1, 2 (no shuffling), two episodes each: 2*2 + 4*3 = 16 rows, padded to 18 (3 micro-steps)
    (dict(steps_per_generation=3), 3, 16, 18),
    # task 0 only, trained on twice: 2 episodes of 2 steps, seen by both passes
    (dict(num_iterations=2, steps_per_generation=1), 2, 8, 8),
])
def test_skills_reach_every_micro_step_when_unaligned(tiny_model_dir, tiny_tokenizer, tmp_path, settings,
                                                      micro_batches, real_rows, rows):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment=FixedLengthFetch,
                          args=tiny_config(tmp_path, max_steps=micro_batches, beta=0.0, max_turns=3,
                                           per_device_train_batch_size=2, num_generations=2, shuffle_dataset=False, **settings),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(8)]),
                          skill_extractor=extractor)
    assert not trainer._aligned
    seen = []
    compute_loss = trainer.compute_loss

    def record(model, inputs, *args, **kwargs):
        seen.append({k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.dim() == 2})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = record
    trainer.train()
    assert len(seen) == micro_batches
    assert sum(batch["completion_mask"].size(0) for batch in seen) == rows
    assert sum(int(batch["completion_mask"].any(dim=1).sum()) for batch in seen) == real_rows  # padding: no tokens
    for batch in seen:
        assert "old_per_token_logps" in batch  # explicit old pass: the loss step's policy has moved
        mask = batch["completion_mask"].bool()
        # a skill advantage was added (A_OPID is not constant within a row) and padding is zero
        assert (batch["advantages"][~mask] == 0).all() or not (~mask).any()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert history and all(math.isfinite(h["loss"]) for h in history)
    generation = next(h for h in history if "skill/adv_abs_max" in h)  # one generation for all micro-steps
    scored = real_rows // (2 if "num_iterations" in settings else 1)
    assert generation["skill/episode_rows_scored"] + generation["skill/step_rows_scored"] == scored
    assert generation["skill/adv_abs_max"] > 0
