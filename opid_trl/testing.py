"""A tiny random chat model built from a config (no download), for tests, benchmarks and smoke runs.

The tokenizer is a small BPE trained on the fly on text like the environments' prompts, so
sequences stay short and a forward pass costs milliseconds on a CPU. For TRL's tool-call loop the
tiny model gets TRL's Qwen3 chat template (`tool_tokenizer`) and a scripted first turn
(`scripted_model`): a random model never writes a well-formed tool call by itself.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]


def _training_corpus() -> list[str]:
    from environments import FetchEnvironment, make_fetch_task
    from environments.base import PromptView

    env = FetchEnvironment()
    texts = []
    for seed in range(40):
        observation = env.reset(make_fetch_task(seed))
        view = PromptView(env.task_description, 0, observation, env.admissible_actions)
        texts.append(env.render_prompt(view, 2))
        texts.append(f"<think>I should {env.expert_action()} now.</think><action>{env.expert_action()}</action>")
    texts += ["What is the capital of France? Paris is the answer.", "Write a short poem about the sea."]
    return texts


def build_tiny_tokenizer(vocab_size: int = 400):
    """A fast BPE tokenizer with a ChatML template, trained on environment-like text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<|im_end|>", bos_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
                     tie_word_embeddings: bool = False):
    """A randomly initialised 2-layer Llama sized to ``tokenizer`` (2 heads: head size hidden_size / 2)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(directory: str | Path, seed: int = 0, **model_kwargs) -> Path:
    """Build the tiny tokenizer and model (``model_kwargs``: see `build_tiny_model`) and save both to
    ``directory`` (returned)."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, **model_kwargs)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def save_tiny_vllm_model(directory: str | Path, seed: int = 0) -> Path:
    """The tiny model at a shape vLLM's CPU attention accepts (head size 64), with a tied lm-head
    (the case where a weight sync must refresh the lm-head too)."""
    return save_tiny_model(directory, seed=seed, hidden_size=128, tie_word_embeddings=True)


def free_port() -> int:
    """A TCP port free on the loopback interface now (for test servers and torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- TRL tool rollouts on the tiny model
def tool_call(name: str, **arguments: Any) -> str:
    """An assistant turn calling ``name`` in Qwen's format, ended like a real one."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call><|im_end|>"


def tool_tokenizer(model_dir: str):
    """A fresh tiny tokenizer with a tool-calling chat template (TRL sets its response parser on it)."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen3_chat_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = qwen3_chat_template
    return tokenizer


def scripted_model(model_dir: str, tokenizer, script: Callable[[str], str | None]):
    """The tiny model, whose completions become ``script(prompt text)`` where that is not None: `generate`
    still runs (and draws from the RNG) for every row, then those rows' completions are replaced."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generate = model.generate

    def scripted_generate(*args: Any, input_ids: "torch.Tensor", attention_mask: "torch.Tensor", **kwargs: Any):
        output = generate(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        width = input_ids.size(1)
        completions = []
        for row, mask, generated in zip(input_ids, attention_mask, output[:, width:]):
            text = script(tokenizer.decode(row[mask.bool()]))
            completions.append(generated.tolist() if text is None else tokenizer.encode(text, add_special_tokens=False))
        padded = torch.full((len(completions), max(map(len, completions))), tokenizer.pad_token_id,
                            dtype=output.dtype, device=output.device)
        for i, ids in enumerate(completions):
            padded[i, : len(ids)] = torch.tensor(ids, dtype=output.dtype)
        return torch.cat([input_ids, padded], dim=1)

    model.generate = scripted_generate
    return model


def first_turn_asking(word: str, call: str) -> Callable[[str], str | None]:
    """Call the tool on the first turn of prompts whose user message mentions ``word``; generate freely after."""

    def script(prompt: str) -> str | None:
        user = prompt.rsplit("<|im_start|>user", 1)[-1]
        return call if word in user and "<tool_response>" not in user else None

    return script
