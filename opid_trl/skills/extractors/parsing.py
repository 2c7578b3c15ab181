"""Parse a model's analysis answer into skills, repairing the usual damage.

Models wrap the JSON in prose or code fences, echo the schema or the prompt's template before
(or after) their answer, and write Python-style dicts. The parser therefore looks at every
complete ``{...}`` object of the answer and takes the last one that carries the analysis keys
and holds a usable analysis. Its work is linear in the answer and bounded (`MAX_SCAN_CHARS`,
`MAX_CANDIDATES`), so a long garbage answer costs no more than a long good one.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from opid_trl.trajectory import EpisodeSkills

#: Only the last this many characters of an answer are scanned (the analysis comes last, after
#: any reasoning); a longer answer is garbage or a runaway generation.
MAX_SCAN_CHARS = 64 * 1024
#: At most this many complete top-level objects (the last ones) are considered.
MAX_CANDIDATES = 16
#: A JSON object is an analysis when it has at least one of these keys.
ANALYSIS_KEYS = ("episode_skill", "step_skills", "episode_summary")

_TRAILING_COMMA_RE = re.compile(r",\s*([}\]])")
_PLACEHOLDER_RE = re.compile(r"[.\u2026\s]*")
#: A string can only open after one of these (ignoring spaces): prose apostrophes and quotes
#: inside a stray ``{`` then do not swallow the rest of the answer.
_STRING_OPENERS = "{[,:"


class AnalysisParseError(ValueError):
    """The answer holds no usable analysis; the message says why (it is sent back on a re-ask)."""


def balanced_objects(text: str, limit: int = MAX_CANDIDATES) -> list[str]:
    """The last ``limit`` complete ``{...}`` blocks of ``text`` not nested in another complete one.

    One pass with a stack of open braces: a stray unmatched ``{`` does not hide the objects
    after it, and quotes count only where a JSON or Python string can start.
    """
    spans: list[tuple[int, int]] = []
    opens: list[int] = []
    quote: str | None = None
    escaped = False
    last_syntax = ""  # last non-space character outside strings
    for i, ch in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
                last_syntax = ch
            continue
        if ch == "{":
            opens.append(i)
        elif ch == "}" and opens:
            start = opens.pop()
            while spans and spans[-1][0] > start:  # children of the object just closed
                spans.pop()
            spans.append((start, i + 1))
            if len(spans) > 2 * limit:
                del spans[:limit]
        elif ch in "\"'" and opens and last_syntax in _STRING_OPENERS:
            quote = ch
        if not ch.isspace():
            last_syntax = ch
    return [text[a:b] for a, b in spans[-limit:]]


def _load(candidate: str) -> Any:
    attempts = [candidate, _TRAILING_COMMA_RE.sub(r"\1", candidate)]
    for attempt in attempts:
        try:
            return json.loads(attempt)
        # ValueError besides JSONDecodeError: an integer of more than 4300 digits;
        # RecursionError: absurdly deep nesting.
        except (ValueError, RecursionError):
            pass
    # Python-style dicts: single quotes, True/False/None, trailing commas.
    pythonic = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", attempts[1])))
    try:
        return ast.literal_eval(pythonic)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _analysis_objects(data: Any) -> list[dict]:
    """``data`` if it is an analysis object, else its direct values that hold one (``{"analysis": {...}}``).

    A nested object counts only with a string ``episode_skill``: an echoed JSON schema has the
    analysis keys under ``properties`` too, with type descriptions as values.
    """
    if not isinstance(data, dict):
        return []
    if any(key in data for key in ANALYSIS_KEYS):
        return [data]
    return [v for v in data.values() if isinstance(v, dict) and isinstance(v.get("episode_skill"), str)]


def _skills_of(data: dict, num_steps: int, max_step_skills: int) -> tuple[EpisodeSkills, str]:
    episode_skill = data.get("episode_skill")
    step_skills = data.get("step_skills")
    if not isinstance(episode_skill, str) or not episode_skill.strip():
        raise AnalysisParseError("'episode_skill' must be a non-empty string")
    if _PLACEHOLDER_RE.fullmatch(episode_skill):
        raise AnalysisParseError("'episode_skill' is the template's placeholder '...', not a skill")
    if step_skills is None:  # absent or null: no critical steps
        step_skills = {}
    if isinstance(step_skills, list):  # [{"step": 3, "skill": "..."}] is a common variant
        step_skills = {str(item.get("step")): item.get("skill") for item in step_skills if isinstance(item, dict)}
    if not isinstance(step_skills, dict):
        raise AnalysisParseError("'step_skills' must be an object mapping step indices to sentences")
    summary = data.get("episode_summary") if isinstance(data.get("episode_summary"), str) else ""
    return EpisodeSkills(episode_skill, dict(step_skills)).cleaned(num_steps, max_step_skills), summary


def parse_analysis(text: str | None, num_steps: int, max_step_skills: int) -> tuple[EpisodeSkills, str]:
    """``(skills, summary)`` from an analysis answer.

    Accepts the JSON object alone, in a code fence, inside prose, after or before other JSON
    objects (an echoed schema or example: the last object with the analysis keys that holds a
    usable analysis wins), with trailing commas or single quotes. ``"step_skills": null`` means
    no critical steps. Step indices that are not integers within the trajectory are dropped, and
    at most ``max_step_skills`` are kept (the earliest steps, so the cap does not depend on the
    order the model happened to write them in). Raises :class:`AnalysisParseError`.
    """
    if text is None or not text.strip():
        raise AnalysisParseError("the answer is empty")
    cut = len(text) > MAX_SCAN_CHARS
    where = (f"the last {MAX_SCAN_CHARS // 1024} KiB of the answer (it is {len(text) // 1024} KiB long; only its end "
             "is read: ask for the JSON object alone, or a shorter answer)") if cut else "the answer"
    blocks = balanced_objects(text[-MAX_SCAN_CHARS:])
    if not blocks:
        raise AnalysisParseError(f"no JSON object found in {where}")
    first_error: AnalysisParseError | None = None
    for block in reversed(blocks):
        if not any(key in block for key in ANALYSIS_KEYS):
            continue
        data = _load(block)
        if data is None:  # say so on the re-ask, rather than that there is no analysis at all
            first_error = first_error or AnalysisParseError(
                "the object with the analysis keys is not valid JSON (a huge number, an unclosed string, ...)")
            continue
        for data in reversed(_analysis_objects(data)):
            try:
                return _skills_of(data, num_steps, max_step_skills)
            except AnalysisParseError as exc:
                first_error = first_error or exc  # the error of the last (most likely meant) object
    if first_error is not None:
        raise first_error
    raise AnalysisParseError(f"no JSON object with the keys {', '.join(ANALYSIS_KEYS)} found in {where}")
