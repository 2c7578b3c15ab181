"""Text from outside the policy (environments, skill extractors) made safe once, where it enters.

Observations, task statements and admissible actions come from environment engines, skills from
an LLM or from rules quoting the policy's own actions; all of it is pasted into the policy's
prompt and written to JSONL logs. Two kinds of character break things there: a lone surrogate
(``"\\ud800"``, which JSON escapes and some APIs return) cannot be encoded as UTF-8, so a
tokenizer raises a `TypeError` and a log writer a `UnicodeEncodeError` and the run dies; and
control characters (NUL, ESC, DEL, C1) reach the prompt verbatim, where an ESC sequence or a NUL
means nothing to the model but can corrupt a terminal or a log viewer. `clean_text` replaces
surrogates with U+FFFD and drops control characters other than tab, newline and carriage return;
everything else (any script, emoji) is kept.
"""

from __future__ import annotations

import re

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """``text`` with lone surrogates as U+FFFD and control characters (but tab and line breaks) removed."""
    return _CONTROLS.sub("", _SURROGATES.sub("\ufffd", text))
