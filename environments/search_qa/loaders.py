"""Corpora and task rows: name/path resolution, Search-R1's files, and the generated dataset.

Task rows handed to the environment have the Search-R1 columns the environment needs:
``question``, ``golden_answers`` (list of accepted answers) and ``data_source`` (the dataset name,
used as the task type for per-dataset EM). :func:`task_fields` also reads Search-R1's raw
training parquet rows, where the answers may only be under ``reward_model.ground_truth.target``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .passages import Passage

#: Corpus names understood by :func:`load_passages` (anything else is a JSONL path).
CORPUS_NAMES = ("generated", "wiki")


def load_passages(spec: str, seed: int = 0, corpus_kwargs: Mapping[str, Any] | None = None) -> list[Passage]:
    """Passages of a corpus spec: ``"generated"`` (seeded synthetic corpus; ``corpus_kwargs`` are
    :func:`~.generated.generate_corpus`'s sizes), ``"wiki"`` (gensim's shortened Wikipedia dump,
    needs gensim), or a path to a JSONL corpus."""
    if corpus_kwargs and spec != "generated":
        raise ValueError(f"corpus_kwargs: only the generated corpus takes sizes, not corpus {spec!r}")
    if spec == "generated":
        from .generated import generate_corpus

        return list(generate_corpus(seed, **dict(corpus_kwargs or {})).passages)
    if spec == "wiki":
        from .wiki import load_wiki_passages

        return load_wiki_passages()
    if os.path.exists(spec):
        return load_corpus_jsonl(spec)
    raise ValueError(f"unknown corpus {spec!r}: use one of {CORPUS_NAMES} or the path of a JSONL corpus")


def load_corpus_jsonl(path: str, limit: int | None = None) -> list[Passage]:
    """A Search-R1 corpus file (``.jsonl`` or ``.jsonl.gz``): one ``{"id", "contents"}`` object a line.

    ``title``/``text`` fields are accepted instead of ``contents``; a missing id becomes the line
    number (wiki-18 ids are line numbers too). Blank lines are skipped.
    """
    opener = gzip.open if path.endswith(".gz") else open
    passages: list[Passage] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                passages.append(Passage.from_json(json.loads(line), fallback_id=str(number)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number + 1}: not a JSON object ({exc.msg})") from None
            if limit is not None and len(passages) >= limit:
                break
    if not passages:
        raise ValueError(f"{path}: no passages")
    return passages


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    return [str(v) for v in value]


def task_fields(row: Mapping[str, Any]) -> tuple[str, list[str], str]:
    """``(question, golden_answers, data_source)`` of a task row, ours or Search-R1's raw one."""
    question = row.get("question")
    if not question:
        raise ValueError("task row has no 'question'")
    answers = _as_list(row.get("golden_answers"))
    if not answers:
        reward_model = row.get("reward_model") or {}
        answers = _as_list((reward_model.get("ground_truth") or {}).get("target"))
    if not answers:
        raise ValueError(f"task row has no 'golden_answers': {question!r}")
    return str(question).strip(), answers, str(row.get("data_source") or "unknown")


def load_searchr1_parquet(path: str | Sequence[str], data_sources: Sequence[str] | None = None):
    """Search-R1's ``train.parquet``/``test.parquet`` as a ``datasets.Dataset`` of task rows.

    Keeps ``id``, ``question``, ``golden_answers`` and ``data_source`` (the raw prompt column holds
    Search-R1's own template, which this environment replaces with its own). ``data_sources``
    keeps only those datasets (e.g. ``["nq", "hotpotqa"]``).
    """
    import pyarrow.parquet as pq
    from datasets import Dataset

    paths = [path] if isinstance(path, str) else list(path)
    rows: list[dict[str, Any]] = []
    for p in paths:
        for index, raw in enumerate(pq.read_table(p).to_pylist()):
            question, answers, source = task_fields(raw)
            if data_sources is not None and source not in data_sources:
                continue
            raw_id = raw.get("id") or (raw.get("extra_info") or {}).get("index", index)
            rows.append({"id": f"{source}-{raw_id}", "question": question, "golden_answers": answers,
                         "data_source": source})
    return Dataset.from_list(rows)


#: Share of each question kind (single-hop, two-hop) reserved for the test split of a world.
TEST_FRACTION = 0.2


def generated_pools(world_seed: int = 0, corpus_kwargs: Mapping[str, Any] | None = None
                    ) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """The canonical, disjoint train/test pools of a generated world, by split and number of hops.

    Fixed by the world alone, so that any number of tasks drawn from "train" never overlaps any
    number drawn from "test".
    """
    import random

    from .generated import generate_corpus

    corpus = generate_corpus(world_seed, **dict(corpus_kwargs or {}))
    rng = random.Random(f"split-{world_seed}")
    pools: dict[str, dict[int, list[dict[str, Any]]]] = {"train": {}, "test": {}}
    for hops in (1, 2):
        pool = [q for q in corpus.questions if q["data_source"] == f"generated-{hops}hop"]
        rng.shuffle(pool)
        cut = round(len(pool) * TEST_FRACTION)
        pools["test"][hops], pools["train"][hops] = pool[:cut], pool[cut:]
    return pools


