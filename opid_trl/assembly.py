"""What `OPIDTrainer` is built from: the checks made before any model loads, and its parts
(generation backend, skill stage with its reports, episode runner) built from the config and
explicit handles, so that the trainer itself only holds the TRL overrides and the stage order.
`attach_parts` is the one place besides `trainer.py` that reads GRPOTrainer's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opid_trl.checkpoints import CheckpointCompletionCallback
from opid_trl.config import POLICY_EXTRACTOR_SHARDED, OPIDConfig, sharded_parameters
from opid_trl.distributed import global_max_count
from opid_trl.generation.base import GenerationBackend, PolicyHandle, ScoringBackend
from opid_trl.generation.tool_loop import ToolLoopSync, generation_is_collective
from opid_trl.generation.transformers import TransformersGenerationBackend
from opid_trl.generation.vllm import SamplingSettings, VLLMColocateBackend, VLLMServerBackend
from opid_trl.loss.inputs import ImportanceCorrection
from opid_trl.reporting import model_card as card
from opid_trl.reporting.batch_metrics import BatchMetrics
from opid_trl.reporting.heatmap_recorder import HeatmapRecorder, HeatmapRenderCallback
from opid_trl.reporting.skill_batch import SkillBatchReporter, log_heatmap_report
from opid_trl.reporting.skill_signal_recorder import SkillSignalRecorder
from opid_trl.rollout.runner import EpisodeRunner
from opid_trl.rollout.settings import EpisodeSettings, environment_outcome, has_chat_template, resolve_episode_settings
from opid_trl.rollout.step_rows import pad_token_lists
from opid_trl.skills import conversation, single_turn
from opid_trl.skills.audit import AnalysisAuditLog
from opid_trl.skills.extraction import SkillExtraction
from opid_trl.skills.extractors import ExtractorContext, PolicySkillExtractor, SkillExtractor
from opid_trl.skills.stage import ScorePrompts, SkillRows, SkillStage
from opid_trl.trajectory import Trajectory


def opid_config(model: Any, args: Any) -> OPIDConfig:
    """An `OPIDConfig`: the given one, a `GRPOConfig` converted (every field kept; OPID's defaults
    make it plain GRPO without skills), or a default named after the model."""
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
        return OPIDConfig(f"{str(name).split('/')[-1]}-OPID")
    return args if isinstance(args, OPIDConfig) else OPIDConfig.from_grpo_config(args)


def check_before_loading(model: Any, processing_class: Any, args: OPIDConfig, has_environment: bool,
                         extractor: SkillExtractor | None, trl_kwargs: Mapping[str, Any]) -> None:
    """What can be refused before any model loads: episodes need a chat template, the policy
    extractor cannot generate under ZeRO-3 / FSDP (see `POLICY_EXTRACTOR_SHARDED`), and TRL agent
    rollouts are scored per turn on the trainer."""
    rollout_func = trl_kwargs.get("rollout_func")
    if extractor is not None and rollout_func is not None and not getattr(rollout_func, "opid_returns_turns", False):
        raise ValueError("skill_extractor: with a rollout_func, skills are scored per assistant turn, which needs "
                         f"the rollout's turns: return {' and '.join(conversation.TURN_FIELDS)} besides TRL's fields "
                         "(see opid_trl.skills.conversation.TURN_FIELDS) and mark the function with "
                         "@opid_trl.returns_turns")
    if extractor is not None and args.skill_logprob_backend == "vllm" and (
            trl_kwargs.get("tools") or trl_kwargs.get("environment_factory") or rollout_func is not None):
        raise ValueError("skill_logprob_backend: TRL agent rollouts (tools / environment_factory / rollout_func) score each "
                         "assistant turn after its own context on the trainer; use 'trainer'")
    if has_environment and not has_chat_template(model, processing_class):
        raise ValueError("processing_class: the tokenizer has no chat template, and every step of an episode is "
                         "rendered as a chat (a user message, then the model's turn); use a chat/instruct model "
                         "or set tokenizer.chat_template before building the trainer")
    sharding = sharded_parameters(args.deepspeed, args.fsdp)
    if isinstance(extractor, PolicySkillExtractor) and sharding:
        raise ValueError("skill_extractor: " + POLICY_EXTRACTOR_SHARDED.format(sharding=sharding))


def environment_reward_funcs(reward_funcs: Any, args: OPIDConfig, has_environment: bool,
                             trl_kwargs: Mapping[str, Any]) -> Any:
    """The reward functions GRPOTrainer gets: the user's without an environment; with one, a
    marker (the episode outcome is the reward). Refuses settings that cannot apply."""
    if not has_environment:
        if args.outcome_norm is not None:
            raise ValueError("outcome_norm: applies to environment episodes; without an environment GRPO's "
                             "scale_rewards normalizes the rewards (set scale_rewards instead)")
        if args.outcome_grouping != "trajectory":
            raise ValueError("outcome_grouping: applies to environment episodes; without an environment every "
                             "completion is one sample of its group (leave it at 'trajectory')")
        return reward_funcs
    if reward_funcs is not None:
        raise ValueError("reward_funcs: with an environment the episode outcome is the reward; pass reward_funcs=None")
    if trl_kwargs.get("tools") or trl_kwargs.get("rollout_func") or trl_kwargs.get("environment_factory"):
        raise ValueError("environment: cannot be combined with TRL's tools / rollout_func / environment_factory")
    return [environment_outcome]


def generation_backend(args: OPIDConfig, policy: PolicyHandle, generation_config: Any,
                       generation_kwargs: Mapping[str, Any] | None, summon_full_params: Any,
                       vllm_generation: Any = None) -> GenerationBackend:
    """transformers `generate` on the policy, or with `use_vllm` the engine / server TRL set up
    (``vllm_generation``), sampling as the config says."""
    if not args.use_vllm:
        return TransformersGenerationBackend(policy, generation_config, args.eval_temperature,
                                             args.ds3_gather_for_generation, generation_kwargs,
                                             args.gradient_checkpointing_kwargs, summon_full_params)
    sampling = SamplingSettings(args.temperature, args.top_p, args.top_k, args.min_p, args.repetition_penalty,
                                args.max_completion_length, args.eval_temperature, args.generation_kwargs)
    if args.vllm_mode == "colocate":
        return VLLMColocateBackend(policy, vllm_generation, sampling)
    base_url = args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"
    return VLLMServerBackend(policy, vllm_generation, sampling, base_url, args.vllm_server_timeout, args.output_dir)


def skill_stage(extractor: SkillExtractor, args: OPIDConfig, policy: PolicyHandle, backend: GenerationBackend,
                score_prompts: ScorePrompts, metrics: BatchMetrics,
                callbacks: Callable[[], list[Any]]) -> tuple[SkillStage, SkillBatchReporter, HeatmapRecorder | None]:
    """The skill stage (extraction, routing, scoring, A_OPID), what reports its batches, and the
    heatmap recorder (its render callback is the trainer's to add). Binds ``extractor`` to the run."""
    accelerator, rank = policy.accelerator, policy.accelerator.process_index
    audit = None
    if args.log_analyses:
        audit = AnalysisAuditLog(args.output_dir, rank, use_wandb="wandb" in (args.report_to or []))
    extraction = SkillExtraction(extractor, args.max_step_skills, args.skill_routing,
                                 use_step_skills=args.skill_coef_step > 0, overlap=args.overlap_analysis, audit=audit)
    extractor.bind(ExtractorContext(args.max_step_skills, args.output_dir, rank, policy, backend))
    coefs = {"episode": args.skill_coef_episode, "step": args.skill_coef_step}
    stage = SkillStage(extraction, coefs, args.skill_adv_clip, args.skill_adv_normalize, args.max_prompt_length,
                       score_prompts, backend if isinstance(backend, ScoringBackend) else None,
                       lambda count: global_max_count(accelerator, count),
                       lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum"))
    heatmaps = None
    if args.heatmap_rows > 0:
        heatmaps = HeatmapRecorder(args.output_dir, rank, args.heatmap_rows, on_report=lambda step, report:
                                   log_heatmap_report(report, step, args.report_to or [], callbacks()))
    tokenizer = policy.tokenizer
    signal = SkillSignalRecorder(args.output_dir, rank, lambda ids: tokenizer.batch_decode([[t] for t in ids]),
                                 metrics) if args.skill_signal_diagnostics else None
    reports = SkillBatchReporter(metrics, extraction, coefs, lambda token: tokenizer.decode([token]), heatmaps, signal,
                                 accelerator.is_main_process)
    return stage, reports, heatmaps


def rollout_messages(trainer: Any, prompts: list, generated: tuple) -> tuple[list, list] | None:
    """What the skill stage keeps of a TRL rollout (``generated``: `_generate`'s result): the prompts
    as the policy saw them and the completion messages, for a tool rollout or a marked
    ``rollout_func``'s (`conversation.returns_turns`); None when skills do not need them."""
    if trainer.skill_stage is None:
        return None
    if trainer.rollout_func is not None:
        extra = generated[5]
        missing = conversation.missing_turn_fields(extra, generated[2])
        if missing:
            raise ValueError(f"rollout_func: marked @returns_turns, but its output has no {', '.join(missing)} "
                             f"(see opid_trl.skills.conversation.TURN_FIELDS)")
        return prompts, list(extra["turn_messages"])
    return (prompts, generated[3]) if trainer.tools else None


def environment_suffix_ids(trainer: Any, messages: list[dict]) -> list[int]:
    """The tokens that follow an assistant turn for the environment's ``messages``: TRL's own for tool
    results (`_get_tool_suffix_ids`), else the chat template's rendering of them after an assistant
    turn, cut where TRL cuts (after the turn's EOS), with the generation prompt of the next turn."""
    if all(m.get("role") == "tool" and m.get("name") for m in messages):
        return list(trainer._get_tool_suffix_ids(messages))
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "dummy"}]
    kwargs = dict(chat_template=trainer.chat_template, tokenize=True, return_dict=False, **trainer.chat_template_kwargs)
    render = trainer.processing_class.apply_chat_template
    # the dummy turn rendered as a past turn in both (templates render the last assistant turn apart)
    probe = list(render(dummy + [{"role": "user", "content": "probe"}], add_generation_prompt=False, **kwargs))
    full = list(render(dummy + messages, add_generation_prompt=True, **kwargs))
    shared = next((i for i, (a, b) in enumerate(zip(probe, full)) if a != b), min(len(probe), len(full)))
    ends = [i for i in range(shared) if full[i] == trainer._tokenizer.eos_token_id]
    return full[ends[-1] + 1 :] if ends else []


