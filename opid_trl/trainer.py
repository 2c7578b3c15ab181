"""`OPIDTrainer`: GRPO over multi-turn agent episodes with OPID's token-level skill advantage.

This module only wires the stages of the data path (docs/architecture.md) to TRL: its overrides,
and the stage order of a batch (`_rollout_and_score`, each stage one call, each timed).

# TRL CONTRACT, pinned to trl==1.16.0 (setup.cfg). Overridden GRPOTrainer methods -> guarding tests:
#   _generate_and_score_completions     step rows of episodes, or GRPO's batch plus skills
#                                       -> tests/test_dropin*.py (parity with GRPOTrainer), test_integration.py
#   compute_loss                        chunked, exact gradient -> test_trainer_loss.py, test_dropin_losses.py
#   _get_per_token_logps_and_entropies  leaf log-probs for the chunked loss, chunked eval pass, A_OPID
#                                       from the loss forward -> test_opid_cost.py, test_eval_memory.py
#   _calculate_rewards                  rewards kept for single-turn skills -> test_dropin.py
#   _generate                           TRL agent rollouts' messages kept, per-turn skills -> test_agent_skills.py
#   _tool_call_loop, _generate_single_turn  processes kept in step (generation.tool_loop) -> test_distributed.py
#   train                               complete checkpoints only -> reliability/test_resume.py
# TRL state read (here and in assembly.attach_parts): _tokenizer, _dist, _metrics, _logs,
# _last_loaded_step (shared with our vLLM backends as `generation.SyncState`), vllm_generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import use_adapter

from opid_trl import assembly
from opid_trl.checkpoints import resolve_resume_checkpoint
from opid_trl.config import OPIDConfig
from opid_trl.generation.base import GenerationBackend, SyncState
from opid_trl.generation.vllm_cpu import engine_setup
from opid_trl.loss import inputs as loss_inputs
from opid_trl.loss.chunked import SPLITTABLE_KEYS, backward_without_sync, check_finite, chunked_loss
from opid_trl.loss.random_state import uses_dropout
from opid_trl.reporting.batch_metrics import log_step_completions
from opid_trl.rollout import step_rows
from opid_trl.rollout.episode import Episode
from opid_trl.rollout.settings import EnvironmentSpec, resolve_environment
from opid_trl.skills.extractors import SkillExtractorLike, as_skill_extractor
from opid_trl.skills.rows import step_skill_rows
from opid_trl.skills.scoring import SKILL_LOGPS_KEYS


class OPIDTrainer(GRPOTrainer):
    """A drop-in `GRPOTrainer` that trains agents with On-Policy Skill Distillation.

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class, ...:
            as for `GRPOTrainer`. `args` is an [`OPIDConfig`]; a `GRPOConfig` is converted to one
            with every field kept. With an `environment`, `reward_funcs` must be None (the
            environment's outcome is the reward) and each dataset row is a task for its `reset`.
        environment: a registered environment name (see `environments.available()`) or a
            zero-argument factory returning an `AgentEnvironment`. Without it, the trainer works on
            single-turn prompts exactly as `GRPOTrainer` and applies OPID to each completion as a
            one-step episode.
        environment_kwargs: keyword arguments for the environment factory.
        skill_extractor: a `SkillExtractor`, a callable from completed `Trajectory` records to
            `EpisodeSkills` (or None for one it could not read), or the name of a built-in one
            ('rule_based', 'self', 'openai', 'shuffled', 'scrambled'). Without it the trainer is plain GRPO.
        generation_backend: the rollout engine (default: transformers `generate`, or vLLM with `use_vllm`).
    """

    _tag_names = ["trl", "grpo", "opid"]
    _name = "OPID"

    def __init__(self, model, reward_funcs=None, args: OPIDConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, reward_processing_classes=None, callbacks=None,
                 optimizers=(None, None), peft_config=None, environment: EnvironmentSpec = None,
                 environment_kwargs: Mapping[str, Any] | None = None,
                 skill_extractor: SkillExtractorLike | str | None = None,
                 generation_backend: GenerationBackend | None = None, **kwargs: Any) -> None:
        args = assembly.opid_config(model, args)
        self.environment_factory = resolve_environment(environment, environment_kwargs)
        self.environment_name = environment if isinstance(environment, str) or environment is None else getattr(
            environment, "__name__", type(environment).__name__)
        has_environment = self.environment_factory is not None
        reward_funcs = assembly.environment_reward_funcs(reward_funcs, args, has_environment, kwargs)
        extractor = as_skill_extractor(skill_extractor)
        assembly.check_before_loading(model, processing_class, args, has_environment, extractor, kwargs)
        self.weight_sync = SyncState()  # before GRPOTrainer sets _last_loaded_step through it
        with engine_setup(args, on_accelerator=torch.cuda.is_available() and not args.use_cpu):
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, processing_class=processing_class,
                             reward_processing_classes=reward_processing_classes, callbacks=callbacks,
                             optimizers=optimizers, peft_config=peft_config, **kwargs)
        self.skill_extractor = extractor
        self._precomputed_loss_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._loss_batch: step_rows.OPIDBatch | None = None  #: a batch whose A_OPID the loss forward completes
        self._no_grad_loss_pass = False  #: inside evaluation's loss pass: its forwards run in chunks
        self._last_rewards: torch.Tensor | None = None  #: GRPO's weighted rewards of the last batch
        self._rollout_messages: tuple[list, list] | None = None  #: a TRL agent rollout's prompts and messages
        self._rollout_count = 0
        #: What the model card names as the base model (default: the model's own name or folder).
        self.base_model_description: str | None = None
        assembly.attach_parts(self, args, extractor, generation_backend)

    #: TRL's record of the step whose weights vLLM holds, shared with our vLLM backends (`SyncState`).
    _last_loaded_step = property(lambda self: self.weight_sync.last_loaded_step,
                                 lambda self, step: setattr(self.weight_sync, "last_loaded_step", step))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`, resuming only from a complete checkpoint (`opid_trl.checkpoints`): ``True``
        takes the newest complete one, torn newer ones moved aside; another path raises, naming it."""
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # ============================================================== TRL override points
    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None):
        """TRL's card, completed (`assembly.complete_model_card`): the base model, the method that ran
        (OPID, or GRPO without a skill term), the environment and the skill extractor."""
        super().create_model_card(model_name, dataset_name, tags)
        if self.is_world_process_zero():
            assembly.complete_model_card(self)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """GRPO's rewards, kept for the single-turn skill path (its trajectories' outcomes)."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(1)
        return rewards_per_func

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False, **kwargs):
        """GRPO's forward, except: inside the chunked loss it hands back the precomputed leaf
        log-probs; evaluation's loss pass runs in chunks (it builds no graph, so chunking is free);
        and a loss forward of a batch with pending skill scores completes A_OPID from its own
        (detached) log-probs, which are the old policy's when aligned: OPID then adds one pass."""
        if self._precomputed_loss_inputs is not None and torch.is_grad_enabled():
            logps, entropies = self._precomputed_loss_inputs
            return logps, entropies, None
        if batch_size is None and self._no_grad_loss_pass:
            batch_size = self.args.max_rows_per_forward
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
            compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        if self._loss_batch is not None:
            self._complete_loss_inputs(self._loss_batch, logps.detach())
            self._loss_batch = None
        return logps, entropies, aux

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """GRPO's loss, in chunks of `max_rows_per_forward` rows when a micro-step holds more
        (`opid_trl.loss.chunked`: the exact gradient of the unchunked loss, for every `loss_type`,
        and the same number of passes on every process). When the batch holds the old policy's
        log-probs and entropies and the policy has not moved since (aligned), they are the no-grad
        pass: it is not paid twice."""
        rows, chunk = inputs["completion_ids"].size(0), self.args.max_rows_per_forward
        pending = any(key in inputs for key in (loss_inputs.PENDING_SAMPLER_KEY, *SKILL_LOGPS_KEYS.values()))
        if (return_outputs or rows <= chunk or not torch.is_grad_enabled() or set(inputs) - SPLITTABLE_KEYS
                or self.aux_loss_enabled):
            self._loss_batch = inputs if pending else None
            self._no_grad_loss_pass = not torch.is_grad_enabled()
            try:
                return self._check_finite(super().compute_loss(model, inputs, return_outputs, num_items_in_batch))
            finally:
                self._loss_batch, self._no_grad_loss_pass = None, False
        return self._chunked_loss(model, inputs, num_items_in_batch, pending)

    def _chunked_loss(self, model, inputs: step_rows.OPIDBatch, num_items_in_batch, pending: bool) -> torch.Tensor:
        """`compute_loss` for a micro-step of more rows than one forward may hold (`loss.chunked`)."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logits_to_keep, parent = inputs["completion_ids"].size(1), super()._get_per_token_logps_and_entropies
        compute_loss = super()._compute_loss

        def forward(part: slice, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            return parent(model, input_ids[part], attention_mask[part], logits_to_keep, compute_entropy=with_entropy)[:2]

        def loss_on(logps: torch.Tensor, entropies: torch.Tensor) -> torch.Tensor:
            self._precomputed_loss_inputs = (logps, entropies)
            try:
                return self._check_finite(compute_loss(model, inputs))
            finally:
                self._precomputed_loss_inputs = None

        reuse = "old_per_token_entropies" in inputs and self._aligned and not uses_dropout(model)
        return chunked_loss(forward, input_ids.size(0), self.args.max_rows_per_forward, input_ids.device,
                            (inputs["old_per_token_logps"], inputs["old_per_token_entropies"]) if reuse else None,
                            loss_on, lambda part: self._backward_without_sync(model, part, num_items_in_batch),
                            (lambda logps: self._complete_loss_inputs(inputs, logps)) if pending else None)

    def _generate_and_score_completions(self, inputs):
        """The batch for TRL's loss: episodes' step rows with an environment, else GRPO's own batch;
        skills added to either when a skill extractor is set."""
        self._rollout_count += 1
        return self._score_single_turn(inputs) if self.environment_factory is None else self._rollout_and_score(inputs)

    # ============================================================== the multi-turn data path
    def _rollout_and_score(self, inputs) -> step_rows.OPIDBatch:
        """The stages in order, each one call: rollout (timed) -> skill extraction starts, in the
        background -> step rows with A_ep -> policy passes -> skill stage (timed) -> loss inputs. An engine
        that sleeps between sessions scores skills before the policy passes, still awake with its prefix cache."""
        args, mode = self.args, "train" if self.model.training else "eval"
        engine = self.generation_backend if args.skill_logprob_backend == "vllm" else None
        early = getattr(engine, "forgets_prefix_cache", False)  # engine scoring on an engine that sleeps
        with self.generation_backend.session() if early else contextlib.nullcontext():
            with self.batch_metrics.timed(mode, "time/rollout"):
                episodes = self._play_episodes(inputs, mode)
            trajectories = [ep.to_trajectory(args.invalid_action_penalty, args.analysis_gamma) for ep in episodes]
            extraction = self.skill_stage.submit(trajectories) if self._skills_active(mode) else None
            step = step_rows.build_step_batch(
                episodes, step_rows.OutcomeSettings(args.invalid_action_penalty, args.episode_outcome_norm,
                                                    args.outcome_grouping), self.accelerator, self._tokenizer.pad_token_id,
                args.steps_per_generation if mode == "train" else 1,
                self.eos_token_ids if self.mask_truncated_completions else None)
            batch, rows = step.batch, None
            if extraction is not None:
                rows = step_skill_rows(episodes, step, self.policy.tokenize_user_messages, engine,
                                       with_labels=args.skill_signal_diagnostics)
                if early:
                    self._add_skills(mode, batch, extraction, trajectories, rows)
        loss_inputs.policy_passes(batch, step.sampling_logps, **self._policy_pass_settings(mode, extraction is not None))
        if extraction is not None and not early:
            self._add_skills(mode, batch, extraction, trajectories, rows)
        masked = loss_inputs.finalize(batch, self.accelerator)
        self.batch_metrics.step_batch(mode, step, episodes, self._runner, masked)
        if args.log_completions:
            log_step_completions(self._logs, self.reward_func_names[0], self._tokenizer, episodes, step.rows,
                                 step.outcomes.step_advantages)
        return batch

    def _add_skills(self, mode: str, batch, extraction, trajectories: list, rows) -> None:
        """The skill stage (timed) and its reports."""
        with self.batch_metrics.timed(mode, "time/skill_scoring"):
            scored = self.skill_stage.add(batch, extraction, trajectories, rows, self.state.global_step)
            self.skill_reports.batch(mode, self.state.global_step, batch, scored, rows, len(trajectories))

    def _play_episodes(self, inputs, mode: str) -> list[Episode]:
        """Play every task of ``inputs`` once, inside one generation session."""
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        offset = self.accelerator.process_index * len(inputs)
        group_ids = [(offset + i) // num_generations for i in range(len(inputs))]
        trajectory_ids = [self._trajectory_id(offset + i) for i in range(len(inputs))]
        with self.generation_backend.session():
            return self._runner.play(inputs, group_ids, trajectory_ids, self.generation_backend,
                                     asynchronous=self.args.async_episodes)

    def _policy_pass_settings(self, mode: str, skills_active: bool) -> dict[str, Any]:
        """What `loss.inputs.policy_passes` needs of this run: which passes, and how to run them."""
        return {"aligned": self._aligned, "skills_need_old": self._needs_explicit_old_pass(skills_active),
                "logps": self._logps, "reference_logps": self._reference_logps if self.beta != 0.0 else None,
                "correction": assembly.importance_correction(self), "timed": lambda name: self.batch_metrics.timed(mode, name)}

    # ============================================================== the skill stage
    def _complete_loss_inputs(self, batch: step_rows.OPIDBatch, old_logps: torch.Tensor) -> torch.Tensor | None:
        """What the loss forward completes from its own detached log-probs (``old_logps``, the old policy's
        when aligned): pending importance weights (`loss.inputs.complete_importance_ratio`, the sampler
        gap logged), A_OPID in place (`SkillStage.complete`) with its reports; returns its skill part."""
        mode, mask = "train" if self.model.training else "eval", batch["completion_mask"]
        loss_inputs.complete_importance_ratio(batch, old_logps, assembly.importance_correction(self),
                                              lambda sampler: self.batch_metrics.sampler_gap(mode, old_logps, sampler, mask))
        if self.skill_stage is None:
            return None
        outcome, row_index = batch["advantages"], batch.pop("opid_row_index", None)
        skill_part = self.skill_stage.complete(batch, old_logps)
        self.skill_reports.completed(mode, row_index, old_logps, skill_part, outcome, mask)
        return skill_part

    def _needs_explicit_old_pass(self, skills_active: bool) -> bool:
        """Whether skills need l_old before the loss step (`loss.inputs.old_logps_needed_first`)."""
        return skills_active and loss_inputs.old_logps_needed_first(self.args, self._aligned)

    # ============================================================== the single-turn (drop-in) path
    def _generate(self, prompts: list):
        """TRL's rollout, its prompts as the policy saw them and its messages kept for per-turn skills."""
        result = super()._generate(prompts)
        self._rollout_messages = assembly.rollout_messages(self, prompts, result)
        return result

    def _tool_call_loop(self, *args):
        """TRL's tool loop, kept in step across processes where generation is a collective
        (`generation.tool_loop`: a process whose rows stop calling tools joins the others' rounds)."""
        with self.tool_loop_sync.inside():
            result = super()._tool_call_loop(*args)
        generate = super()._generate_single_turn
        self.tool_loop_sync.drain(lambda: generate([[self._tokenizer.pad_token_id]], None, {}, num_generations=1))
        return result

    def _generate_single_turn(self, *args, **kwargs):
        """TRL's generation, announced to the processes waiting for this tool loop (`_tool_call_loop`)."""
        self.tool_loop_sync.announce()
        return super()._generate_single_turn(*args, **kwargs)

    def _score_single_turn(self, inputs):
        """GRPO's batch; with skills active, each completion becomes a trajectory (one step, or one
        per assistant turn of a TRL agent rollout) whose skills are scored (`assembly.grpo_skill_inputs`),
        and A_OPID is added per token."""
        mode = "train" if self.model.training else "eval"
        output = super()._generate_and_score_completions(inputs)
        messages, self._rollout_messages = self._rollout_messages, None
        if not self._skills_active(mode):
            return output
        trajectories, rows = assembly.grpo_skill_inputs(self, inputs, output, messages)
        extraction = self.skill_stage.submit(trajectories)
        if output.get("old_per_token_logps") is None and self._needs_explicit_old_pass(True):
            with self.batch_metrics.timed(mode, "time/old_policy"):
                output["old_per_token_logps"] = self._logps(*(output[k] for k in (
                    "prompt_ids", "prompt_mask", "completion_ids", "completion_mask")))
        output["advantages"] = output["advantages"].unsqueeze(1).expand_as(output["completion_mask"]).clone()
        self._add_skills(mode, output, extraction, trajectories, rows)
        return output

    # ============================================================== helpers
    def _skills_active(self, mode: str) -> bool:
        """Whether this batch gets a skill advantage (training, extractor set, inside the window)."""
        return mode == "train" and self.skill_stage is not None and self.args.skill_window_open(self.state.global_step)

    @property
    def _aligned(self) -> bool:
        """Whether the loss step's policy sampled the batch: then its forward's log-probs are the old policy's (TRL's test)."""
        return self.args.gradient_accumulation_steps % (self.args.steps_per_generation * self.num_iterations) == 0

    def _trajectory_id(self, index: int) -> str:
        """``<optimizer step>-<rollout>-<index>``: unique within a run, resumes included (the step counter is restored)."""
        return f"{self.state.global_step}-{self._rollout_count}-{index}"

    def _logps(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
               completion_mask: torch.Tensor, model=None, with_entropy: bool = False):
        """Log-probs (B, T) of the given completion tokens after each (left-padded) prompt; no grad,
        in chunks of `max_rows_per_forward` rows; ``model`` defaults to the policy. With
        ``with_entropy``, (log-probs, entropies)."""
        with torch.no_grad():
            logps, entropies, _ = self._get_per_token_logps_and_entropies(
                model if model is not None else self.model, torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([prompt_mask, completion_mask], dim=1), completion_ids.size(1),
                batch_size=self.args.max_rows_per_forward, compute_entropy=with_entropy)
        return (logps, entropies) if with_entropy else logps

    def _reference_logps(self, *batch: torch.Tensor) -> torch.Tensor:
        """Reference-model log-probs (the KL term) of `_logps`'s batch, with GRPO's PEFT handling."""
        if self.ref_model is not None:
            return self._logps(*batch, model=self.ref_model)
        unwrapped = self.accelerator.unwrap_model(self.model)
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            return self._logps(*batch)

    def _check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss``, or stop loudly before the optimizer step when it is not finite (`loss.chunked.check_finite`)."""
        return check_finite(loss, lambda t: self.accelerator.reduce(t.to(self.accelerator.device), reduction="sum"),
                            self.state.global_step, self.args.output_dir)

    def _backward_without_sync(self, model, loss: torch.Tensor, num_items_in_batch) -> None:
        """Back-propagate one chunk's part of the loss as the Trainer would, but never step or sync."""
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
        backward_without_sync(loss if scaled else loss / self.current_gradient_accumulation_steps, model,
                              self.accelerator, self.is_deepspeed_enabled)
