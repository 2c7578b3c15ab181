"""OPID adds one no-grad pass to GRPO: the skill re-scoring. l_old comes from the loss's own forward
when generation and optimization are aligned, and the result is the same as with an explicit pass."""

import math

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer

from environments.base import HistoryEntry, PromptView
from opid_trl import EpisodeSkills, OPIDTrainer
from opid_trl.rollout.episode import Episode

from .conftest import tiny_config


def tasks(n=16):
    return Dataset.from_list([{"seed": i} for i in range(n)])


def extractor(trajectories):
    return [EpisodeSkills("Walk east until the target is here, then take it.", {1: "Go east."}) for _ in trajectories]


def build(tiny_model_dir, tiny_tokenizer, tmp_path, **overrides):
    values = dict(max_steps=2, beta=0.0, skill_coef_episode=0.5, skill_coef_step=0.5, learning_rate=1e-2)
    values.update(overrides)
    return OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, **values), train_dataset=tasks(),
                       processing_class=tiny_tokenizer, environment="fetch", skill_extractor=extractor)


def count_no_grad_passes(trainer):
    """Count the trainer's no-grad log-prob passes (old policy, skill, chunked-loss passes)."""
    calls = []
    parent = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, model, input_ids, *args, **kwargs):
        if not torch.is_grad_enabled():
            calls.append(input_ids.size(0))
        return parent(self, model, input_ids, *args, **kwargs)

    return calls, counting


def history(trainer):
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("max_rows_per_forward", [32, 4], ids=["one-forward-loss", "chunked-loss"])
def test_loss_step_log_probs_give_the_same_result_as_an_explicit_old_pass(
        tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch, max_rows_per_forward):
    fused = build(tiny_model_dir, tiny_tokenizer, tmp_path / "a", max_rows_per_forward=max_rows_per_forward)
    fused_history = history(fused)
    explicit = build(tiny_model_dir, tiny_tokenizer, tmp_path / "b", max_rows_per_forward=max_rows_per_forward)
    monkeypatch.setattr(explicit, "_needs_explicit_old_pass", lambda skills_active: skills_active)
    explicit_history = history(explicit)
    assert [h["loss"] for h in fused_history] == pytest.approx([h["loss"] for h in explicit_history], rel=1e-5)
    for key in ("skill/adv_mean", "skill/adv_abs_max", "skill/adv_std"):
        assert [h[key] for h in fused_history] == pytest.approx([h[key] for h in explicit_history], rel=1e-4, abs=1e-7)
    assert all(h["skill/adv_abs_max"] > 0 for h in fused_history)
    assert all("time/old_policy" in h for h in explicit_history)
    assert not any("time/old_policy" in h for h in fused_history)


def test_aligned_opid_runs_only_the_skill_pass(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    trainer = build(tiny_model_dir, tiny_tokenizer, tmp_path, max_steps=1, max_rows_per_forward=64)
    calls, counting = count_no_grad_passes(trainer)
    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    (h,) = history(trainer)
    # critical-first: the episode pass and the step pass together cover every row exactly once
    assert h["skill/episode_rows_scored"] + h["skill/step_rows_scored"] == h["env/rows"]
    assert sum(calls) == h["skill/episode_rows_scored"] + h["skill/step_rows_scored"]


def test_chunked_loss_reuses_the_old_policy_pass(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    # Batch z-normalization needs l_old before the loss step: one explicit old-policy pass, which
    # the chunked loss then reuses instead of running its own no-grad pass over the same rows.
    trainer = build(tiny_model_dir, tiny_tokenizer, tmp_path, max_steps=1, max_rows_per_forward=4,
                    skill_adv_normalize=True)
    calls, counting = count_no_grad_passes(trainer)
    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    (h,) = history(trainer)
    assert math.isfinite(h["loss"]) and "time/old_policy" in h
    scored = h["skill/episode_rows_scored"] + h["skill/step_rows_scored"]
    assert sum(calls) == h["env/rows"] + scored  # old policy + skill passes; no third pass in the loss


class WindowEnv:
    """Renders 'TASK' and one line per shown history step."""

    instruction_anchor = "Now"

    def render_prompt(self, view, k):
        shown = view.history[-k:] if k else ()
        return "\n".join(["TASK go", *[h.action for h in shown], "Now act."])


def test_skill_prompt_keeps_the_history_window_the_policy_saw():
    view = PromptView(task="go", step=2, observation="",
                      admissible_actions=(), history=(HistoryEntry("", "a1"), HistoryEntry("", "a2")))
    episode = Episode(env=WindowEnv(), task_row={}, group_id=0, trajectory_id="t")
    episode.views, episode.history_windows = [view], [1]  # the budget only allowed one history step
    prompt = episode.skill_prompt(0, "EPISODE SKILL", "STEP SKILL")
    assert "a2" in prompt and "a1" not in prompt  # same window: the shift is the skill's alone
    lines = prompt.split("\n")
    assert lines[0] == "TASK go" and "EPISODE SKILL" in lines[2] and lines[-1] == "Now act."
    assert "STEP SKILL" in lines[-2]
