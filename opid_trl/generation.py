"""Generation backends: how the rollout turns a batch of prompt token ids into responses.

The rollout only needs two things from a backend: a *session* that wraps the whole episode loop
(where a ZeRO-3 model gathers its parameters once, so that ranks playing different numbers of
turns never wait on each other), and a batched ``generate`` call. vLLM (colocate or server)
slots in here without touching the trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import pad

if TYPE_CHECKING:
    from .trainer import OPIDTrainer


class GenerationBackend(Protocol):
    """What the episode loop needs from a generation engine."""

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Context held around one whole rollout (all turns of all episodes of a batch)."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """One sampled response per prompt, as token ids ending at (and including) EOS if produced.

        ``max_new_tokens`` overrides the per-turn budget (used by the self analyzer)."""


class TransformersGenerationBackend:
    """`model.generate` on the training model: the CPU path and the default without vLLM.

    Parameters are gathered once per session under ZeRO-3 (``ds3_gather_for_generation``), and
    ``generate`` runs with ``synced_gpus=False``: with full parameters on every rank no collective
    happens inside a forward pass, so ranks may run different numbers of turns.
    """

    def __init__(self, trainer: OPIDTrainer) -> None:
        self.trainer = trainer
        self._model = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        trainer = self.trainer
        with (
            unwrap_model_for_generation(
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                generation_kwargs=trainer.generation_kwargs,
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
        ):
            self._model = unwrapped
            try:
                yield
            finally:
                self._model = None

    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        if self._model is None:
            raise RuntimeError("TransformersGenerationBackend.generate called outside session()")
        trainer = self.trainer
        device = trainer.accelerator.device
        pad_id = trainer._tokenizer.pad_token_id
        tensors = [torch.tensor(ids, dtype=torch.long) for ids in prompt_ids]
        input_ids = pad(tensors, padding_value=pad_id, padding_side="left").to(device)
        attention_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left").to(device)
        output = self._model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=trainer.generation_config,
            synced_gpus=False,
            **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}),
        )
        completions = output[:, input_ids.size(1) :].cpu()
        eos = set(trainer.eos_token_ids)
        result = []
        for row in completions.tolist():
            cut = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
            result.append(row[:cut])
        return result
