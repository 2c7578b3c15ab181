"""`OPIDTrainer`: GRPO over multi-turn agent episodes with OPID's token-level skill advantage.

The data path, one module per stage: environment (`environments`) -> rollout
(:mod:`opid_trl.rollout`) -> step batch (:mod:`opid_trl.step_batch`) -> analysis
(:mod:`opid_trl.skill_analysis`) -> routing (:mod:`opid_trl.routing`) -> skill scoring
(:mod:`opid_trl.skill_scoring`) -> advantages (:mod:`opid_trl.advantages`) -> TRL's loss.
This module is the glue to TRL. It overrides four narrow points of `GRPOTrainer`:

- `_generate_and_score_completions`: with an environment, plays the batch of episodes and returns
  one row per environment step; without one, GRPO builds the batch as usual. Then the skill
  scores are added (per-token advantages of shape (B, T), which TRL's `_compute_loss` accepts).
- `compute_loss`: a micro-step with more rows than `max_rows_per_forward` is back-propagated
  chunk by chunk with the exact gradient of GRPO's loss, so memory stays bounded whatever the
  number of steps the episodes produced.
- `_get_per_token_logps_and_entropies`: hands the chunked loss its precomputed log-probs, and
  completes the skill advantage from the loss forward's own log-probs when they are the old
  policy's (one optimizer step per generation), so OPID adds a single no-grad pass to GRPO.
- `_calculate_rewards`: records the single-turn rewards so the skill extractor can see them.

Rollouts go through a `GenerationBackend`: transformers `generate`, or with `use_vllm` the vLLM
engine TRL builds (`opid_trl.vllm_backend`), whose sampler log-probs feed TRL's importance
correction and, with `skill_logprob_backend="vllm"`, the skill advantage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import use_adapter

import environments
from environments.base import AgentEnvironment

from .advantages import episode_step_advantages, opid_advantages
from .audit import AnalysisAuditLog
from .batch_metrics import BatchMetrics
from .checkpoints import CheckpointCompletionCallback
from .config import POLICY_EXTRACTOR_SHARDED, OPIDConfig, sharded_parameters
from .episode_settings import resolve_episode_settings
from .heatmap_recorder import HeatmapRecorder, HeatmapRenderCallback
from .generation import GenerationBackend, ScoringBackend, TransformersGenerationBackend
from .importance_sampling import vllm_importance_ratio
from .rollout import Episode, EpisodeRunner
from .random_state import RandomState, uses_dropout
from .routing import RoutedSkill, inject
from .skill_analysis import AnalysisResult, CoverageWatch, SkillAnalysis
from .skill_extractors import PolicySkillExtractor, SkillExtractorLike, as_skill_extractor
from .skill_signal_recorder import SignalInfo, SkillSignalRecorder
from .skill_scoring import (SKILL_LOGPS_KEYS, RenderSkillPrompt, ScoreRows, SkillScores, TokenizePrompts,
                            engine_old_logps, engine_score_rows, plan_skill_passes, score_skills)
from .step_batch import (OPIDBatch, StepRows, collect_step_rows, mask_nonfinite_rows, pad_token_lists,
                         padded_row_count, per_row, ragged_rows, row_tensors)
from .trajectory import StepRecord, Trajectory
from .vllm_backend import make_vllm_backend, sampler_logprobs_are_plain

logger = logging.getLogger(__name__)

EnvironmentSpec = str | Callable[[], AgentEnvironment] | None
#: Batch keys TRL's `_compute_loss` reads that the chunked loss path knows how to split.
_LOSS_KEYS = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "num_items_in_batch",
              "old_per_token_logps", "old_per_token_entropies", "ref_per_token_logps", "sampling_per_token_logps",
              "importance_sampling_ratio", "tool_mask", "opid_row_index", *SKILL_LOGPS_KEYS.values()}


def environment_outcome(prompts: list, completions: list, **kwargs) -> list[float]:
    """Placeholder reward of environment mode: the outcome comes from the episodes themselves."""
    raise RuntimeError("environment_outcome is only a marker; OPIDTrainer computes environment rewards itself")


def resolve_environment(spec: EnvironmentSpec, kwargs: Mapping[str, Any] | None = None) -> Callable[[], AgentEnvironment] | None:
    """A zero-argument factory from a registered name or a factory."""
    if spec is None:
        return None
    kwargs = dict(kwargs or {})
    if isinstance(spec, str):
        environments.make(spec, **kwargs).close()  # fail now, with the registry's message, if unknown
        return lambda: environments.make(spec, **kwargs)
    if callable(spec):
        return (lambda: spec(**kwargs)) if kwargs else spec
    raise TypeError(f"environment must be a registered name or a factory, got {type(spec).__name__}")


@contextlib.contextmanager
def _vllm_engine_setup(args: OPIDConfig) -> Iterator[None]:
    """Around `GRPOTrainer.__init__`, which builds the vLLM engine (colocate) or client (server):
    give a CPU engine what it needs (`opid_trl.vllm_cpu`). `OPIDConfig` has checked vLLM is there."""
    if not args.use_vllm:
        yield
        return
    if not (torch.cuda.is_available() and not args.use_cpu):
        from .vllm_cpu import engine_environment, without_nccl_communicator

        os.environ.update(engine_environment())
        if args.vllm_mode == "server":
            with without_nccl_communicator():
                yield
            return
    yield


def _has_chat_template(model: Any, processing_class: Any) -> bool:
    """Whether the tokenizer the trainer will use has a chat template, found before any model loads:
    the given processing class, else the tokenizer files of a model given by name or path (True when
    they cannot be read here: TRL then loads, and reports, them itself)."""
    if processing_class is None:
        if not isinstance(model, str):
            return True
        try:
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(model)
        except Exception:  # noqa: BLE001 - not for this check to report
            return True
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    return bool(getattr(processing_class, "chat_template", None) or getattr(tokenizer, "chat_template", None))


def _prompt_text(prompt: Any) -> str:
    """A rendered prompt as text: the last message's content for a chat prompt."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content", ""))
    return str(prompt)


