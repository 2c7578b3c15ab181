"""Answer normalisation and exact match, following the Search-R1 / SQuAD convention.

The reward of a QA episode is exact match after normalisation, so that "The Eiffel Tower." and
"eiffel tower" count as the same answer. The steps and their order (lower-case, drop punctuation,
drop the articles a/an/the, collapse whitespace) are those of the reference evaluation: changing
them changes every reported EM number, so keep them as they are.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, remove the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str | None, golden_answers: str | Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0.

    ``golden_answers`` may be one string or a list (datasets list every accepted alias). An empty
    or missing prediction never matches, even an (invalid) empty gold answer.
    """
    if prediction is None:
        return 0.0
    predicted = normalize_answer(prediction)
    if not predicted:
        return 0.0
    golds = [golden_answers] if isinstance(golden_answers, str) else list(golden_answers)
    return 1.0 if any(predicted == normalize_answer(str(gold)) for gold in golds) else 0.0
