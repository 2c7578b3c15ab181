"""Skill extractor behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, ...).

Requests run concurrently (bounded by ``max_concurrency``) on an event loop owned by the
calling thread, each with its own timeout. Transient failures (429, 408, 409, 5xx, timeouts,
connection errors) are retried by the OpenAI client itself (``max_retries``: exponential backoff
with jitter, honouring ``Retry-After``), so there is no second retry loop here. Structured output
(a JSON schema) is asked for first and dropped for good when the server rejects it. The API key
is read once, kept private, and never appears in a repr, a log line, an audit record or an error
message.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from .llm import Completion, LLMSkillExtractor
from .prompt import OUTPUT_SCHEMA

#: Header the OpenAI client puts on every attempt: how many retries preceded it.
_RETRY_COUNT_HEADER = "x-stainless-retry-count"


class Secret:
    """A credential that prints as '***' (repr, str, f-strings, vars() dumps); `.value` reveals it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a Secret is not serialisable")


def _retries_of(request: Any) -> int:
    """Retries the client made before ``request`` (its last attempt), from the header it sets."""
    headers = getattr(request, "headers", None) or {}
    try:
        return int(headers.get(_RETRY_COUNT_HEADER, 0))
    except (TypeError, ValueError):
        return 0


class OpenAISkillExtractor(LLMSkillExtractor):
    """LLM skill extractor over the OpenAI chat-completions protocol (registered as 'openai').

    Args:
        base_url / model / api_key: default to ``OPENAI_BASE_URL`` / ``OPENAI_MODEL`` /
            ``OPENAI_API_KEY``. A local server without auth may use any key.
        max_concurrency: requests in flight at once.
        timeout: seconds per attempt.
        max_retries: retries of a request after a transient failure, made by the OpenAI client
            (exponential backoff with jitter; a server's ``Retry-After`` takes precedence).
        structured_output: ``"auto"`` (ask for the JSON schema, fall back to prompting if the server
            refuses), ``"always"`` or ``"never"``.
        max_completion_tokens / temperature: sampling settings of the extractor model.
        Other arguments: see `LLMSkillExtractor`.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 32, timeout: float = 120.0, max_retries: int = 4,
                 structured_output: str = "auto", max_completion_tokens: int = 4096, temperature: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.model = model or os.environ.get("OPENAI_MODEL")
        if not self.model:
            raise ValueError("OpenAISkillExtractor.model: name the extractor model (argument or OPENAI_MODEL)")
        self._api_key = Secret(api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY")
        if structured_output not in ("auto", "always", "never"):
            raise ValueError(f"OpenAISkillExtractor.structured_output: must be 'auto', 'always' or 'never', "
                             f"got {structured_output!r}")
        for name, value in (("max_concurrency", max_concurrency), ("timeout", timeout),
                            ("max_completion_tokens", max_completion_tokens)):
            if not value > 0:
                raise ValueError(f"OpenAISkillExtractor.{name}: must be > 0, got {value!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"OpenAISkillExtractor.max_retries: must be an integer >= 0, got {max_retries!r}")
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.structured_output = structured_output
        self._use_schema = structured_output != "never"
        self._token_param = "max_completion_tokens"
        self.max_completion_tokens = max_completion_tokens
        self.temperature = temperature

    def __repr__(self) -> str:
        return f"OpenAISkillExtractor(base_url={self.base_url!r}, model={self.model!r}, api_key='***')"

    @property
    def cache_salt(self) -> str:
        return f"{super().cache_salt}:{self.base_url}:{self.model}:{self.temperature}"

    def _scrub(self, text: str) -> str:
        key = self._api_key.value
        return text.replace(key, "***") if key and key != "EMPTY" else text

    def _complete_batch(self, conversations: list[list[dict]]) -> list[Completion]:
        return asyncio.run(self._complete_all(conversations))

    async def _complete_all(self, conversations: list[list[dict]]) -> list[Completion]:
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key.value, timeout=self.timeout,
                                    max_retries=self.max_retries)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        try:
            async def one(messages: list[dict]) -> Completion:
                async with semaphore:
                    return await self._complete_one(client, messages)

            return list(await asyncio.gather(*(one(m) for m in conversations)))
        finally:
            await client.close()

    def _request_kwargs(self, messages: list[dict]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature,
                                  self._token_param: self.max_completion_tokens}
        if self._use_schema:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "opid_skills", "schema": OUTPUT_SCHEMA}}
        return kwargs

    async def _complete_one(self, client: Any, messages: list[dict]) -> Completion:
        import openai

        start = time.perf_counter()
        retries = 0
        while True:
            try:
                raw = await client.chat.completions.with_raw_response.create(**self._request_kwargs(messages))
            except openai.BadRequestError as exc:
                retries += _retries_of(exc.request)
                # A server without structured output or without `max_completion_tokens`: drop the
                # feature for good and send the request again (a downgrade, not a retry).
                if self._use_schema and self.structured_output == "auto":
                    self._use_schema = False
                    continue
                if self._token_param == "max_completion_tokens":
                    self._token_param = "max_tokens"
                    continue
                return Completion(error=self._scrub(f"bad request: {exc}"), latency_s=time.perf_counter() - start,
                                  retries=retries)
            except openai.APIError as exc:  # what is left after the client's own retries
                retries += _retries_of(getattr(exc, "request", None))
                status = getattr(exc, "status_code", None)
                kind = f"HTTP {status}" if status else type(exc).__name__
                return Completion(error=self._scrub(f"{kind} after {retries} retries: {exc}"),
                                  latency_s=time.perf_counter() - start, retries=retries)
            retries += getattr(raw, "retries_taken", None) or _retries_of(getattr(raw, "http_request", None))
            response = raw.parse()
            choice = response.choices[0] if response.choices else None
            usage = getattr(response, "usage", None)
            return Completion(
                text=(choice.message.content or "") if choice else "",
                latency_s=time.perf_counter() - start,
                prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                retries=retries,
            )