def grpo_skill_inputs(trainer: Any, inputs: list[dict], output: dict[str, Any],
                      messages: tuple[list, list] | None) -> tuple[list[Trajectory], SkillRows]:
    """The trajectories and `SkillRows` of GRPO's batch: each completion a one-step trajectory
    (`skills.single_turn`), or with ``messages`` (a TRL agent rollout's prompts as the policy saw
    them and its completion messages) one step per assistant turn (`skills.conversation`)."""
    args, completion_ids = trainer.args, output["completion_ids"]
    first, count = trainer.accelerator.process_index * completion_ids.size(0), completion_ids.size(0)
    rewards = trainer._last_rewards[first : first + count].tolist()
    tokenizer = trainer._tokenizer
    if messages is None:
        return single_turn.skill_inputs(
            [x["prompt"] for x in inputs], output, rewards, first, trainer._trajectory_id, trainer.num_generations,
            args.success_threshold, args.analysis_gamma, lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True),
            trainer.policy.tokenize_prompts,
            trainer.generation_backend if args.skill_logprob_backend == "vllm" else None)

    def tokenize_prompt(row: int, prompt: list[dict]) -> list[int]:
        """The row's prompt as TRL tokenized it (with that row's environment's tool schema)."""
        environments = getattr(trainer, "_batch_environments", None)
        if trainer.environment_factories is None or environments is None:
            return list(trainer._tokenize_prompts([prompt])[0][0])
        trainer._batch_environments = [environments[row]]
        try:
            return list(trainer._tokenize_prompts([prompt])[0][0])
        finally:
            trainer._batch_environments = environments

    trajectories, rows, unusable = conversation.conversation_skill_inputs(
        messages[0], messages[1], output, rewards, first, trainer._trajectory_id, trainer.num_generations,
        args.success_threshold, args.analysis_gamma, lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        tokenize_prompt, lambda results: environment_suffix_ids(trainer, results))
    trainer.batch_metrics.log("train", "skill/rows_without_turn_skills", unusable)
    return trajectories, rows


