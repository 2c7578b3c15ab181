"""A tiny random model trains a few OPID steps on the fetch environment on a CPU."""

import math

import pytest
from datasets import Dataset

from environments import FetchEnvironment
from opid_trl import EpisodeSkills, OPIDTrainer

from .conftest import tiny_config


def tasks(n=16):
    return Dataset.from_list([{"seed": i} for i in range(n)])


class RecordingExtractor:
    def __init__(self):
        self.trajectories = []

    def __call__(self, trajectories):
        self.trajectories.extend(trajectories)
        return [EpisodeSkills("Walk east until the target is here, then take it.", {0: "Go east."})
                for _ in trajectories]


def train(trainer):
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


def test_opid_trains_on_the_environment(tiny_model_dir, tiny_tokenizer, tmp_path):
    extractor = RecordingExtractor()
    trainer = OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, max_steps=3, beta=0.01,
                                                                 gradient_accumulation_steps=2),
                          train_dataset=tasks(), processing_class=tiny_tokenizer, environment="fetch",
                          skill_extractor=extractor)
    history = train(trainer)
    assert len(history) == 3
    for h in history:
        assert math.isfinite(h["loss"])
        assert h["skill/adv_abs_max"] > 0 and h["skill/adv_std"] > 0
        assert h["skill/routed_step_frac"] == pytest.approx(1 / 3)  # step 0 of 3-step episodes
        assert h["skill/routed_episode_frac"] == pytest.approx(2 / 3)
        assert h["env/rows"] == 24  # 8 episodes x 3 turns, not one row per episode
        assert 0 <= h["env/invalid_action_rate"] <= 1
        assert h["time/rollout"] > 0 and h["time/skill_scoring"] > 0 and h["time/analysis"] > 0
    first = extractor.trajectories[0]
    assert first.task.startswith("take the") and len(first.steps) == 3
    assert first.steps[0].discounted_return == pytest.approx(
        first.steps[0].reward + 0.95 * first.steps[1].discounted_return)
    # the group of N episodes plays the same task
    by_group = {}
    for t in extractor.trajectories[:8]:
        by_group.setdefault(t.group_id, set()).add(t.task)
    assert all(len(v) == 1 for v in by_group.values())


def test_zero_coefficients_skip_the_extra_pass(tiny_model_dir, tiny_tokenizer, tmp_path):
    extractor = RecordingExtractor()
    trainer = OPIDTrainer(model=tiny_model_dir,
                          args=tiny_config(tmp_path, skill_coef_episode=0.0, skill_coef_step=0.0, beta=0.0),
                          train_dataset=tasks(), processing_class=tiny_tokenizer, environment="fetch",
                          skill_extractor=extractor)
    scored = []
    original = trainer._logps
    trainer._logps = lambda *a, **k: scored.append(1) or original(*a, **k)
    history = train(trainer)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert scored == [] and extractor.trajectories == []
    assert not any(k.startswith("skill/") for h in history for k in h)


def test_skill_window_controls_analysis(tiny_model_dir, tiny_tokenizer, tmp_path):
    extractor = RecordingExtractor()
    trainer = OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, max_steps=3, skill_start_step=1,
                                                                 skill_end_step=2, beta=0.0),
                          train_dataset=tasks(), processing_class=tiny_tokenizer, environment="fetch",
                          skill_extractor=extractor)
    history = train(trainer)
    assert ["skill/adv_mean" in h for h in history] == [False, True, False]
    assert len(extractor.trajectories) == 4  # one batch of 4 episodes analysed


class BrokenExtractor:
    def __call__(self, trajectories):
        raise ConnectionError("skill extractor endpoint unreachable")


class HalfBroken:
    def __call__(self, trajectories):
        return [EpisodeSkills("Go east.", {}) if i % 2 else "not json" for i, _ in enumerate(trajectories)]


@pytest.mark.parametrize("extractor,failures", [(BrokenExtractor(), 4), (HalfBroken(), 2)])
def test_analysis_failures_are_counted_not_fatal(tiny_model_dir, tiny_tokenizer, tmp_path, extractor, failures):
    trainer = OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, beta=0.0), train_dataset=tasks(),
                          processing_class=tiny_tokenizer, environment="fetch", skill_extractor=extractor)
    history = train(trainer)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert all(h["skill/analysis_failures"] == failures for h in history)


