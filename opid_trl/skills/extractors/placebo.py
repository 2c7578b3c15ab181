"""What the placebo controls of the skill-signal diagnostic share: each wraps a real skill extractor
(the ``inner`` one, never another placebo), runs it, and changes what its skills are given to or say
(`ShuffledSkillExtractor`, `ScrambledSkillExtractor`). Not for training."""

from __future__ import annotations

from opid_trl.skills.extractors.protocol import ExtractorContext, SkillExtractor


class PlaceboSkillExtractor(SkillExtractor):
    """A skill extractor around a real one: binding, counters and overlap are the inner one's."""

    #: The registered name, for error messages.
    name = "placebo"

    def __init__(self, inner: SkillExtractor) -> None:
        if isinstance(inner, PlaceboSkillExtractor):
            raise ValueError(f"skill_extractor: {self.name!r} needs another extractor than a placebo as its inner one")
        self.inner = inner
        self.supports_overlap = self.inner.supports_overlap

    def bind(self, context: ExtractorContext) -> None:
        self.inner.bind(context)

    def pop_metrics(self) -> dict[str, float]:
        return self.inner.pop_metrics()
