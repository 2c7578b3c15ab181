"""Real Wikipedia passages from the shortened dump that ships inside gensim's wheel.

The wiki-18 corpus of Search-R1 cannot be downloaded here, but ``pip install gensim`` brings a
~1.7 MB slice of an English Wikipedia dump (about 200 articles) for its own tests. Cut into
100-word chunks as DPR/wiki-18 does, it gives about 4.8k real passages: enough to check that the
retriever, server and prompt behave on real text. gensim is optional; it is imported only here.
"""

from __future__ import annotations

import bz2
import importlib.util
import os
import re
from functools import lru_cache

from .passages import Passage

DUMP_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_GENSIM_HINT = "the Wikipedia corpus needs gensim (its wheel ships the dump): pip install gensim"


def gensim_dump_path() -> str:
    """Path of the shortened dump inside the installed gensim package."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_GENSIM_HINT)
    path = os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data", DUMP_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{DUMP_NAME} is not in this gensim install ({path})")
    return path


_MARKUP = re.compile(r"'{2,}|^=+\s*|\s*=+$|^[*#:;]+\s*", re.MULTILINE)


def _clean(wikitext: str) -> str:
    from gensim.corpora.wikicorpus import filter_wiki

    text = _MARKUP.sub("", filter_wiki(wikitext))
    return " ".join(text.split())


def load_wiki_passages(path: str | None = None, words_per_passage: int = 100,
                       max_articles: int | None = None) -> list[Passage]:
    """Article chunks of ``words_per_passage`` words, titled with the article title.

    ``path`` defaults to gensim's shipped dump; any ``pages-articles`` ``.xml.bz2`` dump works.
    Redirects and non-article namespaces are skipped.
    """
    return list(_load(path or gensim_dump_path(), words_per_passage, max_articles))


@lru_cache(maxsize=4)
def _load(path: str, words_per_passage: int, max_articles: int | None) -> tuple[Passage, ...]:
    try:
        from gensim.corpora.wikicorpus import extract_pages
    except ImportError as exc:
        raise ImportError(_GENSIM_HINT) from exc
    if words_per_passage < 1:
        raise ValueError("words_per_passage must be >= 1")
    passages: list[Passage] = []
    articles = 0
    with bz2.open(path, "rb") as handle:
        for title, wikitext, page_id in extract_pages(handle, filter_namespaces=("0",)):
            if wikitext.lstrip().lower().startswith("#redirect"):
                continue
            words = _clean(wikitext).split()
            for chunk, start in enumerate(range(0, len(words), words_per_passage)):
                text = " ".join(words[start:start + words_per_passage])
                passages.append(Passage(f"wiki-{page_id}-{chunk}", title, text))
            articles += 1
            if max_articles is not None and articles >= max_articles:
                break
    return tuple(passages)
