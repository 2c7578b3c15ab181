"""Rollouts through vLLM: the colocated engine TRL builds, or a `vllm serve` server.

Both backends take token ids and return token ids with the sampler's log-prob of every sampled
token (``logprobs=0``, engine started with ``logprobs_mode="processed_logprobs"``, so the values
are after temperature, like the trainer's), and can score given tokens under another prompt
(``prompt_logprobs``), which is how OPID's skill prompts are re-scored on the engine.

Weights are synced at most once per optimizer step, when a session opens (a rollout, or the policy
skill extractor), never per turn:

- colocate: TRL's `VLLMGeneration.sync_weights` (per-tensor `load_weights`; ZeRO-3 / FSDP / PEFT
  handled by TRL), or on CPU engines the full reload of :mod:`opid_trl.generation.vllm_cpu`;
- server: TRL's NCCL weight transfer from the main process (GPU), or on CPU a safetensors file the
  server loads through ``/collective_rpc`` (:mod:`opid_trl.generation.vllm_cpu`).

Server mode never gathers prompts across processes: every process sends its own requests, so
ranks with different numbers of active episodes or turns never wait on each other (TRL's own
server path gathers, and assumes equal counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opid_trl.generation.base import PolicyHandle, PrefillCount, Sample, SamplingBackend
from opid_trl.generation.vllm_cpu import is_cpu_engine, push_weights_to_server, reload_colocated_weights


@dataclass(frozen=True)
class SamplingSettings:
    """The trainer's generation settings, as the engine needs them (one sample per prompt)."""

    temperature: float
    top_p: float
    top_k: int | None
    min_p: float | None
    repetition_penalty: float
    max_completion_length: int
    #: Temperature of evaluation rollouts (None: the training one).
    eval_temperature: float | None = None
    #: The user's extra sampling parameters (TRL's ``generation_kwargs``), passed on as they are.
    generation_kwargs: Mapping[str, Any] | None = None

    def vllm(self, training: bool, eos_token_ids: Sequence[int], max_new_tokens: int | None) -> dict[str, Any]:
        """vLLM sampling parameters equal to the trainer's generation settings."""
        temperature = self.temperature
        if not training and self.eval_temperature is not None:
            temperature = self.eval_temperature
        settings = {
            "n": 1,
            "temperature": temperature,
            "top_p": self.top_p,
            "top_k": self.top_k if self.top_k is not None else 0,
            "min_p": self.min_p or 0.0,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": max_new_tokens or self.max_completion_length,
            "logprobs": 0,
            "stop_token_ids": list(eos_token_ids),
        }
        settings.update(self.generation_kwargs or {})
        return settings

    @property
    def logprobs_are_plain(self) -> bool:
        """Whether the sampler's log-probs equal the untempered model log-probs that prompt scoring
        gives (temperature 1 and no top-k / top-p / min-p / repetition penalty): then they can stand
        for ``l_old`` next to engine-scored skill prompts."""
        return (self.temperature == 1.0 and self.top_p == 1.0 and not self.top_k and not self.min_p
                and self.repetition_penalty == 1.0)


class _VLLMBackend(SamplingBackend):
    """Shared weight-sync bookkeeping: once per optimizer step, when a session opens.

    Args:
        policy: the policy being trained (see `PolicyHandle`); its ``sync`` state is shared with TRL.
        vllm_generation: TRL's `VLLMGeneration` (the engine or the server client, and weight sync).
        sampling: the trainer's generation settings.
    """

    def __init__(self, policy: PolicyHandle, vllm_generation: Any, sampling: SamplingSettings) -> None:
        self.policy = policy
        self.vllm_generation = vllm_generation
        self.sampling = sampling
        self.weight_syncs = 0
        #: what engine scoring computed (`score`), against what it was sent
        self.prefill = PrefillCount()

    def _sync_if_stale(self) -> None:
        """Push the policy's weights when the engine holds an older optimizer step's (at most once per step)."""
        step = self.policy.global_step()
        if step == self.policy.sync.last_loaded_step:
            return
        self._push_weights()
        self.policy.sync.last_loaded_step = step
        self.weight_syncs += 1

    def _push_weights(self) -> None:
        raise NotImplementedError

    def _sampling_params(self, max_new_tokens: int | None) -> dict[str, Any]:
        return self.sampling.vllm(self.policy.training(), self.policy.eos_token_ids, max_new_tokens)


