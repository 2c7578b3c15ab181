"""Critical-first routing (which skill scores which step) and skill injection into a prompt."""

from __future__ import annotations

from dataclasses import dataclass

from opid_trl.trajectory import EpisodeSkills

EPISODE_SKILL_TITLE = "## Episode-level skill (refer to it when deciding the next action)"
STEP_SKILL_TITLE = "## Step-level skill (use this for the current decision only)"


@dataclass(frozen=True)
class RoutedSkill:
    """The skill context(s) one step is re-scored under. Both set only in 'additive' mode."""

    episode_skill: str | None = None
    step_skill: str | None = None

    @property
    def kind(self) -> str:
        """'step', 'episode', 'both' or 'none' (for metrics)."""
        if self.episode_skill and self.step_skill:
            return "both"
        return "step" if self.step_skill else "episode" if self.episode_skill else "none"


def route_skills(skills: EpisodeSkills | None, num_steps: int, mode: str = "critical_first",
                 use_step_skills: bool = True) -> list[RoutedSkill]:
    """One :class:`RoutedSkill` per step of a trajectory.

    - ``critical_first``: the step skill on critical steps, the episode skill elsewhere;
    - ``episode_only``: the episode skill everywhere;
    - ``step_only``: step skills on critical steps, nothing elsewhere;
    - ``additive``: the episode skill everywhere and the step skill too on critical steps.

    ``use_step_skills=False`` (the trainer passes it when the step-skill weight is 0) treats every
    step as non-critical, as the reference's step-priority mode does: under ``critical_first`` the
    critical steps then fall back to the episode skill instead of getting no signal at all.
    """
    if skills is None:
        return [RoutedSkill() for _ in range(num_steps)]
    episode = skills.episode_skill or None
    routed = []
    for t in range(num_steps):
        step = (skills.step_skills.get(t) or None) if use_step_skills else None
        if mode == "critical_first":
            routed.append(RoutedSkill(step_skill=step) if step else RoutedSkill(episode_skill=episode))
        elif mode == "episode_only":
            routed.append(RoutedSkill(episode_skill=episode))
        elif mode == "step_only":
            routed.append(RoutedSkill(step_skill=step))
        elif mode == "additive":
            routed.append(RoutedSkill(episode_skill=episode, step_skill=step))
        else:
            raise ValueError(f"unknown skill routing {mode!r}")
    return routed


def _lines(text: str) -> list[str]:
    return text.split("\n")


def inject_episode_skill(prompt: str, skill: str, task: str | None) -> str:
    """Insert the episode-skill block right after the line that states the task.

    The task line is the first line containing ``task``; without one the block is appended.
    """
    block = f"{EPISODE_SKILL_TITLE}\n{skill.strip()}"
    lines = _lines(prompt)
    if task:
        needle = task.strip()
        for i, line in enumerate(lines):
            if needle and needle in line:
                return "\n".join(lines[: i + 1] + [block] + lines[i + 1 :])
    return prompt.rstrip("\n") + "\n\n" + block


def inject_step_skill(prompt: str, skill: str, anchor: str | None) -> str:
    """Insert the step-skill block right before the final instruction line (the last line starting
    with ``anchor``); without one the block is appended."""
    block = f"{STEP_SKILL_TITLE}\n{skill.strip()}"
    lines = _lines(prompt)
    if anchor:
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].lstrip().startswith(anchor):
                return "\n".join(lines[:i] + [block] + lines[i:])
    return prompt.rstrip("\n") + "\n\n" + block


def inject(prompt: str, episode_skill: str | None, step_skill: str | None, task: str | None,
           anchor: str | None) -> str:
    """The prompt with the given skill(s) injected at their places."""
    if episode_skill:
        prompt = inject_episode_skill(prompt, episode_skill, task)
    if step_skill:
        prompt = inject_step_skill(prompt, step_skill, anchor)
    return prompt
