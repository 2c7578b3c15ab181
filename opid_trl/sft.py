"""SFT warm start: expert trajectories rendered with the RL prompt template, trained with TRL's
`SFTTrainer`, so that a small model starts RL from a policy that follows the output format.

Each expert step becomes one prompt/completion pair, exactly as the RL rollout would render it
(same environment template, same history window), with a short reasoning before the action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from environments.base import AgentEnvironment, HistoryEntry, PromptView


def expert_examples(env_factory: Callable[[], AgentEnvironment], task_rows: Iterable[Mapping[str, Any]],
                    history_length: int, max_turns: int) -> tuple[list[dict], dict[str, float]]:
    """Prompt/completion pairs from expert episodes, and the expert's success rate.

    The completion is the environment's `expert_response()`. Episodes where the environment knows
    no expert action end there; a failed expert episode is
    dropped (its steps may teach mistakes).
    """
    env = env_factory()
    examples, won, played = [], 0, 0
    for row in task_rows:
        observation = env.reset(row)
        history: list[HistoryEntry] = []
        episode: list[dict] = []
        success = False
        for turn in range(max_turns):
            response = env.expert_response()
            if response is None:
                break
            action, _ = env.parse_action(response)
            view = PromptView(env.task_description, turn, observation, tuple(env.admissible_actions), tuple(history))
            episode.append({"prompt": [{"role": "user", "content": env.render_prompt(view, history_length)}],
                            "completion": [{"role": "assistant", "content": response}]})
            result = env.step(response)
            history.append(HistoryEntry(observation, action or response))
            observation = result.observation
            if result.done:
                success = result.won
                break
        played += 1
        if success:
            won += 1
            examples.extend(episode)
    env.close()
    return examples, {"expert_success_rate": won / max(played, 1), "examples": float(len(examples))}


def run_sft(model_path: str, examples: list[dict], output_dir: str | Path, epochs: float = 2.0,
            learning_rate: float = 5e-4, batch_size: int = 8, max_length: int = 1024, seed: int = 0,
            use_cpu: bool = False, bf16: bool = False, report_to: list[str] | None = None) -> str:
    """Train on ``examples`` with `SFTTrainer` (loss on the completions only); returns the model folder."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("sft: no expert examples (does the environment implement expert_action()?)")
    output_dir = str(output_dir)
    config = SFTConfig(output_dir=output_dir, num_train_epochs=epochs, learning_rate=learning_rate,
                       per_device_train_batch_size=batch_size, max_length=max_length, seed=seed,
                       use_cpu=use_cpu, bf16=bf16, logging_steps=5, save_strategy="no", report_to=report_to or [],
                       completion_only_loss=True, lr_scheduler_type="cosine", warmup_steps=0.1)
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=Dataset.from_list(examples))
    trainer.train()
    trainer.save_model(output_dir)
    trainer.processing_class.save_pretrained(output_dir)
    return output_dir
