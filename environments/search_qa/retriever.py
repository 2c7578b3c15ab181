"""Retrievers: the interface the environment talks to, and an in-process BM25 implementation.

Anything with ``search(queries, topk) -> list[list[Hit]]`` is a retriever: the in-process
:class:`BM25Retriever` (no HTTP, fastest for CPU runs and tests), the HTTP
:class:`~environments.search_qa.client.RetrieverClient` (a Search-R1 server, ours or theirs), or a
user object. The interface is batched because the servers are: a dense retriever encodes a batch
of queries in one forward pass.

BM25 is ``bm25s`` (numpy only, indexes thousands of passages in well under a second) over a small
tokenizer of our own: lower-cased words, English stop words removed, and a light suffix stripper
so that "works"/"work" and "founded"/"founder" meet. Search-R1's own sparse baseline is BM25 too.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from .passages import Hit, Passage


class RetrieverError(RuntimeError):
    """A retrieval that could not be served (bad request, server down after all retries)."""


@runtime_checkable
class Retriever(Protocol):
    """Batched top-k search: one list of hits (best first) per query."""

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]: ...


_WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    try:  # bm25s ships the usual English list; keep a fallback so tokenizing never needs it
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN)
    except ImportError:  # pragma: no cover
        return frozenset("a an and are as at be by for from has in is it its of on that the to was were with".split())


def _stem(word: str) -> str:
    """Strip one common English suffix (a tiny, predictable stand-in for a Porter stemmer)."""
    for suffix in ("ing", "ed", "er", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stop-word-free, lightly stemmed word tokens."""
    stop = _stopwords()
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in stop]


class BM25Retriever:
    """In-process BM25 over a list of passages (title and text are both indexed).

    Thread-safe: the environment may be stepped from a thread pool and the server answers
    requests on several threads; a lock keeps bm25s' retrieval single-entry.
    """

    def __init__(self, passages: Sequence[Passage], k1: float = 0.9, b: float = 0.4) -> None:
        """``k1``/``b`` default to Pyserini's BM25 defaults, which Search-R1's sparse baseline uses."""
        import bm25s

        if not passages:
            raise ValueError("BM25Retriever needs at least one passage")
        self.passages = list(passages)
        self._index = bm25s.BM25(k1=k1, b=b)
        self._index.index([tokenize(f"{p.title} {p.text}") for p in self.passages], show_progress=False)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        """Top-``topk`` passages per query; passages that share no term with the query are left out."""
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of strings, not a string")
        if not queries:
            return []
        k = max(1, min(int(topk), len(self.passages)))
        with self._lock:
            docs, scores = self._index.retrieve([tokenize(q) for q in queries], k=k, show_progress=False, n_threads=1)
        return [
            [Hit(self.passages[int(d)], float(s)) for d, s in zip(row_docs, row_scores) if s > 0]
            for row_docs, row_scores in zip(docs, scores)
        ]


_SHARED: dict[tuple, BM25Retriever] = {}
_SHARED_LOCK = threading.Lock()


def shared_bm25(corpus: str = "generated", seed: int = 0, corpus_kwargs: Mapping[str, Any] | None = None
                ) -> BM25Retriever:
    """The process-wide BM25 retriever of a corpus spec (see :func:`loaders.load_passages`).

    A training batch creates one environment per episode (hundreds); they must share one index
    rather than each building its own.
    """
    from .loaders import load_passages

    key = (corpus, seed, tuple(sorted((corpus_kwargs or {}).items())))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = BM25Retriever(load_passages(corpus, seed=seed, corpus_kwargs=corpus_kwargs))
        return _SHARED[key]
