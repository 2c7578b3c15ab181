"""Rollouts through vLLM: the colocated engine TRL builds, or a `vllm serve` server.

Both backends take token ids and return token ids with the sampler's log-prob of every sampled
token (``logprobs=0``, engine started with ``logprobs_mode="processed_logprobs"``, so the values
are after temperature, like the trainer's), and can score given tokens under another prompt
(``prompt_logprobs``), which is how OPID's skill prompts are re-scored on the engine.

Weights are synced at most once per optimizer step, when a session opens (a rollout, or the policy
skill extractor), never per turn:

- colocate: TRL's `VLLMGeneration.sync_weights` (per-tensor `load_weights`; ZeRO-3 / FSDP / PEFT
  handled by TRL), or on CPU engines the full reload of :mod:`opid_trl.vllm_cpu`;
- server: TRL's NCCL weight transfer from the main process (GPU), or on CPU a safetensors file the
  server loads through ``/collective_rpc`` (:mod:`opid_trl.vllm_cpu`).

Server mode never gathers prompts across processes: every process sends its own requests, so
ranks with different numbers of active episodes or turns never wait on each other (TRL's own
server path gathers, and assumes equal counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .generation import Sample, SamplingBackend
from .vllm_cpu import is_cpu_engine, push_weights_to_server, reload_colocated_weights

if TYPE_CHECKING:
    from .trainer import OPIDTrainer


def sampling_settings(trainer: OPIDTrainer, max_new_tokens: int | None) -> dict[str, Any]:
    """vLLM sampling parameters equal to the trainer's generation settings (one sample per prompt)."""
    args = trainer.args
    temperature = trainer.temperature
    if not trainer.model.training and args.eval_temperature is not None:
        temperature = args.eval_temperature
    settings = {
        "n": 1,
        "temperature": temperature,
        "top_p": trainer.top_p,
        "top_k": trainer.top_k if trainer.top_k is not None else 0,
        "min_p": trainer.min_p or 0.0,
        "repetition_penalty": trainer.repetition_penalty,
        "max_tokens": max_new_tokens or trainer.max_completion_length,
        "logprobs": 0,
        "stop_token_ids": list(trainer.eos_token_ids),
    }
    settings.update(args.generation_kwargs or {})
    return settings


def sampler_logprobs_are_plain(trainer: OPIDTrainer) -> bool:
    """Whether the sampler's log-probs equal the untempered model log-probs that prompt scoring gives
    (temperature 1 and no top-k / top-p / min-p / repetition penalty): then they can stand for
    ``l_old`` next to engine-scored skill prompts."""
    return (trainer.temperature == 1.0 and trainer.top_p == 1.0 and not trainer.top_k and not trainer.min_p
            and trainer.repetition_penalty == 1.0)


class _VLLMBackend(SamplingBackend):
    """Shared weight-sync bookkeeping: once per optimizer step, when a session opens."""

    def __init__(self, trainer: OPIDTrainer) -> None:
        self.trainer = trainer
        self.vllm_generation = trainer.vllm_generation
        self.weight_syncs = 0

    def _sync_if_stale(self) -> None:
        trainer = self.trainer
        if trainer.state.global_step == trainer._last_loaded_step:
            return
        self._push_weights()
        trainer._last_loaded_step = trainer.state.global_step
        self.weight_syncs += 1

    def _push_weights(self) -> None:
        raise NotImplementedError


