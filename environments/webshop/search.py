"""BM25 product search over a catalogue, as WebShop's search engine (Lucene BM25 via pyserini) does.

``bm25s`` (numpy only) indexes thousands of products in well under a second, so the index is built
on first use instead of being shipped. Ties are broken by catalogue order so that a query always
returns the same ranking.
"""

from __future__ import annotations

import numpy as np

from .catalogue import Catalogue
from .text import search_tokens


class ProductSearch:
    """Ranked ASINs for a free-text query."""

    def __init__(self, catalogue: Catalogue) -> None:
        try:
            import bm25s
        except ImportError as exc:  # pragma: no cover - bm25s is a declared dependency of this environment
            raise ImportError("the webshop environment needs the `bm25s` package: pip install bm25s") from exc
        self.catalogue = catalogue
        self._retriever = bm25s.BM25()
        corpus = [search_tokens(p.search_text()) or ["empty"] for p in catalogue.products]
        self._retriever.index(corpus, show_progress=False)
        self._vocab = {token for doc in corpus for token in doc}

    def search(self, query: str, top_k: int = 50) -> list[str]:
        """ASINs of the best ``top_k`` products with a positive score, best first."""
        tokens = [t for t in search_tokens(query) if t in self._vocab]
        if not tokens:
            return []
        k = min(len(self.catalogue), max(top_k * 2, top_k + 20))
        docs, scores = self._retriever.retrieve([tokens], k=k, show_progress=False, n_threads=0)
        docs, scores = np.asarray(docs[0]), np.asarray(scores[0], dtype=np.float64)
        keep = scores > 0
        docs, scores = docs[keep], np.round(scores[keep], 5)
        order = np.lexsort((docs, -scores))  # score descending, then catalogue order
        return [self.catalogue.products[int(i)].asin for i in docs[order][:top_k]]
