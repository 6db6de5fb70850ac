"""The `openai` backend: the `openai` package's AsyncOpenAI client against any OpenAI-compatible endpoint.

It keeps a concurrency limit, requests- and tokens-per-minute buckets and a timeout, and retries on
its own (exponential backoff with jitter, honouring Retry-After) on 429, 5xx, timeouts and
connection errors; the client's built-in retries are off so the attempt count is ours. A response
that cannot be used (malformed JSON, no choices, empty text, cut off by max_tokens) is recorded as
"unusable" with its reason, and retried when `teacher.retry_unusable` is set; it is never returned
as "ok". Token counts come from the response's `usage`, else from `estimate_tokens`; the cost sums
every attempt that got a response (an unusable response is billed too). The API key is read from
the environment when the client is created.

Connection failures feed the backend's circuit breaker (health.py): `teacher.max_consecutive_failures`
in a row, or a request out of retries on them while GET /models gets no answer either, open it, and
from then on every request ends at once as "unreachable", which the pool turns into one
TeacherUnavailable for the phase.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from tutorloop.actors.teacher.calls import PROBLEM_TEXT, TeacherRequest, call_record, estimate_tokens, redact
from tutorloop.actors.teacher.health import (
    UNREACHABLE,
    CircuitBreaker,
    client_options,
    failure_cause,
)
from tutorloop.actors.teacher.limits import TokenBucket, retry_after_seconds
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection

log = logging.getLogger("tutorloop.teacher")

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def parse_completion(api: str, body: str) -> tuple[str | None, str | None, dict[str, Any], str | None]:
    """(text, finish_reason, usage, problem) of a response body; problem is a key of PROBLEM_TEXT or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, None, {}, "malformed_json"
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return None, None, {}, "malformed_json"
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    if not data["choices"]:
        return None, None, usage, "empty_choices"
    choice = data["choices"][0]
    if not isinstance(choice, dict):
        return None, None, usage, "malformed_json"
    if api == "chat":
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if text is not None and not isinstance(text, str):
        return None, None, usage, "malformed_json"
    finish = choice.get("finish_reason")
    if finish == "length":
        return text, finish, usage, "length"
    if not text or not text.strip():
        return text, finish, usage, "empty_text"
    return text, finish, usage, None


@dataclass
class _Attempt:
    """What one attempt gave: status "ok", "failed" or "unusable", its tokens, and why it failed."""

    status: str
    retryable: bool = False
    error: str | None = None
    text: str | None = None
    finish: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    retry_after: float | None = None
    cause: str | None = None  # a connection failure in a few words (failure_cause); None for any answer


