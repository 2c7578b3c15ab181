"""An existing TRL agent pipeline, then the same pipeline with OPID: swap the class, add a skill extractor.

The pipeline is TRL's own: search QA (our generated corpus with a BM25 retriever, offline) exposed as
an `environment_factory` environment whose public methods `search(query)` and `answer(text)` are the
tools, `reset()` starting an episode and `get_reward()` its reward (exact match of the answer).
TRL rolls each episode out with its tool-call loop. `--trainer opid` changes two things only:
`OPIDTrainer` / `OPIDConfig` instead of `GRPOTrainer` / `GRPOConfig`, and a skill extractor. OPID
then reads every conversation in hindsight, gives each assistant turn a skill (critical-first) and
adds lambda * (the old policy's log-prob shift under that skill) to each turn's tokens.

    python examples/search_qa_tools.py --trainer grpo
    python examples/search_qa_tools.py --trainer opid

On the embedded SmolLM2-135M-Instruct (the default, offline) this runs on a CPU in minutes, but a
model that small seldom writes a well-formed tool call: take a tool-calling instruct model
(`--model Qwen/Qwen3-0.6B`, a GPU) to see episodes of several turns. The tokenizer gets TRL's
Qwen3 chat template when its own cannot render tool calls.
"""

from __future__ import annotations

import argparse
from typing import Any

from datasets import Dataset

from environments.search_qa import SearchQAEnvironment, search_qa_tasks

# ============================================================== the TRL pipeline (unchanged by OPID)
INSTRUCTION = ("Answer the question. Call search(query) to look facts up, as often as you need, then "
               "answer(text) with a short answer.\nQuestion: {question}")


class SearchQATools:
    """Search QA as a TRL environment: its public methods are the episode's tools."""

    def __init__(self) -> None:
        self.env = SearchQAEnvironment(max_turns=None)
        self.reward = 0.0

    def reset(self, **row: Any) -> str | None:
        self.env.reset(row)
        self.reward = 0.0
        return None  # the question is in the prompt already

    def search(self, query: str) -> str:
        """Search the knowledge base.

        Args:
            query: What to look up.
        """
        return self.env.step(f"<search>{query}</search>").observation

    def answer(self, text: str) -> str:
        """Give the final answer.

        Args:
            text: The answer, as short as possible.
        """
        result = self.env.step(f"<answer>{text}</answer>")
        self.reward = float(result.reward)
        return result.observation

    def get_reward(self) -> float:
        return self.reward


def dataset(num_tasks: int, seed: int) -> Dataset:
    rows = search_qa_tasks("train", num_tasks, seed=seed)
    return Dataset.from_list([{**row, "prompt": [{"role": "user", "content": INSTRUCTION.format(**row)}]}
                              for row in rows])


def tokenizer_with_tools(model: str):
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen3_chat_template, supports_tool_calling

    tokenizer = AutoTokenizer.from_pretrained(model)
    if not supports_tool_calling(tokenizer):
        tokenizer.chat_template = qwen3_chat_template
    return tokenizer


# ============================================================== GRPO, or the same with OPID
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", choices=["grpo", "opid"], default="opid")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a hub id, a folder, or the embedded model")
    parser.add_argument("--output-dir", default="outputs/search_qa_tools")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--num-tasks", type=int, default=32)
    args = parser.parse_args(argv)

    from opid_trl.runs.embedded import resolve_model

    model = resolve_model(args.model)
    settings = dict(output_dir=f"{args.output_dir}/{args.trainer}", max_steps=args.max_steps,
                    per_device_train_batch_size=4, num_generations=4, max_completion_length=256,
                    max_tool_calling_iterations=3, learning_rate=1e-5, logging_steps=1, save_strategy="no",
                    report_to=[], seed=0, use_cpu=True, bf16=False)
    common = dict(model=model, train_dataset=dataset(args.num_tasks, seed=0),
                  processing_class=tokenizer_with_tools(model), environment_factory=SearchQATools)
    if args.trainer == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(args=GRPOConfig(**settings), **common)
    else:
        from opid_trl import OPIDConfig, OPIDTrainer

        trainer = OPIDTrainer(args=OPIDConfig(**settings, skill_coef_episode=0.001, skill_coef_step=0.001),
                              skill_extractor="rule_based", **common)
    trainer.train()
    return {"trainer": trainer, "history": trainer.state.log_history}


if __name__ == "__main__":
    main()
