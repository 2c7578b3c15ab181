"""Text normalisation shared by search, goal generation and reward matching.

One normaliser everywhere keeps the three in agreement: a phrase the reward accepts as present in a
product's text is made of exactly the tokens the search engine indexed for it.
"""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^a-z0-9.]+")
_STRAY_DOT = re.compile(r"(?<![0-9])\.|\.(?![0-9])")
_SPACES = re.compile(r"\s+")

#: Function words that carry no product meaning; dropped from search tokens only.
STOPWORDS = frozenset(
    "a an and are as at be but by for from has have i i'm im in is it its me my need of on or our "
    "looking look want wants find the this that to with you your price lower than dollars".split()
)


def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces (keeping decimal points like ``1.7``), single spaces."""
    text = _NON_WORD.sub(" ", text.lower())
    text = _STRAY_DOT.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def words(text: str) -> list[str]:
    """The normalised words of ``text``, in order (stopwords kept)."""
    normalized = normalize(text)
    return normalized.split(" ") if normalized else []


def search_tokens(text: str) -> list[str]:
    """Tokens used by the BM25 index and its queries: normalised words minus stopwords."""
    return [w for w in words(text) if w not in STOPWORDS]


def contains_phrase(haystack: str, phrase: str) -> bool:
    """Whether the normalised ``phrase`` occurs in the normalised ``haystack`` on word boundaries."""
    needle = normalize(phrase)
    return bool(needle) and f" {needle} " in f" {normalize(haystack)} "


def same_phrase(a: str, b: str) -> bool:
    """Order-insensitive equality of two short phrases ("free gluten" == "gluten-free")."""
    return sorted(words(a)) == sorted(words(b)) and bool(words(a))
