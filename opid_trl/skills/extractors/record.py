"""The trajectory record shown to an LLM skill extractor, fitted to its context without losing what matters.

Length policy, applied in order until the record fits ``max_chars``:
1. every observation and response is cut to a per-field budget (head and tail kept, since the
   action sits at the end of a response and the news at the start of an observation);
2. then whole steps are left out, least important first: the task, the outcome, the first
   step, the last steps, steps with a reward and steps with an ill-formed answer (the decisive
   ones) are kept longest; left-out stretches are marked, so the step indices stay true.
"""

from __future__ import annotations

from opid_trl.trajectory import Trajectory
from opid_trl.untrusted_text import clip_text

OMITTED = "[... steps {first}-{last} omitted for length ...]"


def render_step(trajectory: Trajectory, index: int, field_chars: int) -> str:
    step = trajectory.steps[index]
    validity = "" if step.action_valid else " (ill-formed answer)"
    return (
        f"Step {index}{validity}:\n"
        f"  observation: {clip_text(step.observation.strip(), field_chars, head_share=2 / 3)}\n"
        f"  response: {clip_text(step.response.strip(), field_chars, head_share=2 / 3)}\n"
        f"  reward: {step.reward:g}; discounted return from here: {step.discounted_return:.3f}"
    )


def step_priority(trajectory: Trajectory, index: int) -> tuple[int, int]:
    """Sort key: lower is kept longer. Decisive steps first, then recency."""
    step = trajectory.steps[index]
    last = len(trajectory.steps) - 1
    decisive = index in (0, last) or step.reward != 0 or not step.action_valid
    return (0 if decisive else 1, last - index)


def render_record(trajectory: Trajectory, max_chars: int = 24_000, field_chars: int = 600) -> str:
    """The skill extractor's view of ``trajectory``: task, outcome and per-step details, within ``max_chars``."""
    outcome = "SUCCESS" if trajectory.success else "FAILURE"
    header = (
        f"Task: {trajectory.task}\n"
        f"Outcome: {outcome} (total reward {trajectory.outcome:g}, {len(trajectory.steps)} steps)\n"
        f"Trajectory:"
    )
    steps = {i: render_step(trajectory, i, field_chars) for i in range(len(trajectory.steps))}
    kept = set(steps)
    order = sorted(steps, key=lambda i: step_priority(trajectory, i), reverse=True)

    def assemble() -> str:
        parts, gap_start = [header], None
        for i in range(len(trajectory.steps)):
            if i in kept:
                if gap_start is not None:
                    parts.append(OMITTED.format(first=gap_start, last=i - 1))
                    gap_start = None
                parts.append(steps[i])
            elif gap_start is None:
                gap_start = i
        if gap_start is not None:
            parts.append(OMITTED.format(first=gap_start, last=len(trajectory.steps) - 1))
        return "\n".join(parts)

    text = assemble()
    for index in order:
        if len(text) <= max_chars or len(kept) <= 1:
            break
        kept.discard(index)
        text = assemble()
    return text