class OpenAIBackend:
    """Any OpenAI-compatible endpoint through AsyncOpenAI, with limits and retries of its own."""

    def __init__(self, endpoint: TeacherEndpoint, cfg: TeacherSection, share: int = 1) -> None:
        self.endpoint = endpoint
        self.cfg = cfg
        # A pool of `share` actors splits the limits so that together they keep them.
        self.concurrency = max(1, math.ceil(cfg.concurrency / share))
        self.rpm = TokenBucket(cfg.requests_per_minute / share) if cfg.requests_per_minute else None
        self.tpm = TokenBucket(cfg.tokens_per_minute / share) if cfg.tokens_per_minute else None
        self.breaker = CircuitBreaker(endpoint, cfg.max_consecutive_failures)
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._secret = ""

    def _ensure_client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI

            self._secret = os.environ.get(self.endpoint.api_key_env) or ""
            self._client = AsyncOpenAI(**client_options(self.endpoint, self.cfg.timeout_s))
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._client

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = self.cfg.retry_backoff_max_s
        if retry_after is not None:
            base = min(retry_after, cap)
            return base + random.uniform(0, 0.1 * base)  # jitter only ever adds to what the server asked
        backoff = min(cap, self.cfg.retry_backoff_s * 2 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)

    async def _throttle(self, request: TeacherRequest) -> None:
        if self.rpm:
            await self.rpm.acquire(1)
        if self.tpm:
            await self.tpm.acquire(request.tokens_in_estimate() + request.max_tokens)

    async def _send(self, client: Any, request: TeacherRequest) -> Any:
        params = dict(request.params)
        if request.api == "chat":
            return await client.chat.completions.with_raw_response.create(
                model=request.model, messages=request.messages, **params
            )
        return await client.completions.with_raw_response.create(model=request.model, prompt=request.prompt, **params)

    async def _attempt(self, client: Any, request: TeacherRequest) -> _Attempt:
        import openai

        async with self._semaphore:
            if self.breaker.open:  # it opened while this request waited for its turn
                return _Attempt(UNREACHABLE)
            try:
                raw = await self._send(client, request)
            except openai.APIStatusError as exc:
                self.breaker.answered()
                return _Attempt(
                    "failed",
                    exc.status_code in RETRYABLE_STATUS,
                    f"HTTP {exc.status_code}: {exc.message}",
                    retry_after=retry_after_seconds(exc.response.headers),
                )
            except openai.APIConnectionError as exc:  # timeouts included
                short = failure_cause(exc, self.cfg.timeout_s)
                self.breaker.failed(short)
                if isinstance(exc, openai.APITimeoutError):
                    return _Attempt(
                        "failed", True, f"timeout: no response within {self.cfg.timeout_s:g} s", cause=short
                    )
                cause = exc.__cause__ or exc.__context__
                return _Attempt(
                    "failed",
                    True,
                    f"connection error: {type(cause).__name__ if cause else 'unknown'}: {cause or exc}",
                    cause=short,
                )
        self.breaker.answered()
        text, finish, usage, problem = parse_completion(request.api, raw.http_response.text)
        tokens_in = int(usage.get("prompt_tokens") or request.tokens_in_estimate())
        tokens_out = int(usage.get("completion_tokens") or estimate_tokens(text or ""))
        if problem is None:
            return _Attempt("ok", text=text, finish=finish, tokens_in=tokens_in, tokens_out=tokens_out)
        return _Attempt(
            "unusable",
            self.cfg.retry_unusable,
            f"{problem}: {PROBLEM_TEXT[problem]}",
            text,
            finish,
            tokens_in,
            tokens_out,
        )

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        client = self._ensure_client()
        started = time.monotonic()
        tokens_in = tokens_out = attempts = 0
        cost = 0.0

        def record(status: str, attempt: _Attempt, error: str | None) -> dict[str, Any]:
            return call_record(
                request,
                status=status,
                response=attempt.text,
                finish_reason=attempt.finish,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                cost_usd=cost,
                latency_s=time.monotonic() - started,
                attempts=attempts,
                error=error,
            )

        while True:
            attempts += 1
            await self._throttle(request)
            attempt = await self._attempt(client, request)
            tokens_in, tokens_out = tokens_in + attempt.tokens_in, tokens_out + attempt.tokens_out
            cost += self.endpoint.price.cost_usd(attempt.tokens_in, attempt.tokens_out)
            error = redact(attempt.error, (self._secret,)) if attempt.error is not None else None
            last = attempt.status == "ok" or not attempt.retryable or attempts > self.cfg.max_retries
            if last and attempt.cause is not None and not await self._server_answers(client):
                self.breaker.failed(attempt.cause, trip=True)
            if self.breaker.open and attempt.status in ("failed", UNREACHABLE):
                return record(UNREACHABLE, attempt, self.breaker.reason)
            if last:
                if attempt.status != "ok":
                    log.warning(
                        "teacher %s: request %s gave up after %d attempt(s): %s",
                        request.teacher,
                        request.request_hash[:12],
                        attempts,
                        error,
                    )
                return record(attempt.status, attempt, error)
            delay = self._delay(attempts, attempt.retry_after)
            log.info("teacher %s: attempt %d failed (%s); retrying in %.2f s", request.teacher, attempts, error, delay)
            await asyncio.sleep(delay)

    async def _server_answers(self, client: Any) -> bool:
        """Whether the server answers GET /models at all (any HTTP status will do).

        Asked when a request ran out of retries on connection failures: a server that still answers
        has a problem with this one request (stored as failed, as any other); one that does not is
        gone, and the breaker stops the phase rather than store a failure a resumed run would reuse.
        """
        import openai

        try:
            await client.models.list(timeout=min(self.cfg.timeout_s, self.cfg.preflight_timeout_s))
        except openai.APIConnectionError:
            return False
        except openai.APIError:
            return True
        return True

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
