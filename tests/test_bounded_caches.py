"""The retriever client's LRU answer cache and the ALFWorld generation lock."""

import threading

from environments.alfworld import data
from environments.search_qa.client import RetrieverClient
from environments.search_qa.passages import Hit, Passage


class CountingClient(RetrieverClient):
    """A client whose HTTP request is replaced by a counter (no server needed)."""

    def __init__(self, **kwargs):
        super().__init__("http://127.0.0.1:9", **kwargs)
        self.sent: list[list[str]] = []

    def _request(self, queries, topk):
        self.sent.append(list(queries))
        return [[Hit(Passage.from_json({"id": q, "contents": q}, "0"))] for q in queries]


def test_identical_queries_are_answered_from_the_cache_and_the_oldest_is_evicted():
    client = CountingClient(cache_size=2)
    client.search(["a", "b", "a"], topk=1)
    assert client.sent == [["a", "b"]]
    client.search(["a"], topk=1)  # a hit: 'a' becomes the most recent entry
    client.search(["c"], topk=1)  # evicts 'b', the least recently used
    client.search(["a", "b"], topk=1)
    assert client.sent == [["a", "b"], ["c"], ["b"]]
    client.search(["a"], topk=2)  # another topk is another entry
    assert client.sent[-1] == ["a"]


def test_cache_size_zero_disables_the_cache():
    client = CountingClient(cache_size=0)
    client.search(["a"], topk=1)
    client.search(["a"], topk=1)
    assert client.sent == [["a"], ["a"]]


def test_generation_lock_excludes_other_holders(tmp_path):
    root = str(tmp_path / "games")
    order = []

    def wait_for_the_lock():
        with data._lock(root).acquire(timeout=5):
            order.append("other")

    with data._lock(root):
        other = threading.Thread(target=wait_for_the_lock)
        other.start()
        other.join(0.3)
        order.append("first")  # the other thread is still waiting
    other.join(5)
    assert order == ["first", "other"] and (tmp_path / "games" / ".lock").exists()
