"""Passages and search hits, and how they are shown to the agent.

Search-R1's corpus (wiki-18) stores a passage as ``{"id": ..., "contents": "\"Title\"\ntext"}``; the
agent sees the top-k hits as ``Doc 1(Title: "Title") text`` lines inside ``<information>``. Every
corpus and retriever here goes through these two types so that a model trained on the generated
corpus reads exactly the format it will meet against a real Search-R1 retriever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Passage:
    """One retrievable unit: a chunk of an article (``title``) with a corpus-unique ``id``."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """The wiki-18 ``contents`` field: the quoted title on the first line, then the text."""
        return f'"{self.title}"\n{self.text}'

    def to_json(self) -> dict[str, str]:
        """The document object of the retriever contract (the corpus row, as Search-R1 returns it)."""
        return {"id": self.id, "contents": self.contents}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], fallback_id: str = "") -> Passage:
        """Parse a document object; accepts ``contents`` or separate ``title``/``text`` fields.

        Search-R1's dense server returns corpus rows (``id``, ``contents``); its BM25 path also adds
        ``title`` and ``text``. A title line without quotes is kept as it is.
        """
        doc_id = str(doc.get("id", doc.get("docid", fallback_id)))
        if "contents" in doc:
            first, _, rest = str(doc["contents"]).partition("\n")
            title = first.strip()
            if len(title) >= 2 and title[0] == title[-1] == '"':
                title = title[1:-1]
            return cls(doc_id, title, rest.strip())
        return cls(doc_id, str(doc.get("title", "")).strip(), str(doc.get("text", "")).strip())


@dataclass(frozen=True)
class Hit:
    """A retrieved passage and its retrieval score (``None`` when the server did not send one)."""

    passage: Passage
    score: float | None = None


def format_passages(hits: Sequence[Hit]) -> str:
    """The numbered ``Doc i(Title: "...") text`` lines of Search-R1, one per hit."""
    return "\n".join(f'Doc {i}(Title: "{h.passage.title}") {h.passage.text}' for i, h in enumerate(hits, 1))


def format_information(hits: Sequence[Hit]) -> str:
    """The observation after a search: the passages wrapped in ``<information>`` tags."""
    body = format_passages(hits) if hits else "No passages found for this query."
    return f"<information>{body}</information>"
