"""Search-R1-style search-augmented QA: environment, retrievers (in-process, HTTP client and
server), corpora (generated multi-hop world, gensim's Wikipedia slice, Search-R1 files) and an
oracle policy. Register with
``environments.register("search_qa", SearchQAEnvironment, tasks=search_qa_tasks)``.
"""

from .env import (
    ADMISSIBLE_ACTIONS,
    SearchQAEnvironment,
    parse_search_action,
    parse_search_action_reference,
)
from .generated import GeneratedCorpus, extract_fact, generate_corpus
from .loaders import (
    build_generated_dataset,
    load_corpus_jsonl,
    load_passages,
    load_searchr1_parquet,
    search_qa_tasks,
    task_fields,
)
from .normalize import exact_match, normalize_answer
from .oracle import OraclePolicy, play_oracle
from .passages import Hit, Passage, format_information, format_passages
from .retriever import BM25Retriever, Retriever, RetrieverError, shared_bm25

__all__ = [
    "ADMISSIBLE_ACTIONS",
    "BM25Retriever",
    "GeneratedCorpus",
    "Hit",
    "OraclePolicy",
    "Passage",
    "Retriever",
    "RetrieverError",
    "SearchQAEnvironment",
    "build_generated_dataset",
    "exact_match",
    "extract_fact",
    "format_information",
    "format_passages",
    "generate_corpus",
    "load_corpus_jsonl",
    "load_passages",
    "load_searchr1_parquet",
    "normalize_answer",
    "parse_search_action",
    "parse_search_action_reference",
    "play_oracle",
    "search_qa_tasks",
    "shared_bm25",
    "task_fields",
]
