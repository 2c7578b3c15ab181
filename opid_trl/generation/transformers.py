"""Rollouts through transformers `generate` on the training model: the CPU path, and the default
without vLLM."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from trl.models import unwrap_model_for_generation

from opid_trl.generation.base import PolicyHandle, Sample, SamplingBackend, generate_batch


class TransformersGenerationBackend(SamplingBackend):
    """`model.generate` on the training model.

    Parameters are gathered once per session under ZeRO-3 (``gather_deepspeed3_params``), and
    ``generate`` runs with ``synced_gpus=False``: with full parameters on every rank no collective
    happens inside a forward pass, so ranks may run different numbers of turns.

    Args:
        policy: the policy being trained (see `PolicyHandle`).
        generation_config: sampling settings of training rollouts.
        eval_temperature: temperature of evaluation rollouts (None: the training one).
        gather_deepspeed3_params: TRL's ``ds3_gather_for_generation``.
        generation_kwargs, gradient_checkpointing_kwargs: as TRL's `unwrap_model_for_generation` takes them.
        summon_full_params: FSDP's full-parameter context for the wrapped model (TRL's
            ``DistributedBackend.summon_full_params``); None outside FSDP.
    """

    def __init__(self, policy: PolicyHandle, generation_config: Any, eval_temperature: float | None = None,
                 gather_deepspeed3_params: bool = True, generation_kwargs: Mapping[str, Any] | None = None,
                 gradient_checkpointing_kwargs: Mapping[str, Any] | None = None,
                 summon_full_params: Any = None) -> None:
        self.policy = policy
        self.generation_config = generation_config
        self.eval_temperature = eval_temperature
        self.gather_deepspeed3_params = gather_deepspeed3_params
        self.generation_kwargs = generation_kwargs
        self.gradient_checkpointing_kwargs = gradient_checkpointing_kwargs
        self.summon_full_params = summon_full_params
        self._model = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Unwrap (and under ZeRO-3 gather) the policy once for the whole rollout, without grad."""
        wrapped = self.policy.wrapped_model()
        full_params = (self.summon_full_params(wrapped, recurse=False) if self.summon_full_params is not None
                       else contextlib.nullcontext())
        with (
            unwrap_model_for_generation(
                wrapped,
                self.policy.accelerator,
                gather_deepspeed3_params=self.gather_deepspeed3_params,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            full_params,
        ):
            self._model = unwrapped
            try:
                yield
            finally:
                self._model = None

    def sample(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Sample]:
        """One response per prompt, at `eval_temperature` while the policy is in evaluation mode."""
        if self._model is None:
            raise RuntimeError("TransformersGenerationBackend.generate called outside session()")
        generation_config = self.generation_config
        if not self.policy.training() and self.eval_temperature is not None:
            generation_config = copy.deepcopy(generation_config)
            generation_config.temperature = self.eval_temperature
        ids = generate_batch(self._model, prompt_ids, self.policy.tokenizer.pad_token_id, self.policy.eos_token_ids,
                             generation_config, self.policy.accelerator.device, max_new_tokens)
        return [Sample(row) for row in ids]
