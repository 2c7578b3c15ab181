"""Parse an analyzer's answer into skills, repairing the usual damage."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from ..trajectory import EpisodeSkills

_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA_RE = re.compile(r",\s*([}\]])")


class AnalysisParseError(ValueError):
    """The answer holds no usable analysis; the message says why (it is sent back on a re-ask)."""


def _outermost_object(text: str) -> str | None:
    """The first balanced ``{...}`` block of ``text`` (quotes respected), if any."""
    start = text.find("{")
    while start != -1:
        depth, quote, escaped = 0, None, False
        for i in range(start, len(text)):
            ch = text[i]
            if quote:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == quote:
                    quote = None
            elif ch in "\"'":
                quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start : i + 1]
        start = text.find("{", start + 1)
    return None


def _candidates(text: str) -> list[str]:
    found = [text.strip()]
    found += [block.strip() for block in _FENCE_RE.findall(text)]
    block = _outermost_object(text)
    if block:
        found.append(block)
    return found


def _load(candidate: str) -> Any:
    attempts = [candidate, _TRAILING_COMMA_RE.sub(r"\1", candidate)]
    for attempt in attempts:
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            pass
    # Python-style dicts: single quotes, True/False/None, trailing commas.
    pythonic = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", attempts[1])))
    try:
        return ast.literal_eval(pythonic)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_analysis(text: str | None, num_steps: int, max_step_skills: int) -> tuple[EpisodeSkills, str]:
    """``(skills, summary)`` from an analyzer answer.

    Accepts the JSON object alone, in a code fence, or inside prose, with trailing commas or
    single quotes. Step indices that are not integers within the trajectory are dropped, and at
    most ``max_step_skills`` are kept (the earliest steps, so the cap does not depend on the
    order the analyzer happened to write them in). Raises :class:`AnalysisParseError`.
    """
    if text is None or not text.strip():
        raise AnalysisParseError("the answer is empty")
    data = None
    for candidate in _candidates(text):
        data = _load(candidate)
        if isinstance(data, dict):
            break
    if not isinstance(data, dict):
        raise AnalysisParseError("no JSON object found in the answer")
    episode_skill = data.get("episode_skill")
    step_skills = data.get("step_skills", {})
    if not isinstance(episode_skill, str) or not episode_skill.strip():
        raise AnalysisParseError("'episode_skill' must be a non-empty string")
    if isinstance(step_skills, list):  # [{"step": 3, "skill": "..."}] is a common variant
        step_skills = {str(item.get("step")): item.get("skill") for item in step_skills if isinstance(item, dict)}
    if not isinstance(step_skills, dict):
        raise AnalysisParseError("'step_skills' must be an object mapping step indices to sentences")
    summary = data.get("episode_summary") if isinstance(data.get("episode_summary"), str) else ""
    skills = EpisodeSkills(episode_skill, dict(step_skills)).cleaned(num_steps, max_step_skills)
    return skills, summary
