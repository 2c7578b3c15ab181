"""Text from outside the policy (environments, skill extractors) made safe once, where it enters.

Observations, task statements and admissible actions come from environment engines, skills from
an LLM or from rules quoting the policy's own actions; all of it is pasted into the policy's
prompt and written to JSONL logs. Two kinds of character break things there: a lone surrogate
(``"\\ud800"``, which JSON escapes and some APIs return) cannot be encoded as UTF-8, so a
tokenizer raises a `TypeError` and a log writer a `UnicodeEncodeError` and the run dies; and
control characters (NUL, ESC, DEL, C1) reach the prompt verbatim, where an ESC sequence or a NUL
means nothing to the model but can corrupt a terminal or a log viewer. `clean_text` replaces
surrogates with U+FFFD and drops control characters other than tab, newline and carriage return;
everything else (any script, emoji) is kept. `clip_text` is the one way text is cut to a budget,
for prompts (a skill, at a word boundary) and for records and logs (saying how much was left out).
"""

from __future__ import annotations

import re

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """``text`` with lone surrogates as U+FFFD and control characters (but tab and line breaks) removed."""
    return _CONTROLS.sub("", _SURROGATES.sub("\ufffd", text))


def clip_text(text: str, limit: int, head_share: float = 1.0, marker: str | None = None,
              word_boundary: bool = False) -> str:
    """``text`` within ``limit`` characters (unchanged when it fits).

    Keeps the first ``head_share`` of the budget from the start and the rest from the end, with
    ``marker`` in between (default: how many characters were left out; its length counts against
    the budget when it is given). ``word_boundary``: a head cut inside a word backs off to the last
    space (when that keeps at least half the budget), so a prompt reads naturally.
    """
    if len(text) <= limit:
        return text
    budget = limit - len(marker) if marker is not None else limit
    head = max(int(budget * head_share), 1)
    tail = max(budget - head, 0)
    start = text[:head]
    if word_boundary and text[len(start)] != " ":
        space = start.rfind(" ")
        if space >= limit // 2:
            start = start[:space]
    if marker is None:
        marker = f" [... {len(text) - head - tail} characters left out ...] "
    if word_boundary:
        start = start.rstrip(" ,;:.-")
    return start + marker + (text[len(text) - tail:] if tail else "")