class VLLMColocateBackend(_VLLMBackend):
    """The in-process engine of every training process (TRL's `vllm_mode="colocate"`).

    With `vllm_enable_sleep_mode`, the engine wakes when a session opens and sleeps (level 1:
    weights kept in host memory, KV cache freed) when it closes, so the training step has the
    accelerator's memory to itself.
    """

    def __init__(self, policy: PolicyHandle, vllm_generation: Any, sampling: SamplingSettings) -> None:
        super().__init__(policy, vllm_generation, sampling)
        self.llm = self.vllm_generation.llm
        self._sleep = bool(self.vllm_generation.enable_sleep_mode)
        self._open_sessions = 0
        #: whether prompt-log-prob requests can read the prefix cache on the installed vLLM
        self._reads_prefix = prefix_reads_supported()
        if self._sleep and getattr(self.vllm_generation, "_llm_weights_sleeping", False):
            # TRL put the fresh engine to sleep at level 2 (weights discarded): the first session pushes them.
            self.llm.wake_up()
            self.vllm_generation._llm_weights_sleeping = False
            policy.sync.last_loaded_step = -1

    @property
    def forgets_prefix_cache(self) -> bool:
        """Whether the engine's prefix cache is gone when a session closes (sleep mode discards the KV
        cache): a caller that scores skill prompts after a rollout then holds one session over both."""
        return self._sleep

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Wake the engine (sleep mode), sync stale weights, and put it back to sleep afterwards.
        Sessions nest: only the outermost one wakes and sleeps."""
        outermost = self._open_sessions == 0
        if outermost and self._sleep:
            self.llm.wake_up()
        self._open_sessions += 1
        try:
            self._sync_if_stale()
            yield
        finally:
            self._open_sessions -= 1
            if outermost and self._sleep:
                self.llm.sleep(level=1)

    def _push_weights(self) -> None:
        if is_cpu_engine():
            reload_colocated_weights(self.llm, self.vllm_generation._iter_named_params())
        else:
            self.vllm_generation.sync_weights()

    def sample(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Sample]:
        """One response per prompt with the sampler's log-prob of each token (after temperature)."""
        from vllm import SamplingParams

        if not prompt_ids:
            return []
        params = SamplingParams(**self._sampling_params(max_new_tokens))
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        samples = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            samples.append(Sample(ids, logprobs))
        return samples

    def score(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
              reuse_prefix: bool = True) -> list[list[float]]:
        """Prompt log-probs of the given completions (no sampling, temperature 1): engine skill scoring.

        vLLM skips its prefix cache for requests that ask for prompt log-probs unless told not to
        (``skip_reading_prefix_cache``, where the installed vLLM has it). With ``reuse_prefix`` the engine reads it:
        a skill prompt shares its leading tokens with the prompt the engine just generated from
        (the step skill sits late in the prompt), so only the blocks from the first changed one
        are computed. Positions served from the cache come back without valid log-probs; a row
        whose completion reached into the cache (a sequence scored before) is scored again without it.
        """
        if not prompt_ids:
            return []
        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        starts = [len(p) for p in prompt_ids]
        values: list[list[float] | None] = [None] * len(sequences)
        pending = list(range(len(sequences)))
        for read_cache in ((True, False) if reuse_prefix and self._reads_prefix else (False,)):
            outputs = self._prompt_logprobs([sequences[i] for i in pending], read_cache)
            missing = []
            for i, output in zip(pending, outputs):
                # the log-prob of token j needs the logits of position j - 1, computed only past the cache
                if (output.num_cached_tokens or 0) >= starts[i]:
                    missing.append(i)  # the completion came from the cache (scored before): again, below
                    continue
                row = output.prompt_logprobs[starts[i]:]
                values[i] = [position[token].logprob for position, token in zip(row, sequences[i][starts[i]:])]
            pending = missing
            self.prefill.rescored += len(missing) if read_cache else 0
        if pending:
            raise RuntimeError(f"the engine returned no prompt log-probs for {len(pending)} scored rows")
        self.prefill.rows += len(sequences)
        return values  # type: ignore[return-value]

    def _prompt_logprobs(self, sequences: list[list[int]], read_cache: bool) -> list[Any]:
        """One engine pass over ``sequences`` with prompt log-probs; counts the tokens it computed."""
        from vllm import SamplingParams

        options: dict[str, Any] = {"skip_reading_prefix_cache": not read_cache} if self._reads_prefix else {}
        # no detokenizing: it would read the ids of cached positions, which are not filled in
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False, **options)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
        for sequence, output in zip(sequences, outputs):
            self.prefill.add(tokens=len(sequence), computed=len(sequence) - (output.num_cached_tokens or 0))
        return outputs


