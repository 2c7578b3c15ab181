"""Fitting a step's prompt into `max_prompt_length` tokens, so that no prompt over budget ever
reaches a forward pass (a 1 MB observation would otherwise ask for hundreds of GB).

In order, until the prompt fits:

1. drop history steps, oldest first, down to none (the usual case);
2. cut the current observation middle-out, keeping its beginning and end around a marker that
   says how much was cut (the task line and the instructions are never touched);
3. as a last resort (the template without any observation is still too long: a huge task or
   action list), cut the token ids middle-out, keeping the chat template's head and the generation
   prompt at the end.

Every prompt is tokenized in batches per round, so a batch of episodes costs a few tokenizer
calls whatever the number of over-long prompts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from environments.base import PromptView

Tokenize = Callable[[list[str]], list[list[int]]]
#: (view, history window) -> the prompt text of that view.
Render = Callable[[PromptView, int], str]

CUT_MARKER = "\n[... {count} characters cut to fit the prompt budget ...]\n"
#: Rounds of observation cutting before the token-level fallback.
MAX_CUT_ROUNDS = 8


def cut_middle(text: str, keep: int) -> str:
    """``text`` with all but ``keep`` characters cut from its middle, the cut marked."""
    if keep >= len(text):
        return text
    keep = max(keep, 0)
    head = keep // 2
    return text[:head] + CUT_MARKER.format(count=len(text) - keep) + text[len(text) - (keep - head):]


@dataclass
class FittedPrompts:
    """Prompts rendered to fit a token budget."""

    texts: list[str]
    token_ids: list[list[int]]
    #: The history window each prompt was rendered with.
    windows: list[int]
    #: The views rendered (their observation possibly cut), to re-render the same prompt later.
    views: list[PromptView]
    #: Per prompt: None, "observation" (observation cut) or "tokens" (token ids cut).
    cuts: list[str | None]

    @property
    def overflow(self) -> int:
        """Prompts that did not fit even without history."""
        return sum(cut is not None for cut in self.cuts)


def fit_prompts(views: Sequence[PromptView], renderers: Sequence[Render], history_length: int, max_tokens: int,
                tokenize: Tokenize) -> FittedPrompts:
    """Render ``views[i]`` with ``renderers[i]`` so that every prompt fits ``max_tokens`` tokens."""
    fitted = FittedPrompts([], [], [history_length] * len(views), list(views), [None] * len(views))
    fitted.texts = [render(view, history_length) for view, render in zip(views, renderers)]
    fitted.token_ids = tokenize(fitted.texts)
    pending = [i for i, ids in enumerate(fitted.token_ids) if len(ids) > max_tokens]
    k = history_length
    while pending and k > 0:
        k -= 1
        _rerender(fitted, pending, renderers, tokenize, window=k)
        pending = [i for i in pending if len(fitted.token_ids[i]) > max_tokens]
    if pending:
        pending = _cut_observations(fitted, pending, renderers, max_tokens, tokenize)
    for i in pending:  # the last resort: the template alone does not fit
        ids = fitted.token_ids[i]
        head = max_tokens // 2
        fitted.token_ids[i] = ids[:head] + ids[len(ids) - (max_tokens - head):]
        fitted.cuts[i] = "tokens"
    return fitted


def _rerender(fitted: FittedPrompts, rows: Sequence[int], renderers: Sequence[Render], tokenize: Tokenize,
              window: int) -> None:
    texts = [renderers[i](fitted.views[i], window) for i in rows]
    for i, text, ids in zip(rows, texts, tokenize(texts)):
        fitted.texts[i], fitted.token_ids[i], fitted.windows[i] = text, ids, window


def _cut_observations(fitted: FittedPrompts, rows: list[int], renderers: Sequence[Render], max_tokens: int,
                      tokenize: Tokenize) -> list[int]:
    """Cut each row's observation middle-out until its prompt fits; the rows that still do not fit."""
    originals = {i: fitted.views[i].observation for i in rows}
    keep = {i: len(originals[i]) for i in rows}
    cut_rows = list(rows)
    for _ in range(MAX_CUT_ROUNDS):
        if not rows:
            break
        for i in rows:
            excess = len(fitted.token_ids[i]) - max_tokens
            chars_per_token = len(fitted.texts[i]) / max(len(fitted.token_ids[i]), 1)
            keep[i] = max(keep[i] - math.ceil(excess * chars_per_token) - len(CUT_MARKER) - 8, 0)
            fitted.views[i] = dataclasses.replace(fitted.views[i], observation=cut_middle(originals[i], keep[i]))
            fitted.cuts[i] = "observation"
        _rerender(fitted, rows, renderers, tokenize, window=0)
        rows = [i for i in rows if len(fitted.token_ids[i]) > max_tokens and keep[i] > 0]
    return [i for i in cut_rows if len(fitted.token_ids[i]) > max_tokens]