class VLLMColocateBackend(_VLLMBackend):
    """The in-process engine of every training process (TRL's `vllm_mode="colocate"`).

    With `vllm_enable_sleep_mode`, the engine wakes when a session opens and sleeps (level 1:
    weights kept in host memory, KV cache freed) when it closes, so the training step has the
    accelerator's memory to itself.
    """

    def __init__(self, trainer: OPIDTrainer) -> None:
        super().__init__(trainer)
        self.llm = self.vllm_generation.llm
        self._sleep = bool(self.vllm_generation.enable_sleep_mode)
        if self._sleep and getattr(self.vllm_generation, "_llm_weights_sleeping", False):
            # TRL put the fresh engine to sleep at level 2 (weights discarded): the first session pushes them.
            self.llm.wake_up()
            self.vllm_generation._llm_weights_sleeping = False
            trainer._last_loaded_step = -1

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        if self._sleep:
            self.llm.wake_up()
        try:
            self._sync_if_stale()
            yield
        finally:
            if self._sleep:
                self.llm.sleep(level=1)

    def _push_weights(self) -> None:
        if is_cpu_engine():
            reload_colocated_weights(self.llm, self.vllm_generation._iter_named_params())
        else:
            self.vllm_generation.sync_weights()

    def sample(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Sample]:
        from vllm import SamplingParams

        if not prompt_ids:
            return []
        params = SamplingParams(**sampling_settings(self.trainer, max_new_tokens))
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        samples = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            samples.append(Sample(ids, logprobs))
        return samples

    def score(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        from vllm import SamplingParams

        if not prompt_ids:
            return []
        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
        return [
            [output.prompt_logprobs[i][seq[i]].logprob for i in range(len(prompt), len(seq))]
            for output, seq, prompt in zip(outputs, sequences, prompt_ids)
        ]


class VLLMServerBackend(_VLLMBackend):
    """A `vllm serve` server (TRL's `vllm_mode="server"`), shared by every training process.

    Each process talks to the server with its own client; requests from several threads may be in
    flight at once (asynchronous episodes), the server batches them continuously.
    """

    thread_safe = True

    def __init__(self, trainer: OPIDTrainer) -> None:
        from trl.generation.vllm_client import VLLMClient

        super().__init__(trainer)
        args = trainer.args
        base_url = args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"
        main_client = getattr(self.vllm_generation, "vllm_client", None)
        self.client = main_client or VLLMClient(base_url=base_url, connection_timeout=args.vllm_server_timeout)
        self.base_url = self.client.base_url
        self.file_weight_sync = trainer.accelerator.device.type == "cpu"

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        self._sync_if_stale()
        yield

    def _push_weights(self) -> None:
        trainer = self.trainer
        # Every process must be done with its requests first: the server cannot drop the KV cache of
        # the old weights while requests of a slower process still hold it.
        trainer.accelerator.wait_for_everyone()
        if not self.file_weight_sync:
            self.vllm_generation.sync_weights()  # NCCL from the main process; every process takes part
            trainer.accelerator.wait_for_everyone()
            return
        weights = self.vllm_generation._iter_named_params()  # every process iterates (ZeRO-3 gathers)
        if trainer.accelerator.is_main_process:
            push_weights_to_server(self.client.session, self.base_url, weights, directory=trainer.args.output_dir)
        else:
            for _ in weights:
                pass
        trainer.accelerator.wait_for_everyone()  # nobody samples from the old weights

    def sample(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Sample]:
        if not prompt_ids:
            return []
        extra = sampling_settings(self.trainer, max_new_tokens)
        named = {key: extra.pop(key) for key in ("n", "repetition_penalty", "temperature", "top_p", "top_k", "min_p",
                                                  "max_tokens", "logprobs")}
        # what is left (stop tokens, the user's generation_kwargs) goes into the request body as it is
        output = self.client.generate(prompts=[list(ids) for ids in prompt_ids], generation_kwargs=extra, **named)
        return [Sample(list(ids), [lp[0] for lp in logprobs])
                for ids, logprobs in zip(output["completion_ids"], output["logprobs"])]

    def score(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        if not prompt_ids:
            return []
        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        result = self.client.get_sequence_logprobs(sequences, [len(p) for p in prompt_ids], top_logprobs=0)
        return [[position[0] for position in row] for row in result["actual_logprobs"]]


def make_vllm_backend(trainer: OPIDTrainer) -> VLLMColocateBackend | VLLMServerBackend:
    """The backend for the trainer's `vllm_mode`."""
    if trainer.args.vllm_mode == "colocate":
        return VLLMColocateBackend(trainer)
    return VLLMServerBackend(trainer)
