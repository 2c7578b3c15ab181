"""The analysis prompt and its output schema (OPID spec, section 4)."""

from __future__ import annotations

from opid_trl.skills.extractors.record import render_record
from opid_trl.trajectory import Trajectory

#: Part of every cache key: bump it when the prompt or the expected answer changes.
PROMPT_VERSION = "opid-analyzer-v1"

SYSTEM_PROMPT = (
    "You analyse trajectories of an AI agent acting in a text environment and distil reusable skills "
    "for the same agent. Answer with one JSON object and nothing else."
)

INSTRUCTIONS = """Write skills for the agent that produced this trajectory.

- episode_summary: one or two sentences on what happened.
- episode_skill: {episode_rule}
- step_skills: at most {max_steps} critical steps, keyed by their step index (as a string). Each value is ONE short imperative sentence addressed to the agent for that exact decision (e.g. "Open the fridge before searching the counters."). Choose the steps where the trajectory was won or lost. Use only step indices that appear above.

Answer with JSON only, exactly in this form:
{{"episode_summary": "...", "episode_skill": "...", "step_skills": {{"<step index>": "..."}}}}"""

SUCCESS_RULE = ("the reusable workflow behind this success: the core decision rule and the order of actions that "
                "solved the task, general enough for similar tasks.")
FAILURE_RULE = ("avoidance rules for this failure: the core mistake, its warning signs, and what to do instead.")

OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "episode_summary": {"type": "string"},
        "episode_skill": {"type": "string"},
        "step_skills": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["episode_summary", "episode_skill", "step_skills"],
    "additionalProperties": False,
}


def build_messages(trajectory: Trajectory, max_step_skills: int, max_record_chars: int = 24_000) -> list[dict]:
    """Chat messages asking for the skills of ``trajectory``."""
    rule = SUCCESS_RULE if trajectory.success else FAILURE_RULE
    user = render_record(trajectory, max_chars=max_record_chars) + "\n\n" + INSTRUCTIONS.format(
        episode_rule=rule, max_steps=max_step_skills)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def reask_message(error: str) -> dict:
    """The follow-up user message after an answer that could not be parsed."""
    return {
        "role": "user",
        "content": f"Your answer could not be parsed: {error}. Reply again with the JSON object only, "
        "with the keys episode_summary, episode_skill and step_skills.",
    }