class VLLMServerBackend(_VLLMBackend):
    """A `vllm serve` server (TRL's `vllm_mode="server"`), shared by every training process.

    Each process talks to the server with its own client; requests from several threads may be in
    flight at once (asynchronous episodes), the server batches them continuously.
    """

    thread_safe = True

    def __init__(self, policy: PolicyHandle, vllm_generation: Any, sampling: SamplingSettings, base_url: str,
                 connection_timeout: float, weights_dir: str) -> None:
        from trl.generation.vllm_client import VLLMClient

        super().__init__(policy, vllm_generation, sampling)
        main_client = getattr(self.vllm_generation, "vllm_client", None)
        self.client = main_client or VLLMClient(base_url=base_url, connection_timeout=connection_timeout)
        self.base_url = self.client.base_url
        #: where a CPU server's weights are written for it to load
        self.weights_dir = weights_dir
        self.file_weight_sync = policy.accelerator.device.type == "cpu"

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Sync stale weights to the server once; requests then go out as they come."""
        self._sync_if_stale()
        yield

    def _push_weights(self) -> None:
        accelerator = self.policy.accelerator
        # Every process must be done with its requests first: the server cannot drop the KV cache of
        # the old weights while requests of a slower process still hold it.
        accelerator.wait_for_everyone()
        if not self.file_weight_sync:
            self.vllm_generation.sync_weights()  # NCCL from the main process; every process takes part
            accelerator.wait_for_everyone()
            return
        weights = self.vllm_generation._iter_named_params()  # every process iterates (ZeRO-3 gathers)
        if accelerator.is_main_process:
            push_weights_to_server(self.client.session, self.base_url, weights, directory=self.weights_dir)
        else:
            for _ in weights:
                pass
        accelerator.wait_for_everyone()  # nobody samples from the old weights

    def sample(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Sample]:
        """One response per prompt from the server, with the sampler's log-probs; never gathered
        across processes, so ranks with different numbers of active episodes never wait."""
        if not prompt_ids:
            return []
        extra = self._sampling_params(max_new_tokens)
        named = {key: extra.pop(key) for key in ("n", "repetition_penalty", "temperature", "top_p", "top_k", "min_p",
                                                  "max_tokens", "logprobs")}
        # what is left (stop tokens, the user's generation_kwargs) goes into the request body as it is
        output = self.client.generate(prompts=[list(ids) for ids in prompt_ids], generation_kwargs=extra, **named)
        return [Sample(list(ids), [lp[0] for lp in logprobs])
                for ids, logprobs in zip(output["completion_ids"], output["logprobs"])]

    def score(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
              reuse_prefix: bool = True) -> list[list[float]]:
        """Per-token log-probs of the given completions after their prompts, computed by the server.

        Always a full prefill (``reuse_prefix`` has no effect): vLLM's ``/v1/completions`` has no
        field for ``skip_reading_prefix_cache``, which defaults to True for requests that ask for
        prompt log-probs (vLLM 0.30: ``CompletionRequest.to_sampling_params``)."""
        if not prompt_ids:
            return []
        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        result = self.client.get_sequence_logprobs(sequences, [len(p) for p in prompt_ids], top_logprobs=0)
        self.prefill.rows += len(sequences)
        for sequence in sequences:  # the server's completions endpoint never reads the prefix cache here
            self.prefill.add(tokens=len(sequence), computed=len(sequence))
        return [[position[0] for position in row] for row in result["actual_logprobs"]]


def prefix_reads_supported() -> bool:
    """Whether the installed vLLM lets prompt-log-prob requests read the prefix cache
    (``SamplingParams.skip_reading_prefix_cache``)."""
    from vllm import SamplingParams

    return "skip_reading_prefix_cache" in getattr(SamplingParams, "__struct_fields__", ())


def sampler_logprobs_are_plain(backend: Any) -> bool:
    """Whether ``backend`` is a vLLM backend whose sampler log-probs are on the untempered scale the
    engine scores on (`SamplingSettings.logprobs_are_plain`)."""
    return isinstance(backend, _VLLMBackend) and backend.sampling.logprobs_are_plain
