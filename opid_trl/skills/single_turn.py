"""GRPO's single-turn batch as the skill stage sees it: each completion a one-step trajectory (task =
its prompt's text, the reward GRPO gave it as the outcome), its skill injected into the prompt's
text (the last message's content for a chat prompt), as GRPO renders the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from trl.data_utils import is_conversational

from opid_trl.algorithms.routing import inject
from opid_trl.generation.vllm import sampler_logprobs_are_plain
from opid_trl.skills.stage import EngineRows, SkillRows
from opid_trl.trajectory import StepRecord, Trajectory


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's tokens where ``mask`` (B, T) is set, padding removed, as lists."""
    return [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]


def skill_inputs(prompts: Sequence[Any], batch: Mapping[str, Any], rewards: Sequence[float], first_index: int,
                 trajectory_id: Callable[[int], str], num_generations: int, success_threshold: float, gamma: float,
                 decode: Callable[[list[list[int]]], list[str]], tokenize: Callable[[list[Any]], list[list[int]]],
                 engine_backend: Any = None) -> tuple[list[Trajectory], SkillRows]:
    """The trajectories for the skill extractor and the `SkillRows` of a GRPO batch.

    ``batch``: GRPO's batch of this process (prompt and completion tensors, sampler log-probs when
    vLLM gave them); ``rewards``: this process's rewards; ``first_index``: the global index of its
    first completion (groups of ``num_generations`` span processes); ``engine_backend``: score on
    this rollout engine (`skill_logprob_backend="vllm"`).
    """
    texts = prompt_texts(prompts)
    completions = decode(unpadded(batch["completion_ids"], batch["completion_mask"]))
    trajectories = trajectories_of(texts, completions, rewards, first_index, trajectory_id, num_generations,
                                   success_threshold, gamma)
    engine = None
    if engine_backend is not None:
        engine = EngineRows(unpadded(batch["prompt_ids"], batch["prompt_mask"]),
                            unpadded(batch["completion_ids"], batch["completion_mask"]),
                            batch.get("sampling_per_token_logps"), sampler_logprobs_are_plain(engine_backend))
    return trajectories, skill_rows(prompts, texts, trajectories, tokenize, engine)


def prompt_texts(prompts: Sequence[Any]) -> list[str]:
    """Each prompt's text (the last message's content for a chat prompt): where a skill goes."""
    texts = [p[-1]["content"] if is_conversational({"prompt": p}) else p for p in prompts]
    if any(not isinstance(t, str) for t in texts):
        raise ValueError("skill_extractor: OPID's single-turn path supports text prompts only")
    return texts


def skill_rows(prompts: Sequence[Any], prompt_texts: Sequence[str], trajectories: Sequence[Trajectory],
                           tokenize: Callable[[list[Any]], list[list[int]]],
                           engine: EngineRows | None = None) -> SkillRows:
    """`SkillRows` of single-turn completions: one trajectory per row, the skill in the prompt text."""

    def render(i: int, episode_skill: str | None, step_skill: str | None) -> Any:
        text = inject(prompt_texts[i], episode_skill, step_skill, task=None, anchor=None)
        prompt = prompts[i]
        if is_conversational({"prompt": prompt}):  # the augmented text replaces the last message's content
            return prompt[:-1] + [{**prompt[-1], "content": text}]
        return text

    def describe(i: int) -> dict[str, Any]:
        t = trajectories[i]
        return {"trajectory_id": t.trajectory_id, "step_index": 0, "episode_return": t.outcome,
                "success": t.success, "task_type": t.task_type}

    return SkillRows(lambda routing: [r[0] for r in routing], render, tokenize, describe, None, engine)


def trajectories_of(prompt_texts: Sequence[str], completions: Sequence[str], rewards: Sequence[float],
                             first_index: int, trajectory_id: Callable[[int], str], num_generations: int,
                             success_threshold: float, gamma: float) -> list[Trajectory]:
    """Each completion as a one-step trajectory, with the reward GRPO gave it. ``first_index``: the
    global index of this process's first completion (groups of ``num_generations`` span processes)."""
    indices = range(first_index, first_index + len(completions))
    trajectory_ids = [trajectory_id(i) for i in indices]
    group_ids = [i // num_generations for i in indices]
    trajectories = [
        Trajectory(trajectory_id=tid, group_id=group, task=text,
                   steps=[StepRecord(index=0, observation=text, response=completion, reward=reward)],
                   outcome=reward, success=reward >= success_threshold)
        for tid, group, text, completion, reward in zip(trajectory_ids, group_ids, prompt_texts, completions, rewards)
    ]
    for trajectory in trajectories:
        trajectory.fill_discounted_returns(gamma)
    return trajectories