def importance_correction(trainer: Any) -> ImportanceCorrection | None:
    """TRL's sampler-vs-trainer importance correction of a run, when it applies (vLLM rollouts)."""
    if not (trainer.use_vllm and trainer.vllm_importance_sampling_correction):
        return None
    return ImportanceCorrection(trainer.vllm_importance_sampling_mode, trainer.vllm_importance_sampling_clip_min,
                                trainer.vllm_importance_sampling_clip_max)


def complete_model_card(trainer: Any) -> None:
    """Complete the card TRL wrote in the output folder (`reporting.model_card`)."""
    args, extractor = trainer.args, trainer.skill_extractor
    opid = extractor is not None and (args.skill_coef_episode > 0 or args.skill_coef_step > 0)
    settings = {"skill routing": args.skill_routing,
                "lambda (episode, step)": (args.skill_coef_episode, args.skill_coef_step)} if opid else {}
    model = trainer.base_model_description or card.base_model_name(getattr(trainer.model.config, "_name_or_path", None))
    card.complete_model_card(Path(args.output_dir) / "README.md", card.run_facts(
        "OPID" if opid else "GRPO", model, trainer.environment_name,
        type(extractor).__name__ if extractor is not None else None, settings))


def episode_runner(env_factory: Callable[[], Any], args: OPIDConfig, tokenize: Callable[[list[str]], list[list[int]]],
                   tokenizer: Any) -> tuple[EpisodeRunner, EpisodeSettings]:
    """The episode loop, with the turn budget and history window the environment resolves."""
    settings = resolve_episode_settings(env_factory, args.max_turns, args.history_length)
    runner = EpisodeRunner(env_factory=env_factory, tokenize=tokenize,
                           decode=lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True),
                           max_turns=settings.max_turns, history_length=settings.history_length,
                           max_prompt_length=args.max_prompt_length, step_workers=args.env_step_workers,
                           step_timeout=args.env_step_timeout, record_expert=args.skill_signal_diagnostics)
    return runner, settings


