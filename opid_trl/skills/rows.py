"""How a step batch's rows look to the skill stage (`SkillRows`): row i is step t of episode e; its
skill prompt is the step's own prompt re-rendered with the skill (same template, same history
window, same cut observation), never re-fitted, so the log-prob shift is the skill's alone.
(Single-turn completions: :mod:`opid_trl.skills.single_turn`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opid_trl.algorithms.routing import RoutedSkill
from opid_trl.generation.vllm import sampler_logprobs_are_plain
from opid_trl.rollout.episode import Episode
from opid_trl.rollout.step_rows import StepBatch
from opid_trl.skills.stage import EngineRows, SkillRows


def step_skill_rows(episodes: Sequence[Episode], step: StepBatch, tokenize: Callable[[list[str]], list[list[int]]],
                    engine_backend: Any = None, with_labels: bool = False) -> SkillRows:
    """`SkillRows` of a step batch. Rows of failed episodes (out of the loss) and rows whose prompt
    had to be cut token-wise (it cannot be re-rendered faithfully with a skill) get no skill;
    padding rows come last and get none either. ``engine_backend``: score on this rollout engine
    (`skill_logprob_backend="vllm"`). ``with_labels``: the rows carry the expert's labels (the
    skill-signal diagnostic)."""
    rows = step.rows
    engine = None
    if engine_backend is not None:
        engine = EngineRows(rows.prompt_ids, rows.completion_ids, step.sampling_logps,
                            sampler_logprobs_are_plain(engine_backend))

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
