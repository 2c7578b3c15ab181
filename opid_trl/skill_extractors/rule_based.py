"""The offline default skill extractor: skills from the trajectory alone, no LLM, no privileged state.

It reads only what the agent saw and did (observations, actions, validity, rewards), so its
skills are honest hindsight, and it is deterministic.

- A success gives the workflow that solved the task: its valid actions in order, with loops
  and repeats collapsed. Critical steps: where a reward was earned (the decisive actions) and
  the first well-formed answer after ill-formed ones.
- A failure gives avoidance rules from what went wrong: ill-formed answers, an action repeated
  again and again, back-and-forth loops between two actions, and stretches where the
  observation did not change. Critical steps: the first step of each such problem.

Format advice quotes the trajectory's own ``response_format`` (the environment's description of
a well-formed answer), so a search agent is not told to use ``<action>`` tags.

Actions and tasks are untrusted text (a policy can emit a megabyte of output or an injected
instruction), and these skills are pasted into the policy's prompt: they are quoted only as
short one-line excerpts (`ACTION_EXCERPT_CHARS`, `TASK_EXCERPT_CHARS`), at most
`MAX_REPEAT_RULES` repetition rules are listed, and a long workflow loses its middle, so the
episode skill stays within `MAX_EPISODE_SKILL_CHARS` without the final cap cutting its end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from environments.base import THINK_ACTION_RESPONSE_FORMAT

from ..trajectory import MAX_EPISODE_SKILL_CHARS, EpisodeSkills, Trajectory, clip_skill
from .protocol import SkillExtractor

MAX_WORKFLOW_ACTIONS = 12
#: Longest excerpt of one action quoted in a skill.
ACTION_EXCERPT_CHARS = 60
#: Longest excerpt of the task statement quoted in a skill.
TASK_EXCERPT_CHARS = 160
#: At most this many "do not repeat" rules (the most repeated actions) in one episode skill.
MAX_REPEAT_RULES = 3


def _quote(action: str) -> str:
    """A short one-line excerpt of ``action`` for quoting inside a skill."""
    return clip_skill(action, ACTION_EXCERPT_CHARS)


def _fit_workflow(prefix: str, workflow: list[str], suffix: str) -> str:
    """``prefix + workflow + suffix`` with at most `MAX_WORKFLOW_ACTIONS` actions, within
    `MAX_EPISODE_SKILL_CHARS` if at all possible.

    The first and last actions (how the task starts and what finishes it) are the most telling,
    so the middle ones give way to an ``...``; the final `clip_skill` cap then does not cut the advice.
    """
    text = prefix + suffix.lstrip(". ")
    for keep in range(min(len(workflow), MAX_WORKFLOW_ACTIONS), 0, -1):
        shown = workflow if keep == len(workflow) else (
            workflow[: (keep + 1) // 2] + ["..."] + (workflow[len(workflow) - keep // 2 :] if keep // 2 else []))
        text = prefix + " -> ".join(_quote(a) for a in shown) + suffix
        if len(text) <= MAX_EPISODE_SKILL_CHARS:
            break
    return text


def _collapse(actions: Sequence[str]) -> list[str]:
    """Actions with immediate repeats and A-B-A-B oscillations removed, first occurrences kept."""
    out: list[str] = []
    for action in actions:
        if out and out[-1] == action:
            continue
        if len(out) >= 2 and out[-2] == action:  # A, B, A: drop the return trip
            out.pop()
            continue
        out.append(action)
    return out


class RuleBasedSkillExtractor(SkillExtractor):
    """Deterministic skill extractor (registered as 'rule_based'). ``repeat_threshold``: an action
    taken this many times in a failure is a repetition; ``stall_length``: this many steps with an
    unchanged observation are a no-progress stretch."""

    def __init__(self, max_step_skills: int | None = None, repeat_threshold: int = 3, stall_length: int = 3) -> None:
        self.max_step_skills = max_step_skills
        self.repeat_threshold = repeat_threshold
        self.stall_length = stall_length
        self._metrics = {"requests": 0.0, "failures": 0.0}

    def bind_trainer(self, trainer: Any) -> None:
        if self.max_step_skills is None:
            self.max_step_skills = trainer.args.max_step_skills

    def pop_metrics(self) -> dict[str, float]:
        metrics, self._metrics = self._metrics, {"requests": 0.0, "failures": 0.0}
        return metrics

    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        cap = self.max_step_skills if self.max_step_skills is not None else 5
        results: list[EpisodeSkills | None] = []
        for trajectory in trajectories:
            self._metrics["requests"] += 1
            if not trajectory.steps:
                self._metrics["failures"] += 1
                results.append(EpisodeSkills(error="empty trajectory"))
                continue
            skills = self.success_skills(trajectory) if trajectory.success else self.failure_skills(trajectory)
            results.append(skills.cleaned(len(trajectory.steps), cap))
        return results

    # -- successes
    def success_skills(self, trajectory: Trajectory) -> EpisodeSkills:
        actions = [s.action for s in trajectory.steps if s.action_valid and s.action]
        workflow = _collapse(actions)
        task = clip_skill(trajectory.task, TASK_EXCERPT_CHARS).rstrip(".")
        episode = _fit_workflow(f"To {task}, follow this workflow: ", workflow,
                                ". Keep this order of actions for tasks of this kind and avoid detours.")
        steps: dict[int, str] = {}
        for i, step in enumerate(trajectory.steps):
            if step.reward > 0 and step.action:
                steps[i] = f"Take '{_quote(step.action)}' now: it makes progress on the task."
        for i in range(1, len(trajectory.steps)):
            step, before = trajectory.steps[i], trajectory.steps[i - 1]
            if step.action_valid and not before.action_valid and step.action:
                steps.setdefault(i, f"Answer in the required format with one action, here '{_quote(step.action)}'.")
                break
        return EpisodeSkills(episode, steps)

    # -- failures
    def failure_skills(self, trajectory: Trajectory) -> EpisodeSkills:
        steps = trajectory.steps
        rules: list[str] = []
        critical: dict[int, str] = {}

        invalid = [i for i, s in enumerate(steps) if not s.action_valid]
        if invalid:
            answer_format = trajectory.response_format or THINK_ACTION_RESPONSE_FORMAT
            rules.append(f"{len(invalid)} of {len(steps)} answers were ill-formed; every answer must follow the "
                         f"format: {answer_format}")
            critical.setdefault(invalid[0], answer_format)

        actions = [(i, s.action) for i, s in enumerate(steps) if s.action_valid and s.action]
        counts = Counter(a for _, a in actions)
        for rank, (action, count) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))):
            if count < self.repeat_threshold or rank >= MAX_REPEAT_RULES:
                break
            third = [i for i, a in actions if a == action][self.repeat_threshold - 1]
            quoted = _quote(action)
            rules.append(f"Do not repeat '{quoted}': it was taken {count} times without completing the task.")
            critical.setdefault(third, f"Do not take '{quoted}' again; choose an admissible action you have not tried.")

        for k in range(len(actions) - 3):
            (i0, a0), (_, a1), (_, a2), (_, a3) = actions[k : k + 4]
            if a0 == a2 and a1 == a3 and a0 != a1:
                q0, q1 = _quote(a0), _quote(a1)
                rules.append(f"Avoid going back and forth between '{q0}' and '{q1}'.")
                critical.setdefault(i0, f"Do not alternate between '{q0}' and '{q1}'; commit to a new plan.")
                break

        run_start = 0
        for i in range(1, len(steps) + 1):
            same = i < len(steps) and steps[i].observation.strip() == steps[i - 1].observation.strip()
            if not same:
                if i - run_start >= self.stall_length:
                    rules.append(f"Steps {run_start}-{i - 1} made no progress (the observation did not change): "
                                 "when nothing changes, switch to a different action.")
                    critical.setdefault(run_start + 1, "Nothing changed after your last action: try a different one.")
                    break
                run_start = i

        if not rules:
            task = clip_skill(trajectory.task, TASK_EXCERPT_CHARS).rstrip(".")
            rules.append(f"The task '{task}' was not completed in {len(steps)} steps: "
                         "check the task statement before each action and prefer actions that move towards it.")
            critical[len(steps) - 1] = "Re-read the task and pick the admissible action that directly advances it."
        return EpisodeSkills("Avoid these mistakes: " + " ".join(rules), critical)
