"""A placebo control that keeps everything of a skill but what it tells the agent to do.

`ShuffledSkillExtractor` hands an episode another task's skills. Where one strategy serves every
task (in `fetch`, walk east until the item is there, then take it), another task's workflow is
still right advice, so that placebo measures generic content as well as a skill block's presence.
`ScrambledSkillExtractor` keeps each episode's own skills (same episode, routing, form, length,
counts, task words) and replaces every action they name with another one: the distinct actions
played in the batch are permuted with no action left in place (a derangement, drawn per batch
from ``seed``), and every mention of one is rewritten, longest first, in one pass. "go east (3
times) -> take key" becomes, say, "look (3 times) -> go west". If the policy reads what a skill
says, its A_skill AUC should fall towards 0.5 (or below); if it only notices a skill block, it
stays. ``meta["rules"]`` names say ``scrambled:<rule>``. Registered as 'scrambled', wrapping an
inner extractor by name (``kwargs: {inner: rule_based}``). Not for training.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from opid_trl.skills.extractors.placebo import PlaceboSkillExtractor
from opid_trl.skills.extractors.protocol import SkillExtractor
from opid_trl.trajectory import EpisodeSkills, Trajectory


def derangement(items: Sequence[str], rng: random.Random) -> dict[str, str]:
    """A permutation of ``items`` (distinct) that leaves none in place; {} for fewer than 2."""
    items = list(items)
    if len(items) < 2:
        return {}
    while True:
        shuffled = items[:]
        rng.shuffle(shuffled)
        if all(a != b for a, b in zip(items, shuffled)):
            return dict(zip(items, shuffled))


def rewrite(text: str | None, mapping: Mapping[str, str]) -> str | None:
    """``text`` with every mention of a key of ``mapping`` replaced by its value, longest keys first,
    in one pass (a replaced action is never replaced again)."""
    if not text or not mapping:
        return text
    pattern = re.compile("|".join(re.escape(key) for key in sorted(mapping, key=len, reverse=True)))
    return pattern.sub(lambda match: mapping[match.group(0)], text)


def _scrambled(skills: EpisodeSkills, mapping: Mapping[str, str]) -> EpisodeSkills:
    rules = (skills.meta or {}).get("rules") or {}
    episode_rule = rules.get("episode")
    step_rules = {k: f"scrambled:{v}" for k, v in (rules.get("steps") or {}).items()}
    meta = {"rules": {"episode": f"scrambled:{episode_rule}" if episode_rule else "scrambled", "steps": step_rules}}
    return EpisodeSkills(rewrite(skills.episode_skill, mapping),
                         {k: rewrite(v, mapping) or "" for k, v in skills.step_skills.items()}, error=skills.error,
                         meta=meta)


class ScrambledSkillExtractor(PlaceboSkillExtractor):
    """Each trajectory keeps the skills the ``inner`` extractor wrote for it, with its actions permuted."""

    name = "scrambled"

    def __init__(self, inner: SkillExtractor, seed: int = 0) -> None:
        super().__init__(inner)
        self._rng = random.Random(seed)

    def __call__(self, trajectories: Sequence[Trajectory]) -> list[EpisodeSkills | None]:
        """The inner extractor's skills, every action they name replaced by another one of the batch."""
        answers = list(self.inner(trajectories))
        actions = sorted({s.action for t in trajectories for s in t.steps if s.action_valid and s.action})
        mapping = derangement(actions, self._rng)
        return [None if a is None or a.failed else _scrambled(a, mapping) for a in answers]