class OPIDTrainer(GRPOTrainer):
    """A drop-in `GRPOTrainer` that trains agents with On-Policy Skill Distillation.

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class, ...:
            as for `GRPOTrainer`. `args` is an [`OPIDConfig`]; a `GRPOConfig` is converted to one
            with every field kept. With an `environment`, `reward_funcs` is optional (the
            environment's outcome is the reward) and each dataset row is a task handed to the
            environment's `reset`.
        environment: a registered environment name (see `environments.available()`) or a
            zero-argument factory returning an `AgentEnvironment`. Without it, the trainer works on
            single-turn prompts exactly as `GRPOTrainer` and applies OPID to each completion as a
            one-step episode.
        environment_kwargs: keyword arguments for the environment factory.
        skill_extractor: a `SkillExtractor`, a callable from completed `Trajectory` records to
            `EpisodeSkills` (or `None` for a trajectory it could not analyse), or the name of a
            built-in one ('rule_based', 'self', 'openai'). Without it the trainer is plain GRPO.
        generation_backend: the engine used for rollouts (default: transformers `generate`, or
            vLLM with `use_vllm`).
    """

    _tag_names = ["trl", "grpo", "opid"]
    _name = "OPID"

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: OPIDConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        environment: EnvironmentSpec = None,
        environment_kwargs: Mapping[str, Any] | None = None,
        skill_extractor: SkillExtractorLike | str | None = None,
        generation_backend: GenerationBackend | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = OPIDConfig(f"{str(name).split('/')[-1]}-OPID")
        if not isinstance(args, OPIDConfig):  # a GRPOConfig: same fields, OPID's defaults (plain GRPO without skills)
            args = OPIDConfig.from_grpo_config(args)
        self.environment_factory = resolve_environment(environment, environment_kwargs)
        reward_funcs = self._environment_reward_funcs(reward_funcs, args, kwargs)
        extractor = as_skill_extractor(skill_extractor)
        if self.environment_factory is not None and not _has_chat_template(model, processing_class):
            raise ValueError("processing_class: the tokenizer has no chat template, and every step of an episode is "
                             "rendered as a chat (a user message, then the model's turn); use a chat/instruct model "
                             "or set tokenizer.chat_template before building the trainer")
        sharding = sharded_parameters(args.deepspeed, args.fsdp)
        if isinstance(extractor, PolicySkillExtractor) and sharding:  # before any model loads
            raise ValueError("skill_extractor: " + POLICY_EXTRACTOR_SHARDED.format(sharding=sharding))
        with _vllm_engine_setup(args):
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
                **kwargs,
            )
        self.skill_extractor = extractor
        self.generation_backend = generation_backend or (
            make_vllm_backend(self) if self.use_vllm else TransformersGenerationBackend(self))
        if args.skill_logprob_backend == "vllm" and not isinstance(self.generation_backend, ScoringBackend):
            raise ValueError("skill_logprob_backend: 'vllm' needs a generation backend that can score tokens "
                             f"({type(self.generation_backend).__name__} cannot); use 'trainer'")
        # Checkpoints are marked complete once written, so that a resume can tell a torn one.
        if not any(isinstance(c, CheckpointCompletionCallback) for c in self.callback_handler.callbacks):
            self.add_callback(CheckpointCompletionCallback())
        self.batch_metrics = BatchMetrics(self.accelerator, self._metrics)
        self.analysis = self._skill_analysis(extractor)
        self.skill_coverage = CoverageWatch()
        self.heatmaps = HeatmapRecorder(args.output_dir, self.accelerator.process_index, args.heatmap_rows,
                                        on_report=self._log_heatmap_report) if args.heatmap_rows > 0 else None
        if self.heatmaps is not None:
            self.add_callback(HeatmapRenderCallback(self.heatmaps))
        self.skill_signal = SkillSignalRecorder(
            args.output_dir, self.accelerator.process_index,
            lambda ids: self._tokenizer.batch_decode([[token] for token in ids]), self.batch_metrics,
        ) if args.skill_signal_diagnostics else None
        self._last_rewards_per_func: torch.Tensor | None = None
        self._precomputed_loss_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._loss_batch: OPIDBatch | None = None
        #: True inside a loss pass without gradients (evaluation): its forwards run in chunks
        self._no_grad_loss_pass = False
        self._rollout_count = 0
        self._runner = self._episode_runner() if self.environment_factory is not None else None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`, resuming only from a complete checkpoint.

        ``True`` takes the newest *complete* checkpoint of ``output_dir`` and moves torn newer ones
        aside (`Trainer` takes the newest folder, and a process killed mid-save leaves one it fails
        to load or, without its trainer state, restarts at step 0 on); a path that is not a
        complete checkpoint raises a ValueError naming it. See `opid_trl.checkpoints`.
        """
        from .checkpoints import resolve_resume_checkpoint

        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _environment_reward_funcs(self, reward_funcs, args: OPIDConfig, kwargs: Mapping[str, Any]):
        """With an environment the episode outcome is the reward; refuse what cannot apply."""
        if self.environment_factory is None:
            if args.outcome_norm is not None:
                raise ValueError("outcome_norm: applies to environment episodes; without an environment GRPO's "
                                 "scale_rewards normalizes the rewards (set scale_rewards instead)")
            if args.outcome_grouping != "trajectory":
                raise ValueError("outcome_grouping: applies to environment episodes; without an environment every "
                                 "completion is one sample of its group (leave it at 'trajectory')")
            return reward_funcs
        if reward_funcs is not None:
            raise ValueError("reward_funcs: with an environment the episode outcome is the reward; "
                             "pass reward_funcs=None")
        if kwargs.get("tools") or kwargs.get("rollout_func") or kwargs.get("environment_factory"):
            raise ValueError("environment: cannot be combined with TRL's tools / rollout_func / environment_factory")
        return [environment_outcome]

    def _skill_analysis(self, extractor) -> SkillAnalysis | None:
        if extractor is None:
            return None
        args = self.args
        audit = AnalysisAuditLog(args.output_dir, self.accelerator.process_index,
                                 use_wandb="wandb" in (args.report_to or [])) if args.log_analyses else None
        analysis = SkillAnalysis(extractor, args.max_step_skills, args.skill_routing,
                                 use_step_skills=args.skill_coef_step > 0, overlap=args.overlap_analysis, audit=audit)
        extractor.bind_trainer(self)
        return analysis

    def _episode_runner(self) -> EpisodeRunner:
        args = self.args
        settings = resolve_episode_settings(self.environment_factory, args.max_turns, args.history_length)
        self.max_turns, self.history_length = settings.max_turns, settings.history_length
        self.instruction_anchor = settings.instruction_anchor
        return EpisodeRunner(
            env_factory=self.environment_factory,
            tokenize=self._tokenize_texts,
            decode=lambda ids: self._tokenizer.batch_decode(ids, skip_special_tokens=True),
            max_turns=self.max_turns,
            history_length=self.history_length,
            max_prompt_length=args.max_prompt_length,
            step_workers=args.env_step_workers,
            step_timeout=args.env_step_timeout,
            record_expert=args.skill_signal_diagnostics,
        )

    # ------------------------------------------------------------------ helpers
    def _tokenize_texts(self, texts: list[str]) -> list[list[int]]:
        """User messages -> prompt token ids through the chat template (generation prompt added)."""
        if not texts:
            return []
        prompt_ids, _, _ = self._tokenize_prompts([[{"role": "user", "content": t}] for t in texts])
        return [list(ids) for ids in prompt_ids]

    def _trajectory_id(self, index: int) -> str:
        """``<optimizer step>-<rollout>-<index>``: unique within a run, resumes included (the rollout
        counter restarts on resume, the optimizer step does not)."""
        return f"{self.state.global_step}-{self._rollout_count}-{index}"

    def _skills_active(self, mode: str) -> bool:
        """Whether this batch gets a skill advantage (training, extractor set, inside the window)."""
        return mode == "train" and self.analysis is not None and self.args.skill_window_open(self.state.global_step)

    @property
    def _aligned(self) -> bool:
        """Whether the loss step's policy is the one that sampled the batch (no optimizer step in
        between): then the loss forward's own log-probs are the old policy's (TRL's criterion)."""
        return self.args.gradient_accumulation_steps % (self.args.steps_per_generation * self.num_iterations) == 0

    def _pad(self, sequences: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists -> (ids, mask) padded on ``side``, on the training device."""
        return pad_token_lists(sequences, self._tokenizer.pad_token_id, side, self.accelerator.device)

    def _logps(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
               completion_mask: torch.Tensor, model=None, with_entropy: bool = False):
        """Log-probs of the given completion tokens after each (left-padded) prompt; no grad, in
        chunks of `max_rows_per_forward` rows. ``model`` defaults to the policy. With
        ``with_entropy``, returns (log-probs, entropies)."""
        with torch.no_grad():
            logps, entropies, _ = self._get_per_token_logps_and_entropies(
                model if model is not None else self.model,
                torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([prompt_mask, completion_mask], dim=1),
                completion_ids.size(1),
                batch_size=self.args.max_rows_per_forward,
                compute_entropy=with_entropy,
            )
        return (logps, entropies) if with_entropy else logps

    def _reference_logps(self, *batch: torch.Tensor) -> torch.Tensor:
        """Reference-model log-probs (the KL term) of `_logps`'s batch, with GRPO's PEFT handling."""
        if self.ref_model is not None:
            return self._logps(*batch, model=self.ref_model)
        unwrapped = self.accelerator.unwrap_model(self.model)
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            return self._logps(*batch)

    # ------------------------------------------------------------------ TRL override points
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **kwargs):
        if self._precomputed_loss_inputs is not None and torch.is_grad_enabled():
            logps, entropies = self._precomputed_loss_inputs
            return logps, entropies, None
        if batch_size is None and self._no_grad_loss_pass:
            # Evaluation's loss pass (prediction_step) builds no graph, so chunking it is free;
            # unchunked, every eval row of a rank would go through one forward.
            batch_size = self.args.max_rows_per_forward
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
            compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        if self._loss_batch is not None:  # the loss forward of a batch whose skill advantage is pending
            self._complete_skill_advantages(self._loss_batch, logps.detach())
            self._loss_batch = None
        return logps, entropies, aux

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """GRPO's loss, computed in chunks of `max_rows_per_forward` rows when a micro-step holds more.

        Multi-turn episodes give a variable number of rows per micro-step. To bound memory, the
        loss is first computed exactly by GRPO's own code on per-token log-probs and entropies from
        a no-grad chunked pass (held as leaf tensors), giving d(loss)/d(log-prob) per token. Each
        chunk is then re-run with grad and back-propagated with those per-token weights; all but
        the last chunk are back-propagated here without gradient synchronisation, the last one by
        the Trainer. The gradient is exactly that of the unchunked loss, for every `loss_type`,
        and every process runs the same number of forward and backward passes (ZeRO-3). When the
        batch already holds the old policy's log-probs and entropies and the policy has not moved
        since (aligned steps), they are that no-grad pass: it is not paid twice.
        """
        rows = inputs["completion_ids"].size(0)
        chunk = self.args.max_rows_per_forward
        pending_skills = any(key in inputs for key in SKILL_LOGPS_KEYS.values())
        if return_outputs or rows <= chunk or not torch.is_grad_enabled() or set(inputs) - _LOSS_KEYS \
                or self.aux_loss_enabled:
            self._loss_batch = inputs if pending_skills else None
            self._no_grad_loss_pass = not torch.is_grad_enabled()
            try:
                return self._check_finite(super().compute_loss(model, inputs, return_outputs, num_items_in_batch))
            finally:
                self._loss_batch = None
                self._no_grad_loss_pass = False

        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logits_to_keep = inputs["completion_ids"].size(1)
        parent = super()._get_per_token_logps_and_entropies
        rng_states: list[RandomState] = []  # replayed by the grad pass: the same dropout masks
        if "old_per_token_entropies" in inputs and self._aligned and not uses_dropout(model):
            logps, entropies = inputs["old_per_token_logps"], inputs["old_per_token_entropies"]
        else:
            parts = []
            with torch.no_grad():
                for start in range(0, rows, chunk):
                    rng_states.append(RandomState.capture(input_ids.device))
                    parts.append(parent(model, input_ids[start : start + chunk], attention_mask[start : start + chunk],
                                        logits_to_keep, compute_entropy=True))
            logps, entropies = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if pending_skills:
            self._complete_skill_advantages(inputs, logps)
        logps_leaf = logps.detach().requires_grad_(True)
        entropies_leaf = entropies.detach().requires_grad_(True)
        self._precomputed_loss_inputs = (logps_leaf, entropies_leaf)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._precomputed_loss_inputs = None
        self._check_finite(loss)
        grads = torch.autograd.grad(loss, [logps_leaf, entropies_leaf], allow_unused=True)
        last = self._backward_chunks(model, input_ids, attention_mask, logits_to_keep, grads, num_items_in_batch,
                                     rng_states)
        # Same gradient as the last chunk's surrogate, same value as the full loss (for logging).
        return last + (loss.detach() - last.detach())

    def _backward_chunks(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                         grads: tuple[torch.Tensor | None, torch.Tensor | None], num_items_in_batch,
                         rng_states: list[RandomState]) -> torch.Tensor:
        """Re-run each chunk with grad and back-propagate ``grads`` (d loss / d log-prob, d loss /
        d entropy per token) through it; all chunks but the last here, the last one's surrogate is returned.
        ``rng_states[i]`` (when given) is restored before chunk i, so that dropout draws the masks of
        the no-grad pass the weights were computed from."""
        grad_logps, grad_entropies = grads
        rows, chunk = input_ids.size(0), self.args.max_rows_per_forward
        parent = super()._get_per_token_logps_and_entropies
        last = None
        for index, start in enumerate(range(0, rows, chunk)):
            part = slice(start, start + chunk)
            if rng_states:
                rng_states[index].restore()
            chunk_logps, chunk_entropies, _ = parent(
                model, input_ids[part], attention_mask[part], logits_to_keep,
                compute_entropy=grad_entropies is not None)
            surrogate = (chunk_logps * grad_logps[part]).sum() if grad_logps is not None else chunk_logps.sum() * 0
            if grad_entropies is not None:
                surrogate = surrogate + (chunk_entropies * grad_entropies[part]).sum()
            if start + chunk < rows:
                self._backward_without_sync(model, surrogate, num_items_in_batch)
            else:
                last = surrogate
        return last

    def _check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop loudly, before any weight or checkpoint is touched, when the loss is not finite.

        The check is agreed across processes so that every rank stops at the same step.
        """
        bad = torch.tensor(float(not torch.isfinite(loss.detach()).all()), device=self.accelerator.device)
        if self.accelerator.reduce(bad, reduction="sum").item() > 0:
            raise FloatingPointError(
                f"non-finite loss at global step {self.state.global_step}: training stopped before the optimizer "
                f"step, so the weights and the last checkpoint in {self.args.output_dir!r} are intact. "
                "Lower learning_rate, check the environment rewards, or resume from the last checkpoint."
            )
        return loss

    def _backward_without_sync(self, model, loss: torch.Tensor, num_items_in_batch) -> None:
        """Back-propagate one chunk's part of the loss as the Trainer would, but never step or sync."""
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
        if not scaled:
            loss = loss / self.current_gradient_accumulation_steps
        if self.is_deepspeed_enabled:
            engine = self.accelerator.deepspeed_engine_wrapped.engine
            engine.set_gradient_accumulation_boundary(is_boundary=False)
            engine.backward(loss, scale_wrt_gas=False)
        else:
            with self.accelerator.no_sync(model):
                self.accelerator.backward(loss)

    def _generate_and_score_completions(self, inputs):
        self._rollout_count += 1
        if self.environment_factory is None:
            return self._score_single_turn(inputs)
        return self._rollout_and_score(inputs)

    # ------------------------------------------------------------------ skills
    def _complete_skill_advantages(self, batch: OPIDBatch, old_logps: torch.Tensor) -> torch.Tensor | None:
        """A_OPID of ``batch`` in place, from its pending skill scores and the old policy's log-probs;
        returns the weighted skill part added (None without pending scores)."""
        skill_logps = {kind: batch.pop(key) for kind, key in SKILL_LOGPS_KEYS.items() if key in batch}
        row_index = batch.pop("opid_row_index", None)
        if self.heatmaps is not None and row_index is not None and self.heatmaps.pending:
            self.heatmaps.complete(row_index.tolist(), old_logps)
        if not skill_logps:
            return None
        args = self.args
        outcome = batch["advantages"]
        batch["advantages"], skill_part = opid_advantages(
            outcome, skill_logps, old_logps, batch["completion_mask"],
            {"episode": args.skill_coef_episode, "step": args.skill_coef_step},
            clip=args.skill_adv_clip, normalize=args.skill_adv_normalize,
            all_reduce_sum=lambda t: self.accelerator.reduce(t.to(self.accelerator.device), reduction="sum"))
        self.batch_metrics.skill_advantage("train" if self.model.training else "eval", skill_part, outcome,
                                           batch["completion_mask"])
        return skill_part

    def _add_skills(self, mode: str, batch: OPIDBatch, analysis: Future[AnalysisResult],
                    trajectories: list[Trajectory], row_routing: Callable[[list[list[RoutedSkill]]], list[RoutedSkill]],
                    render: RenderSkillPrompt, tokenize: TokenizePrompts,
                    engine_rows: tuple[list[list[int]], list[list[int]], torch.Tensor | None] | None,
                    row_info: Callable[[int], dict[str, Any]], signal_info: SignalInfo | None = None) -> None:
        """Wait for the analysis, route, score the skill prompts, and add the skill advantage.

        ``row_routing`` maps the routing of every trajectory to the routing of every batch row.
        ``engine_rows`` (original prompt ids, completion ids, sampler log-probs) selects scoring on
        the rollout engine. The advantage is completed here when the old policy's log-probs are
        known (engine scoring, or an explicit old-policy pass), else in the loss step (pending
        `*_skill_per_token_logps` keys). ``row_info(row)`` describes a row for the heatmap records;
        ``signal_info(row)`` for the skill-signal diagnostic (multi-turn rows, whose steps the
        environment's expert labelled; it then has an explicit old-policy pass).
        """
        args = self.args
        wait_start = time.perf_counter()
        result = analysis.result()
        # time/analysis: the extractor's own wall time; time/analysis_wait: what the step waited for
        # it after the log-prob passes (0 when fully overlapped).
        self.batch_metrics.log(mode, "time/analysis", result.seconds)
        self.batch_metrics.log(mode, "time/analysis_wait", time.perf_counter() - wait_start)
        start = time.perf_counter()
        routed = row_routing(self.analysis.route(self.state.global_step, trajectories, result))
        completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]
        coefs = {"episode": args.skill_coef_episode, "step": args.skill_coef_step}
        passes = plan_skill_passes(routed, coefs, self.batch_metrics.global_max_count)
        if engine_rows is None:
            score_rows: ScoreRows = lambda ids, rows, _n: self._logps(  # noqa: E731
                *self._pad(ids, "left"), completion_ids[rows], completion_mask[rows])
        else:
            score_rows = engine_score_rows(self.generation_backend, engine_rows[1], completion_ids.size(1),
                                           completion_ids.device)
        scores = score_skills(passes, routed, render, tokenize, score_rows, tuple(completion_ids.shape),
                              args.max_prompt_length)
        old_logps = batch.get("old_per_token_logps")
        if engine_rows is not None:
            plain = engine_rows[2] is not None and sampler_logprobs_are_plain(self)
            old_logps = engine_old_logps(self.generation_backend, engine_rows[0], engine_rows[1],
                                         engine_rows[2] if plain else None, scores.scored_rows,
                                         tuple(completion_ids.shape), completion_ids.device)
        self._log_skill_batch(mode, scores, routed, result, len(trajectories))
        if self.heatmaps is not None and mode == "train":
            recorded = self.heatmaps.choose(scores.scored_rows)
            self.heatmaps.stash(recorded, lambda i: self._describe_row(i, batch, routed, render, row_info),
                                scores.logps, completion_mask)
            if old_logps is not None:
                self.heatmaps.complete(recorded, old_logps[recorded])
            else:
                batch["opid_row_index"] = torch.arange(completion_ids.size(0), device=completion_ids.device)
        for kind, logps in scores.logps.items():
            batch[SKILL_LOGPS_KEYS[kind]] = logps
        outcome = batch["advantages"]
        if old_logps is not None:
            skill_part = self._complete_skill_advantages(batch, old_logps)
            if self.skill_signal is not None and signal_info is not None and mode == "train":
                self.skill_signal.record(self.state.global_step, completion_ids, completion_mask, routed,
                                         result.skills, signal_info, scores.logps, old_logps, outcome,
                                         skill_part if skill_part is not None else torch.zeros_like(outcome), coefs)
        self.batch_metrics.log(mode, "time/skill_scoring", time.perf_counter() - start)

    def _describe_row(self, i: int, batch: OPIDBatch, routed: list[RoutedSkill], render: RenderSkillPrompt,
                      row_info: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        """What a heatmap record shows of row ``i`` besides its log-probs (see `HeatmapRecorder.stash`)."""
        r, args = routed[i], self.args
        length = int(batch["completion_mask"][i].sum())
        tokens = batch["completion_ids"][i, :length].tolist()
        return {
            "global_step": self.state.global_step, **row_info(i),
            "prompt": _prompt_text(render(i, None, None)),
            "tokens": [self._tokenizer.decode([token]) for token in tokens],
            "outcome_advantage": float(batch["advantages"][i, 0]),
            "episode_skill": r.episode_skill, "step_skill": r.step_skill,
            "episode_skill_prompt": _prompt_text(render(i, r.episode_skill, None)) if r.episode_skill else None,
            "step_skill_prompt": _prompt_text(render(i, None, r.step_skill)) if r.step_skill else None,
            "episode_coef": args.skill_coef_episode, "step_coef": args.skill_coef_step,
        }

    def _log_heatmap_report(self, step: int, report: Path) -> None:
        """Hand a step's heatmap report to wandb (as HTML) and TensorBoard (as text) when they run."""
        html = report.read_text()
        report_to = self.args.report_to or []
        if "wandb" in report_to:
            with contextlib.suppress(Exception):
                import wandb

                if wandb.run is not None:
                    wandb.log({"skill_heatmap": wandb.Html(html)}, commit=False)
        if "tensorboard" in report_to:
            from transformers.integrations import TensorBoardCallback

            for callback in self.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    callback.tb_writer.add_text("skill_heatmap", html, step)

    def _log_skill_batch(self, mode: str, scores: SkillScores, routed: list[RoutedSkill], result: AnalysisResult,
                         num_trajectories: int) -> None:
        self.batch_metrics.skill_passes(mode, scores)
        failure_rate = self.batch_metrics.routing(mode, routed, result.failures, num_trajectories)
        if self.accelerator.is_main_process:
            self.skill_coverage.update(failure_rate, self.state.global_step)
        counters = sorted(self.analysis.pop_metrics().items())
        for (name, _), total in zip(counters, self.batch_metrics.global_sum([v for _, v in counters])):
            self.batch_metrics.log(mode, f"skill_extractor/{name}", total)

    def _needs_explicit_old_pass(self, skills_active: bool) -> bool:
        """Skill scoring on the trainer needs l_old before the loss step only when the loss step
        cannot give it: unaligned steps, or batch z-normalization (statistics over the whole
        generation batch, while a loss step sees one micro-batch)."""
        engine = self.args.skill_logprob_backend == "vllm"
        diagnostics = self.args.skill_signal_diagnostics  # scores every row at once, after the rollout
        return skills_active and not engine and (not self._aligned or self.args.skill_adv_normalize or diagnostics)

    # ------------------------------------------------------------------ single-turn (drop-in) path
    def _score_single_turn(self, inputs):
        mode = "train" if self.model.training else "eval"
        output = super()._generate_and_score_completions(inputs)
        if not self._skills_active(mode):
            return output
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        prompts = [x["prompt"] for x in inputs]
        prompt_texts = [p[-1]["content"] if is_conversational({"prompt": p}) else p for p in prompts]
        if any(not isinstance(t, str) for t in prompt_texts):
            raise ValueError("skill_extractor: OPID's single-turn path supports text prompts only")
        trajectories = self._single_turn_trajectories(prompt_texts, completion_ids, completion_mask)
        analysis = self.analysis.submit(trajectories)
        if output.get("old_per_token_logps") is None and self._needs_explicit_old_pass(True):
            output["old_per_token_logps"] = self._timed_old_pass(
                mode, output["prompt_ids"], output["prompt_mask"], completion_ids, completion_mask)

        def render(i: int, episode_skill: str | None, step_skill: str | None) -> Any:
            # Same rendering as GRPO: the augmented text replaces the last message's content.
            text = inject(prompt_texts[i], episode_skill, step_skill, task=None, anchor=None)
            prompt = prompts[i]
            return prompt[:-1] + [{**prompt[-1], "content": text}] if is_conversational({"prompt": prompt}) else text

        engine_rows = None
        if self.args.skill_logprob_backend == "vllm":
            engine_rows = (
                [ids[m.bool()].tolist() for ids, m in zip(output["prompt_ids"].cpu(), output["prompt_mask"].cpu())],
                [ids[m.bool()].tolist() for ids, m in zip(completion_ids.cpu(), completion_mask.cpu())],
                output.get("sampling_per_token_logps"))
        output["advantages"] = output["advantages"].unsqueeze(1).expand_as(completion_mask).clone()
        def row_info(i: int) -> dict[str, Any]:
            t = trajectories[i]
            return {"trajectory_id": t.trajectory_id, "step_index": 0, "episode_return": t.outcome,
                    "success": t.success, "task_type": t.task_type}

        self._add_skills(mode, output, analysis, trajectories, lambda routing: [r[0] for r in routing], render,
                         lambda items: [list(ids) for ids in self._tokenize_prompts(items)[0]], engine_rows, row_info)
        return output

    def _single_turn_trajectories(self, prompt_texts: list[str], completion_ids: torch.Tensor,
                                  completion_mask: torch.Tensor) -> list[Trajectory]:
        """Each completion as a one-step trajectory, with the reward GRPO gave it."""
        device, rows = self.accelerator.device, completion_ids.size(0)
        process_slice = slice(self.accelerator.process_index * rows, (self.accelerator.process_index + 1) * rows)
        rewards = (self._last_rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards = rewards[process_slice].tolist()
        completions = self._tokenizer.batch_decode(
            [ids[m.bool()].tolist() for ids, m in zip(completion_ids.cpu(), completion_mask.cpu())],
            skip_special_tokens=True,
        )
        offset = self.accelerator.process_index * rows
        trajectories = [
            Trajectory(
                trajectory_id=self._trajectory_id(offset + i),
                group_id=(offset + i) // self.num_generations,
                task=text,
                steps=[StepRecord(index=0, observation=text, response=completion, reward=reward)],
                outcome=reward,
                success=reward >= self.args.success_threshold,
            )
            for i, (text, completion, reward) in enumerate(zip(prompt_texts, completions, rewards))
        ]
        for trajectory in trajectories:
            trajectory.fill_discounted_returns(self.args.analysis_gamma)
        return trajectories

    # ------------------------------------------------------------------ multi-turn path
    def _rollout_and_score(self, inputs) -> OPIDBatch:
        args = self.args
        mode = "train" if self.model.training else "eval"
        episodes, rollout_seconds = self._play(inputs, mode)
        trajectories = [ep.to_trajectory(args.invalid_action_penalty, args.analysis_gamma) for ep in episodes]
        skills_active = self._skills_active(mode)
        analysis = self.analysis.submit(trajectories) if skills_active else None

        step_advantages = self._episode_outcome_advantages(episodes)
        spg = args.steps_per_generation if mode == "train" else 1
        row_count = padded_row_count(self.batch_metrics.global_max_count(sum(len(ep.steps) for ep in episodes)), spg)
        rows = collect_step_rows(episodes, row_count, self._tokenizer.pad_token_id)
        prompt_ids, prompt_mask, completion_ids, completion_mask = row_tensors(
            rows, self._tokenizer.pad_token_id, self.accelerator.device,
            self.eos_token_ids if self.mask_truncated_completions else None)
        advantages = per_row(step_advantages, rows, self.accelerator.device)
        batch = OPIDBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
            completion_mask=completion_mask,
            advantages=advantages.unsqueeze(1).expand_as(completion_mask).clone(),
        )
        sampling_logps = self._sampling_logps(episodes, rows, completion_ids.size(1))
        self._policy_passes(mode, batch, sampling_logps, skills_active)

        if analysis is not None:
            engine_rows = (rows.prompt_ids, rows.completion_ids, sampling_logps) \
                if args.skill_logprob_backend == "vllm" else None

            def render(i: int, episode_skill: str | None, step_skill: str | None) -> str:
                if i >= rows.num_real:
                    return ""
                e, t = rows.locations[i]
                return episodes[e].skill_prompt(t, episode_skill, step_skill)

            def row_routing(per_episode: list[list[RoutedSkill]]) -> list[RoutedSkill]:
                # No skill for rows out of the loss (failed episodes) or whose prompt had to be cut
                # token-wise (it cannot be re-rendered faithfully with a skill).
                return [RoutedSkill() if episodes[e].failed or episodes[e].prompt_cuts[t] == "tokens"
                        else per_episode[e][t] for e, t in rows.locations] + [RoutedSkill()] * rows.num_padding

            def row_info(i: int) -> dict[str, Any]:
                e, t = rows.locations[i]
                return {"trajectory_id": episodes[e].trajectory_id, "step_index": t,
                        "episode_return": episodes[e].env_return, "success": episodes[e].won,
                        "task_type": episodes[e].task_type}

            def signal_info(i: int) -> dict[str, Any] | None:
                if i >= rows.num_real:
                    return None
                e, t = rows.locations[i]
                return {**row_info(i), "episode": e, "label": episodes[e].step_labels[t],
                        "action": episodes[e].steps[t].action}

            self._add_skills(mode, batch, analysis, trajectories, row_routing, render, self._tokenize_texts,
                             engine_rows, row_info, signal_info if self.skill_signal is not None else None)
        masked = mask_nonfinite_rows(batch)
        if masked:
            logger.warning("%d step rows hold non-finite advantages or log-probs; masked out of the loss", masked)
        batch["num_items_in_batch"] = self.accelerator.gather(batch["completion_mask"].sum()).sum()
        self.batch_metrics.log(mode, "numerics/masked_rows", self.batch_metrics.global_sum([masked])[0])
        self.batch_metrics.episodes(mode, episodes, rows.num_real, self._runner, rollout_seconds)
        if args.log_completions:
            self._log_episode_rows(episodes, rows, step_advantages)
        return batch

    def _play(self, inputs, mode: str) -> tuple[list[Episode], float]:
        """Play every task of ``inputs`` once; the episodes and the wall time it took."""
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        offset = self.accelerator.process_index * len(inputs)
        group_ids = [(offset + i) // num_generations for i in range(len(inputs))]
        trajectory_ids = [self._trajectory_id(offset + i) for i in range(len(inputs))]
        start = time.perf_counter()
        with self.generation_backend.session():
            episodes = self._runner.run(inputs, group_ids, trajectory_ids, self.generation_backend,
                                        asynchronous=self.args.async_episodes)
        return episodes, time.perf_counter() - start

    def _episode_outcome_advantages(self, episodes: list[Episode]) -> list[list[float]]:
        """A_ep of every step of this process's episodes, from groups that may span processes."""
        args = self.args
        summaries = gather_object([(ep.group_id, ep.env_return, [not s.action_valid for s in ep.steps], ep.failed)
                                   for ep in episodes])
        counts = gather_object([len(episodes)])
        first = sum(counts[: self.accelerator.process_index])
        advantages = episode_step_advantages(
            [s[1] for s in summaries], [s[0] for s in summaries], [s[2] for s in summaries],
            args.invalid_action_penalty, args.episode_outcome_norm, args.outcome_grouping,
            failed=[s[3] for s in summaries],
        )
        played = [(s[0], a, s[1]) for s, a in zip(summaries, advantages) if not s[3] and s[2]]
        self.batch_metrics.outcome_groups("train" if self.model.training else "eval", [p[0] for p in played],
                                          [p[1] for p in played], [p[2] for p in played])
        return advantages[first : first + len(episodes)]

    def _policy_passes(self, mode: str, batch: OPIDBatch, sampling_logps: torch.Tensor | None,
                       skills_active: bool) -> None:
        """The no-grad passes GRPO needs before the loss step: old policy (when the loss step cannot
        stand in for it, or for the sampler-vs-trainer importance correction) and reference model."""
        tokens = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
        is_correction = self.use_vllm and self.vllm_importance_sampling_correction
        if not self._aligned or (is_correction and sampling_logps is not None) \
                or self._needs_explicit_old_pass(skills_active):
            if self._aligned:  # the chunked loss reuses this pass as its own no-grad pass
                batch["old_per_token_logps"], batch["old_per_token_entropies"] = self._timed_old_pass(
                    mode, *tokens, with_entropy=True)
            else:
                batch["old_per_token_logps"] = self._timed_old_pass(mode, *tokens)
        if is_correction:
            ratio = torch.ones_like(batch["completion_mask"], dtype=torch.float32)
            if sampling_logps is not None:
                ratio = vllm_importance_ratio(batch["old_per_token_logps"], sampling_logps, batch["completion_mask"],
                                              self.vllm_importance_sampling_mode,
                                              self.vllm_importance_sampling_clip_min,
                                              self.vllm_importance_sampling_clip_max)
                self.batch_metrics.sampler_gap(mode, batch["old_per_token_logps"], sampling_logps,
                                               batch["completion_mask"])
            batch["importance_sampling_ratio"] = ratio
        if sampling_logps is not None:  # TRL's off-policy mask reads it; padding positions are masked
            batch["sampling_per_token_logps"] = torch.nan_to_num(sampling_logps, nan=0.0)
        if self.beta != 0.0:
            batch["ref_per_token_logps"] = self._reference_logps(*tokens)

    def _timed_old_pass(self, mode: str, *tokens: torch.Tensor, with_entropy: bool = False):
        """`_logps` of the policy as it sampled the batch, timed as `time/old_policy`."""
        start = time.perf_counter()
        result = self._logps(*tokens, with_entropy=with_entropy)
        self.batch_metrics.log(mode, "time/old_policy", time.perf_counter() - start)
        return result

    def _sampling_logps(self, episodes: list[Episode], rows: StepRows, width: int) -> torch.Tensor | None:
        """The sampler's log-probs of every row's tokens, (B, T), NaN where none; None without any.

        Agreed across processes, so that every rank takes the same branch afterwards."""
        local = [episodes[e].sampling_logps[t] for e, t in rows.locations]
        if not all(gather_object([all(lp is not None for lp in local)])):
            return None
        return ragged_rows(local, len(rows), width, float("nan"), self.accelerator.device)

    def _log_episode_rows(self, episodes: list[Episode], rows: StepRows, step_advantages: list[list[float]]) -> None:
        """Feed GRPO's completion table (one line per step sample)."""
        prompts = [self._tokenizer.decode(episodes[e].prompt_ids[t]) for e, t in rows.locations]
        completions = [episodes[e].steps[t].response for e, t in rows.locations]
        self._logs["prompt"].extend(gather_object(prompts))
        self._logs["completion"].extend(gather_object(completions))
        self._logs["rewards"][self.reward_func_names[0]].extend(
            gather_object([episodes[e].env_return for e, _ in rows.locations]))
        self._logs["advantages"].extend(gather_object([step_advantages[e][t] for e, t in rows.locations]))
