"""HTTP client of a Search-R1 retrieval server (``POST /retrieve``).

The contract (Search-R1's ``retrieval_server.py``, which our :mod:`server` also speaks)::

    request:  {"queries": ["q1", ...], "topk": 3, "return_scores": true}
    response: {"result": [[{"document": {"id": "1", "contents": "\\"Title\\"\\ntext"}, "score": 0.8}, ...], ...]}

Without ``return_scores`` the inner items are the bare document objects. A retriever server is a
shared, remote dependency of a long training run: requests carry a timeout, transient failures
(connection errors, timeouts, HTTP 5xx and 429) are retried with exponential backoff, and a batch
larger than ``max_batch_size`` is split into several requests. HTTP uses the standard library only.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import LRUCache

from .passages import Hit, Passage
from .retriever import RetrieverError

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def retrieve_url(url: str) -> str:
    """Accept ``http://host:port`` as well as ``http://host:port/retrieve``."""
    url = url.rstrip("/")
    return url if url.endswith("/retrieve") else url + "/retrieve"


def parse_response(payload: Any, num_queries: int) -> list[list[Hit]]:
    """Hits of a ``/retrieve`` response body, with or without scores."""
    if not isinstance(payload, dict) or not isinstance(payload.get("result"), list):
        raise RetrieverError(f"malformed retriever response: expected {{'result': [...]}}, got {str(payload)[:200]!r}")
    result = payload["result"]
    if len(result) != num_queries:
        raise RetrieverError(f"retriever returned {len(result)} result lists for {num_queries} queries")
    hits: list[list[Hit]] = []
    for row in result:
        parsed = []
        for rank, item in enumerate(row):
            if isinstance(item, dict) and isinstance(item.get("document"), dict):
                score = item.get("score")
                score = None if score is None else float(score)
                parsed.append(Hit(Passage.from_json(item["document"], str(rank)), score))
            elif isinstance(item, dict):
                parsed.append(Hit(Passage.from_json(item, str(rank))))
            else:
                raise RetrieverError(f"malformed document in retriever response: {str(item)[:200]!r}")
        hits.append(parsed)
    return hits


class RetrieverClient:
    """A :class:`~environments.search_qa.retriever.Retriever` backed by a ``/retrieve`` server.

    ``max_retries`` retries follow the first attempt, waiting ``backoff * 2**attempt`` seconds
    (capped at ``max_backoff``, with up to 10% jitter so that many workers do not retry in step).
    Identical ``(query, topk)`` requests are answered from an LRU cache of ``cache_size`` entries
    (the N episodes of a group often issue the same first query); ``cache_size=0`` disables it.
    """

    def __init__(self, url: str, timeout: float = 10.0, max_retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 8.0, max_batch_size: int = 64, return_scores: bool = True,
                 cache_size: int = 4096, sleep: Callable[[float], None] = time.sleep) -> None:
        if max_retries < 0 or timeout <= 0 or max_batch_size < 1:
            raise ValueError("need max_retries >= 0, timeout > 0 and max_batch_size >= 1")
        self.url = retrieve_url(url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_batch_size = max_batch_size
        self.return_scores = return_scores
        self.cache_size = cache_size
        self._sleep = sleep
        # cachetools' LRU is not thread-safe on its own: every access holds self._lock.
        self._cache: LRUCache[tuple[str, int], list[Hit]] | None = LRUCache(cache_size) if cache_size > 0 else None
        self._lock = threading.Lock()
        #: Number of HTTP requests sent and of retries, for logging and tests.
        self.requests = 0
        self.retries = 0

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of strings, not a string")
        results: list[list[Hit] | None] = [None] * len(queries)
        missing: list[int] = []
        with self._lock:
            for i, query in enumerate(queries):
                cached = self._cache.get((query, topk)) if self._cache is not None else None
                if cached is not None:
                    results[i] = cached
                else:
                    missing.append(i)
        unique = list(dict.fromkeys(queries[i] for i in missing))
        fetched: dict[str, list[Hit]] = {}
        for start in range(0, len(unique), self.max_batch_size):
            batch = unique[start:start + self.max_batch_size]
            fetched.update(zip(batch, self._request(batch, topk)))
        if self._cache is not None:
            with self._lock:
                for query, hits in fetched.items():
                    self._cache[(query, topk)] = hits
        for i in missing:
            results[i] = fetched[queries[i]]
        return [r if r is not None else [] for r in results]

    def _request(self, queries: list[str], topk: int) -> list[list[Hit]]:
        body = json.dumps({"queries": queries, "topk": int(topk), "return_scores": self.return_scores}).encode()
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                self._sleep(delay * (1 + 0.1 * random.random()))
                self.retries += 1
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return parse_response(payload, len(queries))
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode("utf-8", "replace")
                last_error = f"HTTP {exc.code} from {self.url}: {detail}"
                if exc.code not in _RETRY_STATUS:
                    raise RetrieverError(last_error) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last_error = f"{type(exc).__name__} talking to {self.url}: {getattr(exc, 'reason', exc)}"
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                last_error = f"undecodable response from {self.url}: {exc}"
            logger.warning("retriever request failed (attempt %d/%d): %s", attempt + 1, self.max_retries + 1,
                           last_error)
        raise RetrieverError(f"retriever failed after {self.max_retries + 1} attempts: {last_error}")


_SHARED: dict[tuple[str, float, int], RetrieverClient] = {}
_SHARED_LOCK = threading.Lock()


def shared_client(url: str, timeout: float = 10.0, max_retries: int = 3) -> RetrieverClient:
    """One client per server and settings in a process, so that the environments of a batch share
    its cache (the N episodes of a group often send the same first query)."""
    key = (retrieve_url(url), float(timeout), int(max_retries))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = RetrieverClient(url, timeout=timeout, max_retries=max_retries)
        return _SHARED[key]
