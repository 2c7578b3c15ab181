"""TRL's agent features (`tools`, `environment_factory`, `rollout_func`) train OPIDTrainer exactly like GRPOTrainer.

The tiny tokenizer gets TRL's Qwen3 chat template, which renders tool schemas and tool calls and for which
TRL ships a response parser. A tiny random model never writes a well-formed tool call, so its first turn is
scripted where the prompt asks for a tool (`opid_trl.testing.scripted_model`). TRL's tool loop then runs the
tool, appends its result and generates again, exactly as with a model that calls tools by itself.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from opid_trl.testing import first_turn_asking, scripted_model, tool_call, tool_tokenizer

from .test_dropin import assert_chunked, assert_same_training, grpo_args, length_reward, train_pair

pytestmark = pytest.mark.filterwarnings("ignore:You are using '.*', which is an experimental feature")


def tool_rows(n: int = 8) -> Dataset:
    prompts = [f"Multiply {i} by 4." if i % 2 == 0 else f"Say {i}." for i in range(n)]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])


TOOL_ARGS = dict(max_completion_length=96, max_tool_calling_iterations=2, beta=0.02)
#: Rows per micro-step: 4, and 12 (above OPIDConfig's default `max_rows_per_forward=8`, so OPIDTrainer's chunked
#: loss pass runs with the tool mask). Float32 with Adam: see test_dropin_losses.test_chunked_options.
BATCHES = {"rows4": dict(per_device_train_batch_size=4, num_generations=2),
           "rows12_chunked": dict(per_device_train_batch_size=12, num_generations=4)}
batches = pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())


def assert_same(grpo, opid) -> None:
    chunked = opid.trainer.args.per_device_train_batch_size > opid.trainer.args.max_rows_per_forward
    if chunked:
        assert_chunked(grpo, opid)
        assert_same_training(grpo, opid, rel=1e-5, abs_=1e-7, update_rtol=5e-5)
    else:
        assert_same_training(grpo, opid)


@batches
def test_tools(tiny_model_dir, tmp_path, batch):
    calls = []

    def counted_multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        calls.append((a, b))
        return a * b

    counted_multiply.__name__ = "multiply"

    def build(name: str) -> dict[str, Any]:
        tokenizer = tool_tokenizer(tiny_model_dir)
        script = first_turn_asking("Multiply", tool_call("multiply", a=3, b=4))
        model = scripted_model(tiny_model_dir, tokenizer, script)
        return dict(model=model, reward_funcs=length_reward, args=grpo_args(tmp_path, name, **TOOL_ARGS, **batch),
                    train_dataset=tool_rows(), processing_class=tokenizer, tools=[counted_multiply])

    grpo, opid = train_pair(build)
    assert_same(grpo, opid)
    assert calls and len(calls) % 2 == 0 and calls[: len(calls) // 2] == calls[len(calls) // 2 :]
    frequencies = [e["tools/call_frequency"] for e in grpo.history if "tools/call_frequency" in e]
    assert frequencies and any(f > 0 for f in frequencies)  # the seed-0 order puts Multiply rows in step 1


class Counter:
    """A TRL environment (`environment_factory`): its public methods are the tools of the episode."""

    def reset(self, **kwargs: Any) -> str | None:
        self.total = 0
        return " The counter starts at 0."

    def increment(self, step: int) -> int:
        """Add to the counter.

        Args:
            step: How much to add.
        """
        self.total += step
        return self.total


def counter_reward(completions: list, environments: list[Counter], **kwargs: Any) -> list[float]:
    return [float(env.total) + len(c[-1]["content"]) / 10 for c, env in zip(completions, environments)]


@batches
def test_environment_factory(tiny_model_dir, tmp_path, batch):
    prompts = [f"Count up by {i}." if i % 2 == 0 else f"Say {i}." for i in range(8)]

    def build(name: str) -> dict[str, Any]:
        tokenizer = tool_tokenizer(tiny_model_dir)
        model = scripted_model(tiny_model_dir, tokenizer, first_turn_asking("Count", tool_call("increment", step=2)))
        return dict(model=model, reward_funcs=counter_reward, args=grpo_args(tmp_path, name, **TOOL_ARGS, **batch),
                    train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts]),
                    processing_class=tokenizer, environment_factory=Counter)

    grpo, opid = train_pair(build)
    assert_same(grpo, opid)
    means = [e["rewards/counter_reward/mean"] for e in grpo.history if "rewards/counter_reward/mean" in e]
    assert means and all(m >= 1.0 for m in means)  # half the episodes incremented the counter by 2
    assert opid.trainer.environment_factories is not None and opid.trainer.environment_factory is None


def sampled_rollout(prompts: list, trainer) -> dict[str, list]:
    """A custom rollout (TRL's `rollout_func`): the policy samples, the last two tokens are marked as the
    environment's (`env_mask` 0, kept out of the loss), and a per-row field reaches the reward function."""
    tokenizer = trainer.processing_class
    prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)["input_ids"]
                  for p in prompts]
    model = trainer.accelerator.unwrap_model(trainer.model)
    completion_ids = []
    with torch.no_grad():
        for ids in prompt_ids:
            output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=6, do_sample=True, pad_token_id=tokenizer.pad_token_id)
            completion_ids.append(output[0, len(ids):].tolist() + tokenizer.encode("ok", add_special_tokens=False))
    return {
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "logprobs": [[0.0] * len(ids) for ids in completion_ids],
        "env_mask": [[1] * (len(ids) - 2) + [0, 0] for ids in completion_ids],
        "parity": [len(ids) % 2 for ids in completion_ids],
    }


def parity_reward(completions: list, parity: list[int], **kwargs: Any) -> list[float]:
    return [float(p) + len(c[0]["content"]) / 10 for c, p in zip(completions, parity)]


@batches
def test_rollout_func(tiny_model_dir, tmp_path, batch):
    def build(name: str) -> dict[str, Any]:
        return dict(model=tiny_model_dir, reward_funcs=parity_reward,
                    args=grpo_args(tmp_path, name, beta=0.02, num_iterations=2, **batch),
                    train_dataset=tool_rows(), processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
                    rollout_func=sampled_rollout)

    grpo, opid = train_pair(build)
    assert_same(grpo, opid)

