"""Skill extractor behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, ...).

Requests run concurrently (bounded by ``max_concurrency``) on an event loop owned by the
calling thread, each with its own timeout. Transient failures (429, 408, 409, 5xx, timeouts,
connection errors) are retried by the OpenAI client itself (``max_retries``: exponential backoff
with jitter, honouring ``Retry-After``), so there is no second retry loop here. Structured output
(a JSON schema) is asked for first and dropped for good when the server rejects it. The API key
is read once, kept private, and never appears in a repr, a log line, an audit record or an error
message.

Every failure stays with its trajectory: a request that times out, a refused connection, an
HTTP error, a 200 whose body is not a chat completion (an HTML page from a proxy, broken or
absurdly nested JSON) and even an unexpected exception in the client each become that
trajectory's `Completion` error, typed (`ERROR_TYPES`) and with a bounded excerpt of the body.
When a whole batch fails for want of a server (unreachable, timeouts, 5xx), the next batches make
one attempt per request, without the client's retries, until an answer arrives again: a run
whose analysis endpoint is down loses one timeout per batch instead of the full retry schedule,
and picks up again by itself when the endpoint comes back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from typing import Any

from opid_trl.skills.extractors.llm import MAX_EXCERPT_CHARS, Completion, LLMSkillExtractor, redact
from opid_trl.skills.extractors.prompt import OUTPUT_SCHEMA
from opid_trl.untrusted_text import clip_text

logger = logging.getLogger(__name__)

#: Error types that say "no server to talk to": a batch made only of these puts the extractor in
#: fail-fast mode (no client retries) until a request succeeds.
OUTAGE_ERRORS = frozenset({"timeout", "unreachable", "server_error"})

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


def _error_type(exc: Exception) -> str:
    """The `ERROR_TYPES` entry of an exception the OpenAI client raised."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "unreachable"
    if isinstance(exc, openai.APIResponseValidationError):
        return "bad_response"
    status = getattr(exc, "status_code", None)
    if status == 429:
        return "rate_limited"
    if isinstance(status, int) and status >= 500:
        return "server_error"
    return "http_error" if status else "bad_response"


def _body_of(raw: Any) -> str:
    """The text of a raw HTTP response, or '' when even that cannot be read."""
    try:
        return raw.http_response.text
    except Exception:  # noqa: BLE001 - only for the audit record
        return ""


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class _NotAChatCompletion(ValueError):
    """A 200 response whose body does not have the shape of a chat completion."""


