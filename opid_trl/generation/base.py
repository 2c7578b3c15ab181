"""Generation backends: how the rollout turns a batch of prompt token ids into responses.

The rollout only needs two things from a backend: a *session* that wraps the whole episode loop
(where a ZeRO-3 model gathers its parameters once, so that ranks playing different numbers of
turns never wait on each other, and where a vLLM engine receives the new weights once per
optimizer step), and a batched ``sample`` call: token ids in, token ids out, never re-tokenized
text, so the loss and the skill re-scoring see exactly the sampled tokens. A backend that can
also return the sampler's log-probs (vLLM) makes the old-policy forward pass unnecessary; one
that can score given tokens (`ScoringBackend`) can re-score the skill prompts on the engine.
Backends are built from their parts (a `PolicyHandle`: the wrapped model, accelerator, tokenizer
and the small state they share with the training loop), never from the trainer:
:mod:`opid_trl.generation.transformers` and :mod:`opid_trl.generation.vllm`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from trl.trainer.utils import pad


@dataclass
class SyncState:
    """The weight-sync bookkeeping a backend shares with the training loop (and with TRL, whose own
    vLLM path reads the same value as ``GRPOTrainer._last_loaded_step``)."""

    #: The optimizer step whose weights the engine holds (-1: none pushed yet).
    last_loaded_step: int = -1


@dataclass(frozen=True)
class PolicyHandle:
    """What a generation backend (and the policy skill extractor) may read of the policy being
    trained: declared here, instead of a trainer whose private state it would reach into. Getters
    where the value changes under the backend: accelerate / DeepSpeed wrap the model when training
    starts, the optimizer step advances, evaluation switches the model to eval mode."""

    #: The model as the accelerator wrapped it now (DeepSpeed engine, DDP/FSDP module, or the model).
    wrapped_model: Callable[[], Any]
    accelerator: Any
    tokenizer: Any
    eos_token_ids: Sequence[int]
    #: The optimizer step the weights belong to (weights are synced at most once per step).
    global_step: Callable[[], int]
    #: Whether the policy is training (False: evaluation, which samples at `eval_temperature`).
    training: Callable[[], bool]
    #: Prompts (text, or chat messages) -> prompt token ids (the trainer's chat template, generation prompt added).
    tokenize_prompts: Callable[[list[Any]], list[list[int]]]
    sync: SyncState = field(default_factory=SyncState)

    def tokenize_user_messages(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text as one user message -> prompt token ids (generation prompt added)."""
        return self.tokenize_prompts([[{"role": "user", "content": t}] for t in texts]) if texts else []


@dataclass
class Sample:
    """One sampled response: its token ids (ending at, and including, EOS if produced) and, when the
    engine reports them, the sampler's log-prob of each of those tokens (after temperature)."""

    token_ids: list[int]
    logprobs: list[float] | None = None


class GenerationBackend(Protocol):
    """What the episode loop needs from a generation engine."""

    #: Whether several threads may call `sample` at once (asynchronous episodes need it).
    thread_safe: bool

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Context held around one whole rollout (all turns of all episodes of a batch)."""

    def sample(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Sample]:
        """One sampled response per prompt. ``max_new_tokens`` overrides the per-turn budget."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """The token ids of `sample` (used by the policy skill extractor)."""


@dataclass
class PrefillCount:
    """What scoring cost an engine: rows scored, tokens sent (prompt + completion) and tokens it
    computed; the difference came from its prefix cache."""

    rows: int = 0
    tokens: int = 0
    computed: int = 0
    #: rows whose scored tokens the cache held (scored before), so they were scored again without it
    rescored: int = 0

    def add(self, tokens: int, computed: int) -> None:
        """One request: ``tokens`` sent, ``computed`` of them not served from the prefix cache."""
        self.tokens += tokens
        self.computed += computed

    def since(self, earlier: PrefillCount) -> PrefillCount:
        """The count accumulated after ``earlier`` (a copy taken before)."""
        return PrefillCount(self.rows - earlier.rows, self.tokens - earlier.tokens, self.computed - earlier.computed,
                            self.rescored - earlier.rescored)


@runtime_checkable
class ScoringBackend(Protocol):
    """A backend that can also score given tokens: per-token log-probs of ``completion_ids[i]``
    after ``prompt_ids[i]``, with no sampling and no temperature.

    ``reuse_prefix``: the engine may read its prefix cache (KV of earlier requests with the same
    leading tokens) and compute only the rest; callers turn it off for sequences the engine has
    just generated whole (nothing left to compute). A backend may count what scoring computed in
    a `PrefillCount` attribute ``prefill`` (read with `prefill_count`)."""

    def score(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
              reuse_prefix: bool = True) -> list[list[float]]: ...


def prefill_count(backend: Any) -> PrefillCount:
    """A copy of ``backend``'s scoring cost so far (all zero for a backend that does not count)."""
    count = getattr(backend, "prefill", None)
    return dataclasses.replace(count) if count is not None else PrefillCount()


def sample_with(backend: GenerationBackend, prompt_ids: Sequence[Sequence[int]]) -> list[Sample]:
    """`backend.sample`, or `generate` for a custom backend that only implements that."""
    if hasattr(backend, "sample"):
        return backend.sample(prompt_ids)
    return [Sample(list(ids)) for ids in backend.generate(prompt_ids)]


class SamplingBackend:
    """Shared `generate` of the backends: the token ids of `sample`."""

    thread_safe = False

    def sample(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Sample]:
        raise NotImplementedError

    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        return [s.token_ids for s in self.sample(prompt_ids, max_new_tokens)]


def generate_batch(model, prompt_ids: Sequence[Sequence[int]], pad_token_id: int, eos_token_ids: Sequence[int],
                   generation_config, device, max_new_tokens: int | None = None) -> list[list[int]]:
    """Left-pad the prompts, sample once each, and cut every response after its first EOS."""
    tensors = [torch.tensor(ids, dtype=torch.long) for ids in prompt_ids]
    input_ids = pad(tensors, padding_value=pad_token_id, padding_side="left").to(device)
    attention_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left").to(device)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=generation_config,
        synced_gpus=False,
        **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}),
    )
    eos = set(eos_token_ids)
    result = []
    for row in output[:, input_ids.size(1) :].cpu().tolist():
        cut = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
        result.append(row[:cut])
    return result


class ModelGenerationBackend(SamplingBackend):
    """`generate` on a plain model outside any trainer (evaluation, inference)."""

    def __init__(self, model, tokenizer, generation_config, eos_token_ids: Sequence[int] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.eos_token_ids = list(eos_token_ids or [tokenizer.eos_token_id])

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with torch.no_grad():
            yield

    def sample(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Sample]:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        ids = generate_batch(self.model, prompt_ids, pad_id, self.eos_token_ids, self.generation_config,
                             self.model.device, max_new_tokens)
        return [Sample(row) for row in ids]