def _draw(pools: dict[int, list[dict[str, Any]]], count: int, two_hop_fraction: float, seed: int,
          split: str) -> list[dict[str, Any]]:
    import random

    if not 0.0 <= two_hop_fraction <= 1.0:
        raise ValueError("two_hop_fraction must be in [0, 1]")
    want = {2: round(count * two_hop_fraction)}
    want[1] = count - want[2]
    for hops in (1, 2):
        if want[hops] > len(pools[hops]):
            raise ValueError(f"{split}: asked for {want[hops]} {hops}-hop questions, the world has "
                             f"{len(pools[hops])} in this split")
    rng = random.Random(f"draw-{split}-{seed}")
    rows = [row for hops in (1, 2) for row in rng.sample(pools[hops], want[hops])]
    rng.shuffle(rows)
    return rows


def build_generated_dataset(seed: int = 0, num_train: int = 2000, num_test: int = 500,
                            two_hop_fraction: float = 0.5, corpus_kwargs: Mapping[str, Any] | None = None,
                            world_seed: int | None = None):
    """Train/test ``DatasetDict`` of generated questions, disjoint and seeded.

    Questions come from the world ``generate_corpus(world_seed, **corpus_kwargs)`` (``world_seed``
    defaults to ``seed``): the environment must search that same world (``corpus_seed``), and
    ``two_hop_fraction`` of them are two-hop. ``seed`` picks which questions are drawn.
    """
    from datasets import Dataset, DatasetDict

    world = seed if world_seed is None else world_seed
    pools = generated_pools(world, corpus_kwargs)
    return DatasetDict(train=Dataset.from_list(_draw(pools["train"], num_train, two_hop_fraction, seed, "train")),
                       test=Dataset.from_list(_draw(pools["test"], num_test, two_hop_fraction, seed, "test")))


#: Constructor arguments of SearchQAEnvironment that do not change which world is searched.
_ENVIRONMENT_ONLY = ("retriever", "retriever_url", "topk", "max_turns", "request_timeout", "max_retries",
                     "action_parsing")


def search_qa_tasks(split: str = "train", num_tasks: int | None = None, seed: int = 0, world_seed: int | None = None,
                    two_hop_fraction: float = 0.5, corpus_kwargs: Mapping[str, Any] | None = None, *,
                    corpus: str = "generated", corpus_seed: int | None = None, **env_kwargs: Any):
    """Task builder for the registry (``environments.tasks("search_qa", split, num_tasks, seed)``).

    Questions of the generated world ``world_seed`` with ``corpus_kwargs`` sizes; ``seed`` only
    changes which questions are drawn. ``split`` is "train" or "test"/"eval"; ``num_tasks``
    defaults to 2000 for train and 500 otherwise.

    The environment's constructor arguments may be passed too, so that its kwargs can be handed
    over as they are: ``corpus_seed`` is the world it searches (the default ``world_seed``; a
    different ``world_seed`` is an error), ``corpus`` must be "generated" (other corpora need a
    dataset of their own questions, e.g. :func:`load_searchr1_parquet`), and the others do not
    change the world and are ignored. With ``retriever_url`` the server must serve that world.
    """
    from datasets import Dataset

    unknown = sorted(set(env_kwargs) - set(_ENVIRONMENT_ONLY))
    if unknown:
        raise TypeError(f"search_qa_tasks: unexpected arguments {unknown}")
    if corpus != "generated":
        raise ValueError(f"corpus: questions can only be drawn from the generated corpus, not {corpus!r}; "
                         "give a dataset of that corpus' questions instead (e.g. load_searchr1_parquet)")
    if world_seed is not None and corpus_seed is not None and world_seed != corpus_seed:
        raise ValueError(f"world_seed: {world_seed} differs from the environment's corpus_seed {corpus_seed}; "
                         "the questions would not be in the corpus the environment searches")
    world = world_seed if world_seed is not None else corpus_seed if corpus_seed is not None else 0
    name = {"train": "train", "test": "test", "eval": "test"}.get(split)
    if name is None:
        raise ValueError(f"search_qa: unknown split {split!r}; choose train, test or eval")
    count = num_tasks or (2000 if name == "train" else 500)
    return Dataset.from_list(_draw(generated_pools(world, corpus_kwargs)[name], count, two_hop_fraction,
                                   seed, name))
