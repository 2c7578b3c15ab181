"""A placebo control for the skill-signal diagnostic: real skills, handed to the wrong episodes.

If a policy's log-probs move towards good actions under a skill because of what the skill *says*,
the same texts shown to other episodes (of other tasks) must lose that: their A_skill AUC should
fall towards 0.5. If it does not, the policy reacts to the presence of a skill block (a "be
careful" mode), not to its content. `ShuffledSkillExtractor` runs an inner extractor and gives
each trajectory the skills of the trajectory one group further on (cyclically), step skills
re-keyed to the steps that exist; ``meta["rules"]`` names say ``shuffled:<rule>``. Registered as
'shuffled'; a run file names the inner one: ``skill_extractor: {name: shuffled, kwargs: {inner:
rule_based}}`` (`make_skill_extractor` builds the inner one by name). Not for training.
"""

from __future__ import annotations

from collections.abc import Sequence

from opid_trl.skills.extractors.placebo import PlaceboSkillExtractor
from opid_trl.trajectory import EpisodeSkills, Trajectory


def _relabelled(skills: EpisodeSkills, num_steps: int) -> EpisodeSkills:
    """``skills`` for a trajectory of ``num_steps`` steps: step skills keyed beyond it move to its
    last step (a shuffled skill keeps being shown, wherever it lands), rule names marked shuffled."""
    steps: dict[int, str] = {}
    rules = (skills.meta or {}).get("rules") or {}
    step_rules: dict[int, str] = {}
    for index, text in sorted(skills.step_skills.items()):
        target = min(int(index), num_steps - 1)
        steps.setdefault(target, text)
        rule = (rules.get("steps") or {}).get(index)
        step_rules.setdefault(target, f"shuffled:{rule}" if rule else "shuffled")
    episode_rule = rules.get("episode")
    meta = {"rules": {"episode": f"shuffled:{episode_rule}" if episode_rule else "shuffled", "steps": step_rules}}
    return EpisodeSkills(skills.episode_skill, steps, error=skills.error, meta=meta)


class ShuffledSkillExtractor(PlaceboSkillExtractor):
    """Each trajectory gets the skills the ``inner`` extractor wrote for the trajectory one group on."""

    name = "shuffled"

    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        """The inner extractor's skills, each handed to the trajectory one group further on."""
        answers = list(self.inner(trajectories))
        groups = sorted({t.group_id for t in trajectories})
        if len(groups) < 2:  # nothing to swap with: no skill rather than the episode's own
            return [None] * len(trajectories)
        following = {g: groups[(i + 1) % len(groups)] for i, g in enumerate(groups)}
        donors: dict[int, list[int]] = {}
        for i, t in enumerate(trajectories):
            donors.setdefault(t.group_id, []).append(i)
        shuffled: list[EpisodeSkills | None] = []
        for i, t in enumerate(trajectories):
            members = donors[following[t.group_id]]
            donor = answers[members[donors[t.group_id].index(i) % len(members)]]
            shuffled.append(None if donor is None or donor.failed or not t.steps
                            else _relabelled(donor, len(t.steps)))
        return shuffled