def attach_parts(trainer: Any, args: OPIDConfig, extractor: SkillExtractor | None,
                 backend: GenerationBackend | None) -> None:
    """Give a freshly built `OPIDTrainer` its parts, from GRPOTrainer's state: the policy handle
    (what backends and the policy extractor may read), the generation backend, batch metrics, the
    skill stage and its reports, and the episode runner. The one place besides the trainer that
    reads GRPOTrainer's attributes; every part gets explicit handles, never the trainer."""
    trainer.policy = PolicyHandle(lambda: trainer.model_wrapped, trainer.accelerator, trainer._tokenizer,
                                  trainer.eos_token_ids, lambda: trainer.state.global_step,
                                  lambda: trainer.model.training,
                                  lambda chats: [list(ids) for ids in trainer._tokenize_prompts(chats)[0]],
                                  trainer.weight_sync)
    trainer.generation_backend = backend or generation_backend(
        args, trainer.policy, getattr(trainer, "generation_config", None), getattr(trainer, "generation_kwargs", None),
        trainer._dist.summon_full_params,
        getattr(trainer, "vllm_generation", None))
    if args.skill_logprob_backend == "vllm" and not isinstance(trainer.generation_backend, ScoringBackend):
        raise ValueError("skill_logprob_backend: 'vllm' needs a generation backend that can score tokens "
                         f"({type(trainer.generation_backend).__name__} cannot); use 'trainer'")
    if not any(isinstance(c, CheckpointCompletionCallback) for c in trainer.callback_handler.callbacks):
        trainer.add_callback(CheckpointCompletionCallback())  # a resume can then tell a torn checkpoint
    trainer.batch_metrics = BatchMetrics(trainer.accelerator, trainer._metrics)
    accelerator = trainer.accelerator
    trainer.tool_loop_sync = ToolLoopSync(
        bool(trainer.tools) and generation_is_collective(
            accelerator.num_processes, sharded_parameters(args.deepspeed, args.fsdp), args.use_vllm, args.vllm_mode,
            args.vllm_tensor_parallel_size),
        lambda flag: accelerator.reduce(flag.to(accelerator.device), reduction="sum"))
    trainer.skill_stage = trainer.skill_reports = None
    if extractor is not None:
        trainer.skill_stage, trainer.skill_reports, heatmaps = skill_stage(
            extractor, args, trainer.policy, trainer.generation_backend,
            lambda ids, completions, mask: trainer._logps(*pad_token_lists(ids, trainer._tokenizer.pad_token_id, "left",
                                                                           trainer.accelerator.device), completions, mask),
            trainer.batch_metrics, lambda: trainer.callback_handler.callbacks)
        if heatmaps is not None:
            trainer.add_callback(HeatmapRenderCallback(heatmaps))
    trainer._runner = None
    if trainer.environment_factory is not None:
        trainer._runner, settings = episode_runner(trainer.environment_factory, args, trainer.policy.tokenize_user_messages,
                                                   trainer._tokenizer)
        trainer.max_turns, trainer.history_length = settings.max_turns, settings.history_length
        trainer.instruction_anchor = settings.instruction_anchor
