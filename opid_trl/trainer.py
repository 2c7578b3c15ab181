"""`OPIDTrainer`: GRPO over multi-turn agent episodes with OPID's token-level skill advantage.

The trainer overrides three narrow points of TRL's `GRPOTrainer`:

- `_generate_and_score_completions`: with an environment, plays the batch of episodes and returns
  one row per environment step; without one, it lets GRPO build the batch as usual. In both cases
  it then adds the skill advantage, giving per-token advantages of shape (B, T), which TRL's
  `_compute_loss` accepts as they are.
- `compute_loss`: a micro-step with more rows than `max_rows_per_forward` is back-propagated
  chunk by chunk with the exact gradient of GRPO's loss, so memory stays bounded whatever the
  number of steps the episodes produced.
- `_calculate_rewards`: records the single-turn rewards so the skill extractor can see them.

Rollouts go through a `GenerationBackend`: transformers `generate`, or with `use_vllm` the vLLM
engine TRL builds (`opid_trl.vllm_backend`), whose sampler log-probs feed TRL's importance
correction and, with `skill_logprob_backend="vllm"`, the skill advantage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import pad, use_adapter

import environments
from environments.base import AgentEnvironment

from .advantages import episode_step_advantages, skill_advantage
from .analyzers import make_analyzer
from .audit import AnalysisAuditLog
from .config import OPIDConfig
from .generation import GenerationBackend, ScoringBackend, TransformersGenerationBackend
from .importance_sampling import vllm_importance_ratio
from .rollout import Episode, EpisodeRunner, fit_prompts
from .routing import RoutedSkill, inject, route_skills
from .trajectory import EpisodeSkills, SkillExtractorLike, StepRecord, Trajectory
from .vllm_backend import make_vllm_backend, sampler_logprobs_are_plain

logger = logging.getLogger(__name__)

EnvironmentSpec = str | Callable[[], AgentEnvironment] | None
#: (skill prompt ids of some rows, their row indices, how many are real) -> (l_skill, l_old), each (rows, T).
SkillScorer = Callable[[list[list[int]], list[int], int], tuple[torch.Tensor, torch.Tensor]]


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


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


class OPIDTrainer(GRPOTrainer):
    """A drop-in `GRPOTrainer` that trains agents with On-Policy Skill Distillation.

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class, ...:
            as for `GRPOTrainer`. `args` must be an [`OPIDConfig`]. With an `environment`,
            `reward_funcs` is optional (the environment's outcome is the reward) and each dataset
            row is a task handed to the environment's `reset`.
        environment: a registered environment name (see `environments.available()`) or a
            zero-argument factory returning an `AgentEnvironment`. Without it, the trainer works on
            single-turn prompts exactly as `GRPOTrainer` and applies OPID to each completion as a
            one-step episode.
        environment_kwargs: keyword arguments for the environment factory.
        skill_extractor: callable from completed `Trajectory` records to `EpisodeSkills` (or `None`
            for a trajectory it could not analyse). Without it the trainer is plain GRPO.
        generation_backend: the engine used for rollouts (default: transformers `generate`).
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
        skill_extractor: SkillExtractorLike | None = None,
        generation_backend: GenerationBackend | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = OPIDConfig(f"{str(name).split('/')[-1]}-OPID")
        if not isinstance(args, OPIDConfig):
            raise TypeError(f"args must be an OPIDConfig, got {type(args).__name__}")
        self.environment_factory = resolve_environment(environment, environment_kwargs)
        if self.environment_factory is not None:
            if reward_funcs is not None:
                raise ValueError("reward_funcs: with an environment the episode outcome is the reward; "
                                 "pass reward_funcs=None")
            if kwargs.get("tools") or kwargs.get("rollout_func") or kwargs.get("environment_factory"):
                raise ValueError("environment: cannot be combined with TRL's tools / rollout_func / environment_factory")
            reward_funcs = [environment_outcome]
        if isinstance(skill_extractor, str):
            skill_extractor = make_analyzer(skill_extractor)
        if skill_extractor is not None and not callable(skill_extractor):
            raise TypeError("skill_extractor must be callable (trajectories -> list of EpisodeSkills | None) "
                            "or the name of an analyzer ('rule_based', 'self', 'openai')")
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
        self.skill_extractor = skill_extractor
        if generation_backend is None:
            generation_backend = make_vllm_backend(self) if self.use_vllm else TransformersGenerationBackend(self)
        self.generation_backend = generation_backend
        if args.skill_logprob_backend == "vllm" and not isinstance(generation_backend, ScoringBackend):
            raise ValueError("skill_logprob_backend: 'vllm' needs a generation backend that can score tokens "
                             f"({type(generation_backend).__name__} cannot); use 'trainer'")
        if hasattr(skill_extractor, "bind_trainer"):
            skill_extractor.bind_trainer(self)
        self._audit = AnalysisAuditLog(args.output_dir, self.accelerator.process_index,
                                       use_wandb="wandb" in (args.report_to or [])) if args.log_analyses else None
        self._last_rewards_per_func: torch.Tensor | None = None
        self._precomputed_loss_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._analysis_pool = ThreadPoolExecutor(1, thread_name_prefix="opid-analysis")
        self._rollout_count = 0
        self._analysis_seconds = 0.0
        self._runner: EpisodeRunner | None = None
        if self.environment_factory is not None:
            probe = self.environment_factory()
            self.max_turns = args.max_turns or probe.default_max_turns
            self.history_length = (
                args.history_length if args.history_length is not None else probe.default_history_length
            )
            self.instruction_anchor = probe.instruction_anchor
            probe.close()
            self._runner = EpisodeRunner(
                env_factory=self.environment_factory,
                tokenize=self._tokenize_texts,
                decode=lambda ids: self._tokenizer.batch_decode(ids, skip_special_tokens=True),
                max_turns=self.max_turns,
                history_length=self.history_length,
                max_prompt_length=args.max_prompt_length,
                step_workers=args.env_step_workers,
            )

    # ------------------------------------------------------------------ helpers
    def _tokenize_texts(self, texts: list[str]) -> list[list[int]]:
        """User messages -> prompt token ids through the chat template (generation prompt added)."""
        if not texts:
            return []
        prompt_ids, _, _ = self._tokenize_prompts([[{"role": "user", "content": t}] for t in texts])
        return [list(ids) for ids in prompt_ids]

    def _skills_active(self, mode: str) -> bool:
        """Whether this batch gets a skill advantage (training, extractor set, inside the window)."""
        return (
            mode == "train"
            and self.skill_extractor is not None
            and self.args.skill_window_open(self.state.global_step)
        )

    def _log(self, mode: str, name: str, value: float) -> None:
        self._metrics[mode][name].append(float(value))

    def _global_sum(self, values: Sequence[float]) -> list[float]:
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def _global_max(self, values: torch.Tensor) -> float:
        """Largest element of ``values`` over all processes (0 when every process has none)."""
        local = values.max().double() if values.numel() else torch.zeros((), dtype=torch.float64)
        return self.accelerator.reduce(local.to(self.accelerator.device), reduction="max").item()

    def _float_rows(self, rows: Sequence[Sequence[float]], count: int, width: int, fill: float) -> torch.Tensor:
        """Per-token values of ``rows`` as a (count, width) tensor on the training device, ``fill`` elsewhere."""
        out = torch.full((count, width), fill, dtype=torch.float32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
        return out.to(self.accelerator.device)

    def _pad(self, sequences: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists -> (ids, mask) padded on ``side``, on the training device."""
        device = self.accelerator.device
        tensors = [torch.tensor(ids, dtype=torch.long) for ids in sequences]
        ids = pad(tensors, padding_value=self._tokenizer.pad_token_id, padding_side=side).to(device)
        mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side=side).to(device)
        return ids, mask

    def _logps(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
               completion_mask: torch.Tensor, model=None) -> torch.Tensor:
        """Log-probs of the given completion tokens after each (left-padded) prompt; no grad, in
        chunks of `max_rows_per_forward` rows. ``model`` defaults to the policy."""
        with torch.no_grad():
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model if model is not None else self.model,
                torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([prompt_mask, completion_mask], dim=1),
                completion_ids.size(1),
                batch_size=self.args.max_rows_per_forward,
            )
        return logps

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
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
            compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """GRPO's loss, computed in chunks of `max_rows_per_forward` rows when a micro-step holds more.

        Multi-turn episodes give a variable number of rows per micro-step. To bound memory, the
        loss is first computed exactly by GRPO's own code on per-token log-probs and entropies from
        a no-grad chunked pass (held as leaf tensors), giving d(loss)/d(log-prob) per token. Each
        chunk is then re-run with grad and back-propagated with those per-token weights; all but
        the last chunk are back-propagated here without gradient synchronisation, the last one by
        the Trainer. The gradient is exactly that of the unchunked loss, for every `loss_type`,
        and every process runs the same number of forward and backward passes (ZeRO-3).
        """
        rows = inputs["completion_ids"].size(0)
        chunk = self.args.max_rows_per_forward
        extra_inputs = set(inputs) - {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
                                      "num_items_in_batch", "old_per_token_logps", "ref_per_token_logps",
                                      "sampling_per_token_logps", "importance_sampling_ratio", "tool_mask"}
        if return_outputs or rows <= chunk or not torch.is_grad_enabled() or extra_inputs or self.aux_loss_enabled:
            return self._check_finite(super().compute_loss(model, inputs, return_outputs, num_items_in_batch))

        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logits_to_keep = inputs["completion_ids"].size(1)
        parent = super()._get_per_token_logps_and_entropies
        with torch.no_grad():
            logps, entropies, _ = parent(model, input_ids, attention_mask, logits_to_keep, batch_size=chunk,
                                         compute_entropy=True)
        logps_leaf = logps.detach().requires_grad_(True)
        entropies_leaf = entropies.detach().requires_grad_(True)
        self._precomputed_loss_inputs = (logps_leaf, entropies_leaf)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._precomputed_loss_inputs = None
        self._check_finite(loss)
        grad_logps, grad_entropies = torch.autograd.grad(loss, [logps_leaf, entropies_leaf], allow_unused=True)

        last = None
        for start in range(0, rows, chunk):
            part = slice(start, start + chunk)
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
        # Same gradient as the last chunk's surrogate, same value as the full loss (for logging).
        return last + (loss.detach() - last.detach())

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
    def _extract_skills(self, trajectories: list[Trajectory]) -> tuple[list[EpisodeSkills | None], int]:
        """Run the extractor; a crash or a malformed answer costs the skill signal, never the run.

        Its wall time is kept in `_analysis_seconds` (logged as `time/analysis`)."""
        start = time.perf_counter()
        try:
            result = list(self.skill_extractor(trajectories))
        except Exception as exc:  # noqa: BLE001 - analyzer outages must not stop training
            logger.warning("skill extractor failed on %d trajectories (%s: %s); they get no skill signal",
                           len(trajectories), type(exc).__name__, exc)
            return [None] * len(trajectories), len(trajectories)
        finally:
            self._analysis_seconds = time.perf_counter() - start
        if len(result) != len(trajectories):
            logger.warning("skill extractor returned %d results for %d trajectories; ignoring them",
                           len(result), len(trajectories))
            return [None] * len(trajectories), len(trajectories)
        cleaned: list[EpisodeSkills | None] = []
        for skills, trajectory in zip(result, trajectories):
            if isinstance(skills, EpisodeSkills):
                cleaned.append(skills.cleaned(len(trajectory.steps), self.args.max_step_skills))
            else:
                cleaned.append(None)
        return cleaned, sum(s is None or s.failed for s in cleaned)

    def _finish_analysis(self, mode: str, trajectories: list[Trajectory], skills: list[EpisodeSkills | None],
                         ) -> list[list[RoutedSkill]]:
        """Route every trajectory's skills, write the audit records, log the analyzer's counters."""
        routing = [route_skills(None if s is None or s.failed else s, len(t.steps), self.args.skill_routing)
                   for s, t in zip(skills, trajectories)]
        if self._audit is not None:
            self._audit.write(self.state.global_step, trajectories, skills, routing)
        pop = getattr(self.skill_extractor, "pop_metrics", None)
        if pop is not None:
            counters = sorted(pop().items())
            totals = self._global_sum([value for _, value in counters])
            for (name, _), total in zip(counters, totals):
                self._log(mode, f"analyzer/{name}", total)
        return routing

    def _skill_advantages(
        self,
        routed: list[RoutedSkill],
        render: Callable[[int, str | None, str | None], Callable[[int], Any]],
        scorer: SkillScorer,
        completion_mask: torch.Tensor,
        history_length: int,
        mode: str,
        tokenize: Callable[[list[Any]], list[list[int]]] | None = None,
    ) -> torch.Tensor:
        """Weighted per-token skill advantage of every row.

        ``routed[i]`` is row i's routing (padding rows: empty). ``render(i, episode_skill, step_skill)``
        returns the skill-augmented renderer of row i (history window -> prompt); ``tokenize`` turns
        rendered prompts into ids (default: each text as one user message through the chat template).
        ``scorer`` gives, for some rows, the log-probs of their sampled tokens under given prompts
        and under their original prompts (`l_skill`, `l_old`).

        Each pass (episode skills, then step skills) re-scores only the rows routed to it, so
        critical-first routing costs one extra forward over the batch in all. Every process runs
        the pass on the same number of rows (the largest count, padded with masked rows), so that
        every rank runs the same number of forward passes.
        """
        args = self.args
        total = torch.zeros_like(completion_mask, dtype=torch.float32)
        for kind, coef in (("episode", args.skill_coef_episode), ("step", args.skill_coef_step)):
            skill_of = (lambda r: r.episode_skill) if kind == "episode" else (lambda r: r.step_skill)
            selected = [i for i, r in enumerate(routed)
                        if skill_of(r) is not None and (args.skill_routing == "additive" or r.kind == kind)]
            count = int(max(gather_object([len(selected)])))
            if coef == 0 or count == 0:
                continue
            rows = selected + [selected[0] if selected else 0] * (count - len(selected))
            renderers = [render(i, routed[i].episode_skill if kind == "episode" else None,
                                routed[i].step_skill if kind == "step" else None) for i in rows]
            _, prompt_ids, overflow = fit_prompts(renderers, history_length, args.max_prompt_length,
                                                  tokenize or self._tokenize_texts)
            index = torch.tensor(rows, dtype=torch.long, device=completion_mask.device)
            real = torch.zeros(count, dtype=completion_mask.dtype, device=completion_mask.device)
            real[: len(selected)] = 1
            skill_logps, base_logps = scorer(prompt_ids, rows, len(selected))
            delta = skill_advantage(
                skill_logps,
                base_logps,
                completion_mask[index] * real.unsqueeze(1),
                clip=args.skill_adv_clip,
                normalize=args.skill_adv_normalize,
                all_reduce_sum=lambda t: self.accelerator.reduce(t.to(self.accelerator.device), reduction="sum"),
            )
            total.index_add_(0, index[: len(selected)], coef * delta[: len(selected)])
            self._log(mode, f"skill/{kind}_prompt_overflow", self._global_sum([overflow])[0])
            self._log(mode, f"skill/{kind}_rows_scored", self._global_sum([len(selected)])[0])
        return total

    def _trainer_scorer(self, old_logps: torch.Tensor, completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor) -> SkillScorer:
        """`l_skill` from a no-grad forward of the training model, `l_old` from ``old_logps``."""

        def score(prompt_ids: list[list[int]], rows: list[int], num_real: int) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.tensor(rows, dtype=torch.long, device=completion_ids.device)
            skill = self._logps(*self._pad(prompt_ids, "left"), completion_ids[index], completion_mask[index])
            return skill, old_logps[index]

        return score

    def _engine_scorer(self, original_prompts: list[list[int]], completions: list[list[int]],
                       sampling_logps: torch.Tensor | None, width: int) -> SkillScorer:
        """`l_skill` and `l_old` from the rollout engine's prompt log-probs (`skill_logprob_backend="vllm"`).

        The sampler's own log-probs stand for `l_old` when they are on the same (untempered) scale;
        otherwise the original prompts are scored on the engine too. Padding rows are not sent."""
        backend = self.generation_backend
        plain = sampling_logps is not None and sampler_logprobs_are_plain(self)

        def to_tensor(values: list[list[float]], count: int) -> torch.Tensor:
            return self._float_rows(values, count, width, fill=0.0)

        def score(prompt_ids: list[list[int]], rows: list[int], num_real: int) -> tuple[torch.Tensor, torch.Tensor]:
            real_rows = rows[:num_real]
            sampled = [completions[i] for i in real_rows]
            with backend.session():  # awake (sleep mode); the weights are those of the rollout
                skill = to_tensor(backend.score(prompt_ids[:num_real], sampled), len(rows))
                if not plain:
                    base = to_tensor(backend.score([original_prompts[i] for i in real_rows], sampled), len(rows))
            if plain:
                base = sampling_logps[torch.tensor(rows, dtype=torch.long, device=sampling_logps.device)].clone()
                base[num_real:] = 0.0
            return skill, torch.nan_to_num(base, nan=0.0)

        return score

    def _log_skill_stats(self, mode: str, skill_adv: torch.Tensor, mask: torch.Tensor,
                         routed: list[RoutedSkill], failures: int, num_trajectories: int) -> None:
        valid = mask.bool()
        values = skill_adv[valid].double()
        kinds = [r.kind for r in routed]
        totals = self._global_sum([
            values.sum().item(), (values**2).sum().item(), values.numel(),
            sum(k in ("step", "both") for k in kinds), sum(k in ("episode", "both") for k in kinds), len(kinds),
            failures, num_trajectories,
        ])
        abs_max = self._global_max(values.abs())
        s, sq, n, n_step, n_ep, n_rows, n_fail, n_traj = totals
        mean = s / n if n else 0.0
        std = math.sqrt(max(sq / n - mean**2, 0.0)) if n else 0.0
        self._log(mode, "skill/adv_mean", mean)
        self._log(mode, "skill/adv_std", std)
        self._log(mode, "skill/adv_abs_max", abs_max)
        self._log(mode, "skill/routed_step_frac", n_step / n_rows if n_rows else 0.0)
        self._log(mode, "skill/routed_episode_frac", n_ep / n_rows if n_rows else 0.0)
        self._log(mode, "skill/analysis_failures", n_fail)
        self._log(mode, "skill/analysis_failure_rate", n_fail / n_traj if n_traj else 0.0)

    # ------------------------------------------------------------------ single-turn (drop-in) path
    def _score_single_turn(self, inputs):
        mode = "train" if self.model.training else "eval"
        output = super()._generate_and_score_completions(inputs)
        if not self._skills_active(mode):
            return output
        args = self.args
        device = self.accelerator.device
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        mask = completion_mask if "tool_mask" not in output else completion_mask * output["tool_mask"]
        rows = completion_ids.size(0)
        process_slice = slice(self.accelerator.process_index * rows, (self.accelerator.process_index + 1) * rows)
        rewards = (self._last_rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards = rewards[process_slice].tolist()
        prompts = [x["prompt"] for x in inputs]
        prompt_texts = [p[-1]["content"] if is_conversational({"prompt": p}) else p for p in prompts]
        if any(not isinstance(t, str) for t in prompt_texts):
            raise ValueError("skill_extractor: OPID's single-turn path supports text prompts only")
        completions = self._tokenizer.batch_decode(
            [ids[m.bool()].tolist() for ids, m in zip(completion_ids.cpu(), completion_mask.cpu())],
            skip_special_tokens=True,
        )
        offset = self.accelerator.process_index * rows
        trajectories = [
            Trajectory(
                trajectory_id=f"{self._rollout_count}-{offset + i}",
                group_id=(offset + i) // self.num_generations,
                task=text,
                steps=[StepRecord(index=0, observation=text, response=completion, reward=reward)],
                outcome=reward,
                success=reward >= args.success_threshold,
            )
            for i, (text, completion, reward) in enumerate(zip(prompt_texts, completions, rewards))
        ]
        for trajectory in trajectories:
            trajectory.fill_discounted_returns(args.analysis_gamma)
        skills, failures = self._extract_skills(trajectories)
        self._log(mode, "time/analysis", self._analysis_seconds)
        routed = [r[0] for r in self._finish_analysis(mode, trajectories, skills)]
        start = time.perf_counter()
        def render(i: int, episode_skill: str | None, step_skill: str | None) -> Callable[[int], Any]:
            # Same rendering as GRPO: the augmented text replaces the last message's content.
            text = inject(prompt_texts[i], episode_skill, step_skill, task=None, anchor=None)
            prompt = prompts[i]
            augmented = prompt[:-1] + [{**prompt[-1], "content": text}] if is_conversational({"prompt": prompt}) else text
            return lambda _k: augmented

        def tokenize(items: list[Any]) -> list[list[int]]:
            return [list(ids) for ids in self._tokenize_prompts(items)[0]]

        if args.skill_logprob_backend == "vllm":
            prompt_lists = [ids[m.bool()].tolist() for ids, m in zip(output["prompt_ids"].cpu(),
                                                                      output["prompt_mask"].cpu())]
            completion_lists = [ids[m.bool()].tolist() for ids, m in zip(completion_ids.cpu(), completion_mask.cpu())]
            scorer = self._engine_scorer(prompt_lists, completion_lists, output.get("sampling_per_token_logps"),
                                         completion_ids.size(1))
        else:
            old_logps = output.get("old_per_token_logps")
            if old_logps is None:
                old_logps = self._logps(output["prompt_ids"], output["prompt_mask"], completion_ids, completion_mask)
            scorer = self._trainer_scorer(old_logps, completion_ids, completion_mask)
        skill_adv = self._skill_advantages(routed, render, scorer, mask, 0, mode, tokenize)
        self._log(mode, "time/skill_scoring", time.perf_counter() - start)
        self._log_skill_stats(mode, skill_adv, mask, routed, failures, len(trajectories))
        output["advantages"] = output["advantages"].unsqueeze(1) + skill_adv
        return output

    # ------------------------------------------------------------------ multi-turn path
    def _rollout_and_score(self, inputs):
        args = self.args
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        rank = self.accelerator.process_index
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        offset = rank * len(inputs)
        group_ids = [(offset + i) // num_generations for i in range(len(inputs))]
        trajectory_ids = [f"{self._rollout_count}-{offset + i}" for i in range(len(inputs))]

        start = time.perf_counter()
        with self.generation_backend.session():
            episodes = self._runner.run(inputs, group_ids, trajectory_ids, self.generation_backend,
                                        asynchronous=args.async_episodes)
        rollout_time = time.perf_counter() - start
        skills_active = self._skills_active(mode)
        trajectories = [ep.to_trajectory(args.invalid_action_penalty, args.analysis_gamma) for ep in episodes]
        analysis = None
        if skills_active:
            if args.overlap_analysis and getattr(self.skill_extractor, "supports_overlap", True):
                analysis = self._analysis_pool.submit(self._extract_skills, trajectories)
            else:
                analysis = Future()
                analysis.set_result(self._extract_skills(trajectories))

        # Outcome advantages over the groups, which may span processes.
        summaries = gather_object([(ep.group_id, ep.env_return, [not s.action_valid for s in ep.steps])
                                   for ep in episodes])
        counts = gather_object([len(episodes)])
        first = sum(counts[:rank])
        step_advs = episode_step_advantages(
            [s[1] for s in summaries], [s[0] for s in summaries], [s[2] for s in summaries],
            args.invalid_action_penalty, args.outcome_norm, args.outcome_grouping,
        )[first : first + len(episodes)]

        # One row per step; pad so every process has the same number, a multiple of the micro-steps.
        rows = [(e, t) for e, ep in enumerate(episodes) for t in range(len(ep.steps))]
        max_rows = int(max(gather_object([len(rows)])))
        spg = args.steps_per_generation if mode == "train" else 1
        padded_rows = max(spg * math.ceil(max_rows / spg), spg)
        prompt_list = [episodes[e].prompt_ids[t] for e, t in rows]
        completion_list = [episodes[e].completion_ids[t] for e, t in rows]
        num_pad = padded_rows - len(rows)
        filler_prompt = prompt_list[0] if prompt_list else [self._tokenizer.pad_token_id]
        filler_completion = completion_list[0] if completion_list else [self._tokenizer.pad_token_id]
        prompt_list += [filler_prompt] * num_pad
        completion_list += [filler_completion] * num_pad
        real = torch.tensor([1] * len(rows) + [0] * num_pad, dtype=torch.long)

        prompt_ids, prompt_mask = self._pad(prompt_list, "left")
        completion_ids, completion_mask = self._pad(completion_list, "right")
        completion_mask = completion_mask * real.to(device).unsqueeze(1)
        if self.mask_truncated_completions:
            eos = set(self.eos_token_ids)
            finished = torch.tensor([bool(ids) and ids[-1] in eos for ids in completion_list], device=device)
            completion_mask = completion_mask * finished.int().unsqueeze(1)

        batch = (prompt_ids, prompt_mask, completion_ids, completion_mask)
        # Old-policy log-probs from the trainer are needed when the loss step is not the sampling
        # step, for the sampler-vs-trainer importance correction, and for skill scoring on the
        # trainer. Skill scoring on the engine uses the sampler's own log-probs instead.
        sampling_logps = self._sampling_logps(episodes, rows, num_pad, completion_ids.size(1))
        engine_scoring = skills_active and args.skill_logprob_backend == "vllm"
        is_correction = self.use_vllm and self.vllm_importance_sampling_correction
        generate_every = args.steps_per_generation * self.num_iterations
        need_old = (args.gradient_accumulation_steps % generate_every != 0
                    or (is_correction and sampling_logps is not None)
                    or (skills_active and not engine_scoring))
        old_logps = self._logps(*batch) if need_old else None
        is_ratio = None
        if is_correction:
            is_ratio = torch.ones_like(completion_mask, dtype=torch.float32)
            if sampling_logps is not None:
                is_ratio = vllm_importance_ratio(old_logps, sampling_logps, completion_mask,
                                                 self.vllm_importance_sampling_mode,
                                                 self.vllm_importance_sampling_clip_min,
                                                 self.vllm_importance_sampling_clip_max)
                self._log_sampler_gap(mode, old_logps, sampling_logps, completion_mask)
        ref_logps = self._reference_logps(*batch) if self.beta != 0.0 else None

        advantages = torch.tensor([step_advs[e][t] for e, t in rows] + [0.0] * num_pad,
                                  dtype=torch.float32, device=device)
        advantages = advantages.unsqueeze(1).expand_as(completion_mask).clone()
        if analysis is not None:
            wait_start = time.perf_counter()
            skills, failures = analysis.result()
            # time/analysis: the extractor's own wall time; time/analysis_wait: what the step waited
            # for it after the log-prob passes (0 when fully overlapped).
            self._log(mode, "time/analysis", self._analysis_seconds)
            self._log(mode, "time/analysis_wait", time.perf_counter() - wait_start)
            scoring_start = time.perf_counter()
            routed_per_episode = self._finish_analysis(mode, trajectories, skills)
            routed = [routed_per_episode[e][t] for e, t in rows] + [RoutedSkill()] * num_pad
            row_index = rows + [rows[0] if rows else None] * num_pad

            def render(i: int, episode_skill: str | None, step_skill: str | None) -> Callable[[int], str]:
                location = row_index[i]
                if location is None:
                    return lambda _k: ""
                ep = episodes[location[0]]
                view = ep.views[location[1]]
                return lambda k: inject(ep.env.render_prompt(view, k), episode_skill, step_skill,
                                        task=view.task, anchor=self.instruction_anchor)

            if engine_scoring:
                scorer = self._engine_scorer(prompt_list, completion_list, sampling_logps, completion_ids.size(1))
            else:
                scorer = self._trainer_scorer(old_logps, completion_ids, completion_mask)
            skill_adv = self._skill_advantages(routed, render, scorer, completion_mask, self.history_length, mode)
            advantages = advantages + skill_adv
            self._log(mode, "time/skill_scoring", time.perf_counter() - scoring_start)
            self._log_skill_stats(mode, skill_adv, completion_mask, routed[: len(rows)] if rows else [],
                                  failures, len(trajectories))
        self._log_episode_stats(mode, episodes, len(rows), rollout_time)
        if args.log_completions:
            self._log_episode_rows(episodes, rows, step_advs)

        output = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "advantages": advantages,
            "num_items_in_batch": self.accelerator.gather(completion_mask.sum()).sum(),
        }
        if old_logps is not None:
            output["old_per_token_logps"] = old_logps
        if is_ratio is not None:
            output["importance_sampling_ratio"] = is_ratio
        if sampling_logps is not None:  # TRL's off-policy mask reads it; padding positions are masked
            output["sampling_per_token_logps"] = torch.nan_to_num(sampling_logps, nan=0.0)
        if ref_logps is not None:
            output["ref_per_token_logps"] = ref_logps
        return output

    def _sampling_logps(self, episodes: list[Episode], rows: list[tuple[int, int]], num_pad: int,
                        width: int) -> torch.Tensor | None:
        """The sampler's log-probs of every row's tokens, (B, T), NaN where none; None without any.

        Agreed across processes, so that every rank takes the same branch afterwards."""
        local = [episodes[e].sampling_logps[t] for e, t in rows]
        if not all(gather_object([all(lp is not None for lp in local)])):
            return None
        return self._float_rows(local, len(rows) + num_pad, width, fill=float("nan"))

    def _log_sampler_gap(self, mode: str, trainer_logps: torch.Tensor, sampler_logps: torch.Tensor,
                         mask: torch.Tensor) -> None:
        """How far the sampler's log-probs are from the trainer's (mean and max |diff| over tokens)."""
        valid = mask.bool() & ~torch.isnan(sampler_logps)
        gap = (trainer_logps - sampler_logps)[valid].abs().double()
        s, n = self._global_sum([gap.sum().item(), gap.numel()])
        self._log(mode, "sampling/logp_gap_mean", s / n if n else 0.0)
        self._log(mode, "sampling/logp_gap_max", self._global_max(gap))

    def _log_episode_stats(self, mode: str, episodes: list[Episode], num_rows: int, rollout_time: float) -> None:
        steps = [s for ep in episodes for s in ep.steps]
        totals = self._global_sum([
            len(episodes), sum(ep.won for ep in episodes), len(steps), sum(not s.action_valid for s in steps),
            sum(ep.env_return for ep in episodes), sum(ep.env_return**2 for ep in episodes), num_rows,
            self._runner.env_errors, self._runner.prompt_overflows,
        ])
        n_ep, n_won, n_steps, n_invalid, r_sum, r_sq, n_rows, n_err, n_overflow = totals
        mean_r = r_sum / max(n_ep, 1)
        self._log(mode, "env/success_rate", n_won / max(n_ep, 1))
        self._log(mode, "env/episode_length", n_steps / max(n_ep, 1))
        self._log(mode, "env/invalid_action_rate", n_invalid / max(n_steps, 1))
        self._log(mode, "env/rows", n_rows)
        self._log(mode, "env/errors", n_err)
        self._log(mode, "env/prompt_overflow", n_overflow)
        self._log(mode, "reward", mean_r)
        self._log(mode, "reward_std", math.sqrt(max(r_sq / max(n_ep, 1) - mean_r**2, 0.0)))
        self._log(mode, "time/rollout", rollout_time)
        per_type = gather_object([(ep.task_type or "all", float(ep.won)) for ep in episodes])
        for task_type in sorted({t for t, _ in per_type}):
            self._log(mode, f"env/success_rate/{task_type}", _mean([w for t, w in per_type if t == task_type]))

    def _log_episode_rows(self, episodes: list[Episode], rows: list[tuple[int, int]],
                          step_advs: list[list[float]]) -> None:
        """Feed GRPO's completion table (one line per step sample)."""
        prompts = [self._tokenizer.decode(episodes[e].prompt_ids[t]) for e, t in rows]
        completions = [episodes[e].steps[t].response for e, t in rows]
        self._logs["prompt"].extend(gather_object(prompts))
        self._logs["completion"].extend(gather_object(completions))
        self._logs["rewards"][self.reward_func_names[0]].extend(
            gather_object([episodes[e].env_return for e, _ in rows]))
        self._logs["advantages"].extend(gather_object([step_advs[e][t] for e, t in rows]))

