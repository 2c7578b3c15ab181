"""Search-augmented question answering in the Search-R1 protocol, as an OPID environment.

Each turn the model reasons in ``<think>...</think>`` and then either searches,
``<search>query</search>`` (the top-k passages come back in ``<information>...</information>``),
or answers, ``<answer>...</answer>``, which ends the episode with reward 1 for an exact match
(after answer normalisation) with any gold answer and 0 otherwise. An episode also ends after
``max_turns`` answers (4 in the reference), ill-formed ones included, so a model cannot stall.

``action_parsing="strict"`` (the default) also requires the reasoning block and never plays an
ill-formed answer; ``"reference"`` follows the reference projection (no reasoning required, the
first search or else the first answer block is played even when the answer is flagged invalid).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..base import INSTRUCTION_LINE, AgentEnvironment, PromptView, StepResult, render_history, tag_blocks, window
from .loaders import task_fields
from .normalize import exact_match
from .oracle import is_generated_task, oracle_response
from .passages import format_information
from .retriever import Retriever, shared_bm25

ADMISSIBLE_ACTIONS = ("<search>query</search>", "<answer>answer</answer>")
FIRST_OBSERVATION = "No information has been retrieved yet."
SEARCH_FORMAT_INSTRUCTIONS = (
    "You should first reason step-by-step about what you know and what is still missing. This reasoning "
    "MUST be enclosed within <think> </think> tags.\n"
    "After your reasoning, take exactly one of these two actions, not both:\n"
    "(1) If some knowledge is missing or uncertain, search for it with <search> your query </search>. "
    "The top results will be returned between <information> and </information>.\n"
    "(2) If you can answer with confidence, give the final answer, as short as possible, with "
    "<answer> your answer </answer>, for example <answer> Beijing </answer>."
)

_BLOCK = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_OPEN_TAG = re.compile(r"</?(search|answer)>", re.IGNORECASE)
_SEARCH_OPEN = re.compile(r"<search>", re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)


def parse_search_action(text: str) -> tuple[str | None, bool]:
    """Project a raw answer onto ``<search>q</search>`` or ``<answer>a</answer>`` ("strict" mode).

    Stricter than the reference (:func:`parse_search_action_reference`). Valid iff there is a
    ``<think>`` block and, after it, exactly one complete ``search`` or ``answer`` block with
    non-empty content and no other search/answer tag (a response that both searches and answers is
    ambiguous: the prompt asks for one action). Tags quoted inside the reasoning are part of the
    reasoning and ignored; tags before it make the response invalid. The content keeps its case
    (queries and answers are not case-folded) with whitespace collapsed. For an ill-formed response
    the last block found, if any, is still returned for the logs, and never played.
    """
    blocks = tag_blocks(text, ("search", "answer"))
    if not blocks:
        return None, False
    last = blocks[-1]
    content = " ".join(last.content.split())
    action = f"<{last.tag}>{content}</{last.tag}>" if content else None
    thinks = tag_blocks(text, ("think",))
    if action is None or not thinks:
        return action, False
    think = thinks[0]
    before, after = text[: think.start], text[think.end:]
    valid = (len(_OPEN_TAG.findall(before)) == 0 and len(_OPEN_TAG.findall(after)) == 2
             and len(tag_blocks(after, ("search", "answer"))) == 1 and think.end <= last.start)
    return action, valid


def parse_search_action_reference(text: str) -> tuple[str, bool]:
    """Project a raw answer the way the reference Search projection does ("reference" mode).

    The text is first cut after the first literal ``</search>`` (else after the first ``</answer>``);
    the action is then its first ``<search>...</search>`` block, else its first
    ``<answer>...</answer>`` block (tags in any case), content stripped but case kept, re-wrapped in
    lower-case tags; ``""`` when there is neither. No reasoning block is required. The answer is
    invalid when no block was found, when the whole text opens both a search and an answer tag, or
    opens either of them more than once; the action is played all the same.
    """
    if "</search>" in text:
        trimmed = text.split("</search>", 1)[0] + "</search>"
    elif "</answer>" in text:
        trimmed = text.split("</answer>", 1)[0] + "</answer>"
    else:
        trimmed = text
    searches_found = tag_blocks(trimmed, ("search",))
    if searches_found:
        action = f"<search>{searches_found[0].content.strip()}</search>"
    else:
        answers_found = tag_blocks(trimmed, ("answer",))
        action = f"<answer>{answers_found[0].content.strip()}</answer>" if answers_found else ""
    searches, answers = len(_SEARCH_OPEN.findall(text)), len(_ANSWER_OPEN.findall(text))
    valid = bool(action) and not (searches and answers) and searches <= 1 and answers <= 1
    return action, valid


class SearchQAEnvironment(AgentEnvironment):
    """Search-R1-style QA over a retriever.

    The retriever is, in order of precedence: ``retriever`` (any object with
    ``search(queries, topk)``), a Search-R1 HTTP server at ``retriever_url``, or the process-wide
    in-process BM25 index of ``corpus`` (``"generated"`` with ``corpus_seed``, ``"wiki"`` or a JSONL
    path). Task rows for the generated corpus come from
    :func:`~environments.search_qa.loaders.search_qa_tasks` (world 0, the default) or
    :func:`~environments.search_qa.loaders.build_generated_dataset` (pass ``corpus_seed`` = its world).
    ``corpus_kwargs`` are the generated world's sizes (see
    :func:`~environments.search_qa.generated.generate_corpus`); the task builder takes the same
    ``corpus``/``corpus_seed``/``corpus_kwargs``, so the environment's kwargs can be handed to both.
    ``action_parsing`` is "strict" (default) or "reference" (see the module docstring).

    ``info`` of every step has ``em`` (1.0/0.0 on an answer, 0.0 otherwise) and ``action_type``
    (search, answer or invalid); searches add ``query``, ``num_passages`` and ``passage_ids``. The
    task type is the row's ``data_source`` so that the trainer logs success (= EM) per dataset. A retriever that still
    fails after its retries raises: the trainer ends that episode and counts an environment error.
    """

    default_history_length = 4
    default_max_turns = 4

    def __init__(self, retriever: Retriever | None = None, retriever_url: str | None = None,
                 corpus: str = "generated", corpus_seed: int = 0, topk: int = 3, max_turns: int | None = 4,
                 request_timeout: float = 10.0, max_retries: int = 3,
                 corpus_kwargs: Mapping[str, Any] | None = None, action_parsing: str = "strict") -> None:
        super().__init__(action_parsing)
        if corpus_kwargs and corpus != "generated":
            raise ValueError(f"corpus_kwargs: only the generated corpus takes sizes, not corpus {corpus!r}")
        if topk < 1:
            raise ValueError("topk must be >= 1")
        if max_turns is not None and max_turns < 1:
            raise ValueError("max_turns must be >= 1 or None")
        if retriever is None and retriever_url:
            from .client import shared_client

            retriever = shared_client(retriever_url, timeout=request_timeout, max_retries=max_retries)
        self._retriever = retriever
        self._corpus, self._corpus_seed = corpus, corpus_seed
        self._corpus_kwargs = dict(corpus_kwargs or {})
        self.topk = topk
        self.max_turns = max_turns
        self.question = ""
        self.golden_answers: list[str] = []
        self.turns = 0
        self.done = False
        self._task: Mapping[str, Any] = {}
        self._trace: list[tuple[str, str]] = []  # (search action, information) of this episode

    @property
    def retriever(self) -> Retriever:
        """Resolved on first use, so that building the environment (the trainer probes one) is cheap."""
        if self._retriever is None:
            self._retriever = shared_bm25(self._corpus, self._corpus_seed, self._corpus_kwargs)
        return self._retriever

    def reset(self, task: Mapping[str, Any]) -> str:
        self.question, self.golden_answers, self.task_type = task_fields(task)
        self.task_description = self.question
        self.admissible_actions = ADMISSIBLE_ACTIONS
        self.turns = 0
        self.done = False
        self._task = task
        self._trace = []
        return FIRST_OBSERVATION

    @property
    def response_format(self) -> str:
        return ("Reason inside <think> </think>, then either search with <search> query </search> or answer with "
                "<answer> answer </answer>, exactly one of them.")

    @property
    def response_example(self) -> str:
        """Its actions carry their own ``<search>``/``<answer>`` tags, so only the reasoning is added."""
        return "<think>...</think>{action}"

    def parse_action(self, text: str) -> tuple[str | None, bool]:
        if self.action_parsing == "reference":
            return parse_search_action_reference(text)
        return parse_search_action(text)

    def invalid_action_feedback(self) -> str:
        return ("Invalid response format. Reason inside <think> </think>, then either search with "
                "<search> query </search> or answer with <answer> answer </answer>, only one of them.")

    def execute(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if action == "" and self.action_parsing == "reference":
            # The reference plays an answer with no block as an empty action: no search, no answer,
            # an empty observation.
            return "", 0.0, self._out_of_turns(), False, {"em": 0.0, "action_type": "invalid"}
        block = _BLOCK.fullmatch(action)
        if block is None:  # execute() is only reached with a parse_search_action* output
            raise ValueError(f"not a search/answer action: {action!r}")
        kind, content = block.group(1).lower(), block.group(2)
        if kind == "answer":
            em = exact_match(content, self.golden_answers)
            self.done = True
            return f"Your final answer: {content}", em, True, em == 1.0, {"em": em, "action_type": "answer"}
        hits = self.retriever.search([content], self.topk)[0]
        info = {"em": 0.0, "action_type": "search", "query": content, "num_passages": len(hits),
                "passage_ids": [h.passage.id for h in hits]}
        observation = format_information(hits)
        self._trace.append((action, observation))
        return observation, 0.0, self._out_of_turns(), False, info

    def _out_of_turns(self) -> bool:
        return self.max_turns is not None and self.turns >= self.max_turns

    def step(self, text: str) -> StepResult:
        """Count every answer, ill-formed ones included, towards ``max_turns``."""
        self.turns += 1
        result = super().step(text)
        if not result.action_valid and self._out_of_turns():
            result.done = True
        if not self.executes(result.action, result.action_valid):
            result.info = {"em": 0.0, "action_type": "invalid"}
        self.done = result.done
        return result

    def expert_response(self) -> str | None:
        """The oracle's next full response (reasoning + action) on a generated task, else ``None``.

        Use this rather than wrapping :meth:`expert_action` in ``<action>`` tags: the search format
        has no ``<action>`` tag, and a warm start should teach the exact format the reward checks.
        """
        if self.done or not is_generated_task(self._task):
            return None
        return oracle_response(self._task, self._trace)

    def step_label(self, expert_action: str | None, action: str | None, valid: bool) -> bool | None:
        """Search QA's rule: a query's wording is free (many retrieve the passage), so a well-formed
        search is good when the oracle would search too; an answer is good iff it is an exact match
        of a golden answer (whatever the oracle would do: a right answer ends the task early); an
        ill-formed response, or a search where the oracle already answers, is bad."""
        if expert_action is None:
            return None
        if not valid or action is None:
            return False
        if action.startswith("<answer>"):
            return exact_match(action[len("<answer>") : -len("</answer>")], self.golden_answers) == 1.0
        return expert_action.startswith("<search>")

    def expert_action(self) -> str | None:
        """The oracle's next action (``<search>q</search>`` or ``<answer>a</answer>``), if it knows one."""
        response = self.expert_response()
        return None if response is None else parse_search_action(response)[0]

    def render_prompt(self, view: PromptView, history_length: int) -> str:
        kept, first = window(view.history, history_length)
        lines = ["You are an expert agent answering a question step by step with the help of a search engine.",
                 f"Your question: {view.task}"]
        if kept:
            lines.append(
                f"Prior to this step, you have already taken {view.step} step(s). Below are the most recent "
                f"{len(kept)} observations and the corresponding actions you took:\n{render_history(kept, first)}"
            )
        lines.append(f"You are now at step {view.step + 1} and your current information is: {view.observation}")
        lines.append("Your admissible actions are: [" + ", ".join(f"'{a}'" for a in view.admissible_actions) + "].")
        lines.append("")
        lines.append(INSTRUCTION_LINE)
        lines.append(SEARCH_FORMAT_INSTRUCTIONS)
        return "\n".join(lines)
