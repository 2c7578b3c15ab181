"""Analyzer behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, ...).

Requests run concurrently (bounded by ``max_concurrency``) on an event loop owned by the
calling thread, each with its own timeout and retries: exponential backoff with jitter,
honouring ``Retry-After`` on 429/503. Structured output (a JSON schema) is asked for first and
dropped for good when the server rejects it. The API key is read once, kept private, and
never appears in a repr, a log line, an audit record or an error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from typing import Any

from .base import Completion, LLMAnalyzer
from .prompt import OUTPUT_SCHEMA

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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


def _retry_after_seconds(response: Any) -> float | None:
    """Delay asked for by the server (``retry-after-ms`` / ``retry-after``), if any."""
    headers = getattr(response, "headers", None) or {}
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


class OpenAIAnalyzer(LLMAnalyzer):
    """LLM analyzer over the OpenAI chat-completions protocol.

    Args:
        base_url / model / api_key: default to ``OPENAI_BASE_URL`` / ``OPENAI_MODEL`` /
            ``OPENAI_API_KEY``. A local server without auth may use any key.
        max_concurrency: requests in flight at once.
        timeout: seconds per request.
        max_retries: retries of a request after a retryable failure (429, 5xx, timeout, connection).
        backoff_base / backoff_max: exponential backoff ``base * 2**attempt`` seconds, capped, with
            full jitter in [0.5, 1] of the delay; a server's ``Retry-After`` takes precedence.
        structured_output: ``"auto"`` (ask for the JSON schema, fall back to prompting if the server
            refuses), ``"always"`` or ``"never"``.
        max_completion_tokens / temperature: sampling settings of the analyzer.
        Other arguments: see `LLMAnalyzer`.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 32, timeout: float = 120.0, max_retries: int = 4,
                 backoff_base: float = 1.0, backoff_max: float = 30.0, structured_output: str = "auto",
                 max_completion_tokens: int = 4096, temperature: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.model = model or os.environ.get("OPENAI_MODEL")
        if not self.model:
            raise ValueError("OpenAIAnalyzer.model: name the analyzer model (argument or OPENAI_MODEL)")
        self._api_key = Secret(api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY")
        if structured_output not in ("auto", "always", "never"):
            raise ValueError(f"OpenAIAnalyzer.structured_output: must be 'auto', 'always' or 'never', "
                             f"got {structured_output!r}")
        for name, value in (("max_concurrency", max_concurrency), ("timeout", timeout),
                            ("max_completion_tokens", max_completion_tokens)):
            if not value > 0:
                raise ValueError(f"OpenAIAnalyzer.{name}: must be > 0, got {value!r}")
        if max_retries < 0:
            raise ValueError(f"OpenAIAnalyzer.max_retries: must be >= 0, got {max_retries!r}")
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.structured_output = structured_output
        self._use_schema = structured_output != "never"
        self._token_param = "max_completion_tokens"
        self.max_completion_tokens = max_completion_tokens
        self.temperature = temperature

    def __repr__(self) -> str:
        return f"OpenAIAnalyzer(base_url={self.base_url!r}, model={self.model!r}, api_key='***')"

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
                                    max_retries=0)
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
                response = await client.chat.completions.create(**self._request_kwargs(messages))
            except openai.BadRequestError as exc:
                # A server without structured output or without `max_completion_tokens`: drop the
                # feature for good and send the request again (not counted as a retry).
                if self._use_schema and self.structured_output == "auto":
                    self._use_schema = False
                    continue
                if self._token_param == "max_completion_tokens":
                    self._token_param = "max_tokens"
                    continue
                return Completion(error=self._scrub(f"bad request: {exc}"), latency_s=time.perf_counter() - start,
                                  retries=retries)
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                retryable = status is None or status in RETRYABLE_STATUS
                if not retryable or retries >= self.max_retries:
                    kind = f"HTTP {status}" if status else type(exc).__name__
                    return Completion(error=self._scrub(f"{kind} after {retries} retries: {exc}"),
                                      latency_s=time.perf_counter() - start, retries=retries)
                delay = _retry_after_seconds(getattr(exc, "response", None))
                if delay is None:
                    delay = min(self.backoff_max, self.backoff_base * 2**retries) * random.uniform(0.5, 1.0)
                retries += 1
                await asyncio.sleep(min(delay, self.backoff_max))
                continue
            choice = response.choices[0] if response.choices else None
            usage = getattr(response, "usage", None)
            return Completion(
                text=(choice.message.content or "") if choice else "",
                latency_s=time.perf_counter() - start,
                prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                retries=retries,
            )