class FlakyFetch(FetchEnvironment):
    """Throws on every other reset and on the second step."""

    resets = 0

    def reset(self, task):
        FlakyFetch.resets += 1
        if FlakyFetch.resets % 3 == 0:
            raise RuntimeError("engine crashed")
        self.turns = 0
        return super().reset(task)

    def execute(self, action):
        raise RuntimeError("engine crashed on step")


def test_environment_errors_are_counted_not_fatal(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, beta=0.0, skill_coef_step=0.0),
                          train_dataset=tasks(), processing_class=tiny_tokenizer, environment=FlakyFetch,
                          skill_extractor=RecordingExtractor())
    history = train(trainer)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert sum(h["env/errors"] for h in history) > 0


def test_environment_mode_rejects_reward_funcs(tiny_model_dir, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="reward_funcs"):
        OPIDTrainer(model=tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                    args=tiny_config(tmp_path), train_dataset=tasks(), processing_class=tiny_tokenizer,
                    environment="fetch")
    with pytest.raises(ValueError, match="unknown environment"):
        OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path), train_dataset=tasks(),
                    processing_class=tiny_tokenizer, environment="alfworld-typo")


def test_single_turn_mode_rejects_episode_outcome_settings(tiny_model_dir, tiny_tokenizer, tmp_path):
    # Without an environment GRPO's scale_rewards normalizes the rewards; outcome_norm would be ignored.
    with pytest.raises(ValueError, match="outcome_norm.*scale_rewards"):
        OPIDTrainer(model=tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                    args=tiny_config(tmp_path, outcome_norm="mean_norm"),
                    train_dataset=Dataset.from_list([{"prompt": "Say hi."}] * 4), processing_class=tiny_tokenizer)
    with pytest.raises(ValueError, match="outcome_grouping"):
        OPIDTrainer(model=tiny_model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                    args=tiny_config(tmp_path, outcome_grouping="step"),
                    train_dataset=Dataset.from_list([{"prompt": "Say hi."}] * 4), processing_class=tiny_tokenizer)


def test_scale_rewards_normalizes_episode_outcomes(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, scale_rewards="none"),
                          train_dataset=tasks(), processing_class=tiny_tokenizer, environment="fetch")
    from opid_trl.rollout.episode import Episode
    from opid_trl.rollout.step_rows import OutcomeSettings, episode_outcomes
    from opid_trl.trajectory import StepRecord

    episodes = []
    for reward in (10.0, 0.0, 0.0, 2.0):
        ep = Episode(env=None, task_row={}, group_id=0, trajectory_id="t")
        ep.steps = [StepRecord(index=0, observation="", response="", reward=reward)]
        episodes.append(ep)
    # scale_rewards='none': R - group mean (mean 3), no division by the std
    args = trainer.args
    outcome = OutcomeSettings(args.invalid_action_penalty, args.episode_outcome_norm, args.outcome_grouping)
    assert episode_outcomes(episodes, trainer.accelerator, outcome).step_advantages == [[7.0], [-3.0], [-3.0], [-1.0]]


def test_critical_steps_fall_back_to_the_episode_skill_without_step_weight(tiny_model_dir, tiny_tokenizer, tmp_path):
    # The reference's step-priority behaviour: with skill_coef_step = 0, a critical step is scored
    # under the episode skill instead of getting no skill signal.
    trainer = OPIDTrainer(model=tiny_model_dir, args=tiny_config(tmp_path, max_steps=1, beta=0.0, skill_coef_step=0.0),
                          train_dataset=tasks(), processing_class=tiny_tokenizer, environment="fetch",
                          skill_extractor=RecordingExtractor())
    (h,) = train(trainer)
    assert h["skill/routed_episode_frac"] == 1.0 and h["skill/routed_step_frac"] == 0.0
    assert h["skill/episode_rows_scored"] == h["env/rows"]