def _answer_text(response: Any) -> str:
    """The first choice's message content of a parsed response; raises `_NotAChatCompletion`.

    The client does not validate bodies (a non-JSON body even comes back as a plain string), so
    the shape is checked here rather than trusted. No choices, or a null content (a refusal), is
    an empty answer: the model's failure, re-asked like any unparseable answer.
    """
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise _NotAChatCompletion(f"expected a chat completion, got {type(response).__name__} without 'choices'")
    if not choices:
        return ""
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if content is None:
        return ""
    if not isinstance(content, str):
        raise _NotAChatCompletion(f"choices[0].message.content is a {type(content).__name__}, not text")
    return content


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
            ``OPENAI_API_KEY``. A local server without auth needs only ``base_url``. With neither a
            base URL nor a key the constructor refuses: the client would silently send every
            trajectory to the public OpenAI endpoint, where it fails for want of a key. Naming that
            endpoint (``base_url="https://api.openai.com/v1"``) or giving a key selects it.
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
        key = api_key or os.environ.get("OPENAI_API_KEY") or None
        self._api_key = Secret(key or "EMPTY")
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
        # Checked last, so that a wrong value above is reported first.
        if self.base_url is None and key is None:
            raise ValueError(
                "OpenAISkillExtractor: no endpoint configured. Set base_url (or OPENAI_BASE_URL) to your "
                "server, e.g. http://localhost:8000/v1, or api_key (or OPENAI_API_KEY) for the public OpenAI "
                "endpoint; without either every request would go to https://api.openai.com/v1 with no key")
        #: Set after a batch in which every request failed for want of a server: later batches then
        #: try each request once (no client retries) until one succeeds.
        self._outage = False

    def __repr__(self) -> str:
        return f"OpenAISkillExtractor(base_url={self.base_url!r}, model={self.model!r}, api_key='***')"

    @property
    def cache_salt(self) -> str:
        return f"{super().cache_salt}:{self.base_url}:{self.model}:{self.temperature}"

    def _scrub(self, text: str) -> str:
        key = self._api_key.value
        return redact(text.replace(key, "***") if key and key != "EMPTY" else text)

    def _clean(self, text: str, limit: int = MAX_EXCERPT_CHARS) -> str:
        """``text`` scrubbed of credentials, then cut (in that order, so no cut hides part of a key)."""
        return clip_text(self._scrub(text), limit)

    def _complete_batch(self, conversations: list[list[dict]]) -> list[Completion]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            return asyncio.run(self._complete_all(conversations))
        # Called from inside an event loop (a notebook cell): asyncio.run refuses to nest, so the
        # requests get a loop of their own in a helper thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self._complete_all(conversations)).result()

    async def _complete_all(self, conversations: list[list[dict]]) -> list[Completion]:
        import openai

        max_retries = 0 if self._outage else self.max_retries
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key.value, timeout=self.timeout,
                                    max_retries=max_retries)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        try:
            async def one(messages: list[dict]) -> Completion:
                start = time.perf_counter()
                try:
                    async with semaphore:
                        return await self._complete_one(client, messages)
                except Exception as exc:  # noqa: BLE001 - one request's surprise must not sink the batch
                    return Completion(error=self._clean(f"internal: {type(exc).__name__}: {exc}"),
                                      error_type="internal", latency_s=time.perf_counter() - start)

            completions = list(await asyncio.gather(*(one(m) for m in conversations)))
        finally:
            await client.close()
        self._note_outage(completions)
        return completions

    def _note_outage(self, completions: list[Completion]) -> None:
        """Enter fail-fast mode after a batch that found no server, leave it after any answer."""
        down = bool(completions) and all(c.error_type in OUTAGE_ERRORS for c in completions)
        if down and not self._outage:
            logger.warning("skill extractor: every request of the batch failed (%s); the endpoint looks down, so "
                           "requests are tried once, without retries, until one succeeds",
                           completions[0].error_type)
        elif self._outage and not down:
            logger.warning("skill extractor: the endpoint answers again; retries are back on")
        self._outage = down

    def _downgrade(self, parameter: str | None) -> bool:
        """Stop sending ``parameter`` (named unsupported by the server), once and loudly; whether
        the request should be sent again without it."""
        if parameter == "response_format" and self._use_schema and self.structured_output == "auto":
            self._use_schema = False
            logger.warning("skill extractor: the server does not support structured output (response_format); "
                           "asking for JSON by prompting from now on")
            return True
        if parameter == "max_completion_tokens" and self._token_param == "max_completion_tokens":
            self._token_param = "max_tokens"
            logger.warning("skill extractor: the server does not support max_completion_tokens; sending max_tokens "
                           "from now on")
            return True
        return False

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
                # A server that names structured output or `max_completion_tokens` as unsupported:
                # drop that feature for good and send the request again (a downgrade, not a retry).
                # Any other 400 (an over-long trajectory, say) fails this request only: downgrading
                # on it would switch reasoning models, which refuse `max_tokens`, to a parameter
                # that fails every later request.
                if self._downgrade(unsupported_parameter(exc)):
                    continue
                return Completion(error=self._clean(f"bad request: {exc}"),
                                  latency_s=time.perf_counter() - start, retries=retries, error_type="http_error")
            except openai.APIError as exc:  # what is left after the client's own retries
                retries += _retries_of(getattr(exc, "request", None))
                status = getattr(exc, "status_code", None)
                kind = f"HTTP {status}" if status else type(exc).__name__
                body = getattr(exc, "body", None)
                return Completion(error=self._clean(f"{kind} after {retries} retries: {exc}"),
                                  latency_s=time.perf_counter() - start, retries=retries, error_type=_error_type(exc),
                                  response_excerpt=self._clean(str(body)) if body is not None else None)
            retries += _as_int(getattr(raw, "retries_taken", None)) or _retries_of(getattr(raw, "http_request", None))
            try:
                response = raw.parse()
                text = _answer_text(response)
            except Exception as exc:  # noqa: BLE001 - HTML, broken or absurdly nested JSON in a 200
                content_type = raw.headers.get("content-type", "unknown") if raw.headers is not None else "unknown"
                return Completion(
                    error=self._clean(f"bad response: HTTP {raw.status_code} ({content_type}) is not a chat "
                                      f"completion: {type(exc).__name__}: {self._clean(str(exc), 200)}"),
                    error_type="bad_response", response_excerpt=self._clean(_body_of(raw)),
                    latency_s=time.perf_counter() - start, retries=retries)
            usage = getattr(response, "usage", None)
            return Completion(
                text=text,
                latency_s=time.perf_counter() - start,
                prompt_tokens=_as_int(getattr(usage, "prompt_tokens", 0)),
                completion_tokens=_as_int(getattr(usage, "completion_tokens", 0)),
                retries=retries,
            )


def unsupported_parameter(exc: Exception) -> str | None:
    """Which optional request parameter a 400 says the server does not support: ``"response_format"``
    (structured output: also named ``json_schema`` or guided decoding by some servers) or
    ``"max_completion_tokens"``; ``None`` for any other bad request."""
    text = f"{exc} {getattr(exc, 'body', '')}".lower()
    if "max_completion_tokens" in text:
        return "max_completion_tokens"
    if any(name in text for name in ("response_format", "json_schema", "structured output", "guided")):
        return "response_format"
    return None

