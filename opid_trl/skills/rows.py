"""How a batch's rows look to the skill stage (`SkillRows`), for each path that builds rows.

- Step rows of multi-turn episodes (`step_skill_rows`): row i is step t of episode e; its skill
  prompt is the step's own prompt re-rendered with the skill (same template, same history window,
  same cut observation), never re-fitted, so the log-prob shift is the skill's alone.
- Single-turn completions (`single_turn_skill_rows`): row i is a one-step trajectory; the skill is
  injected into the prompt's text (the last message's content for a chat prompt), as GRPO renders it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trl.data_utils import is_conversational

from opid_trl.algorithms.routing import RoutedSkill, inject
from opid_trl.generation.vllm import sampler_logprobs_are_plain
from opid_trl.rollout.episode import Episode
from opid_trl.rollout.step_rows import StepBatch, StepRows, unpadded
from opid_trl.skills.stage import EngineRows, SkillRows
from opid_trl.trajectory import StepRecord, Trajectory


def step_skill_rows(episodes: Sequence[Episode], rows: StepRows, tokenize: Callable[[list[str]], list[list[int]]],
                    engine: EngineRows | None = None, with_labels: bool = False) -> SkillRows:
    """`SkillRows` of a step batch. Rows of failed episodes (out of the loss) and rows whose prompt
    had to be cut token-wise (it cannot be re-rendered faithfully with a skill) get no skill;
    padding rows come last and get none either."""

    def routing(per_episode: list[list[RoutedSkill]]) -> list[RoutedSkill]:
        return [RoutedSkill() if episodes[e].failed or episodes[e].prompt_cuts[t] == "tokens"
                else per_episode[e][t] for e, t in rows.locations] + [RoutedSkill()] * rows.num_padding

    def render(i: int, episode_skill: str | None, step_skill: str | None) -> str:
        if i >= rows.num_real:
            return ""
        e, t = rows.locations[i]
        return episodes[e].skill_prompt(t, episode_skill, step_skill)

    def describe(i: int) -> dict[str, Any]:
        e, t = rows.locations[i]
        return {"trajectory_id": episodes[e].trajectory_id, "step_index": t,
                "episode_return": episodes[e].env_return, "success": episodes[e].won,
                "task_type": episodes[e].task_type}

    def label(i: int) -> dict[str, Any] | None:
        if i >= rows.num_real:
            return None
        e, t = rows.locations[i]
        return {**describe(i), "episode": e, "label": episodes[e].step_labels[t], "action": episodes[e].steps[t].action}

    return SkillRows(routing, render, tokenize, describe, label if with_labels else None, engine)


def engine_rows(batch: StepBatch | Mapping[str, Any], backend: Any) -> EngineRows:
    """What scoring on the rollout engine needs of a batch: a step batch, or GRPO's single-turn
    batch (its padded prompt and completion tensors, and the sampler's log-probs when vLLM gave them)."""
    if isinstance(batch, StepBatch):
        prompts, completions, sampling = batch.rows.prompt_ids, batch.rows.completion_ids, batch.sampling_logps
    else:
        prompts = unpadded(batch["prompt_ids"], batch["prompt_mask"])
        completions = unpadded(batch["completion_ids"], batch["completion_mask"])
        sampling = batch.get("sampling_per_token_logps")
    return EngineRows(prompts, completions, sampling, sampler_logprobs_are_plain(backend))


def single_turn_prompt_texts(prompts: Sequence[Any]) -> list[str]:
    """Each prompt's text (the last message's content for a chat prompt): where a skill goes."""
    texts = [p[-1]["content"] if is_conversational({"prompt": p}) else p for p in prompts]
    if any(not isinstance(t, str) for t in texts):
        raise ValueError("skill_extractor: OPID's single-turn path supports text prompts only")
    return texts


def single_turn_skill_rows(prompts: Sequence[Any], prompt_texts: Sequence[str], trajectories: Sequence[Trajectory],
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


def single_turn_trajectories(prompt_texts: Sequence[str], completions: Sequence[str], rewards: Sequence[float],
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
