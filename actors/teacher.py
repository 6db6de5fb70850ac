"""Teacher side: request and call-record types, the three backends, and the executors that run them.

A teacher request is stateless: one prompt in, one call record out. The strategy state machines
(multi-stage prompts, grading) run in the driver (loop/teaching.py), which stores every call record
before using it; the code here only executes requests, in-process (`LocalExecutor`) or spread over
CPU-only Ray actors (`RayTeacherPool`).

Backends (one interface, `async complete(request) -> call record`, never raising):
- `openai`: the `openai` package's AsyncOpenAI client against any OpenAI-compatible endpoint, with
  a concurrency limit, requests- and tokens-per-minute buckets, a timeout, and its own retries
  (exponential backoff with jitter, honouring Retry-After) on 429, 5xx, timeouts and connection
  errors. The client's built-in retries are off so the attempt count is ours. A response that cannot
  be used (malformed JSON, no choices, empty text, cut off by max_tokens) is recorded as "unusable"
  with its reason, and retried when `teacher.retry_unusable` is set; it is never returned as "ok".
- `replay`: recorded text-davinci-002 zero-shot CoT outputs, looked up by question (a question
  without a recording is a "miss"); zero cost.
- `program`: the synthetic-arithmetic program teacher (actors/program_teacher.py).

Token counts come from the response's `usage`; where a server sends none they are estimated as
ceil(characters / 4) (the usual English average for BPE tokenizers; no tokenizer download needed).
Cost = tokens x the endpoint's price per million tokens, summed over every attempt that got a
response (an unusable response is billed too).

API keys: read from the environment at client creation, never stored in a request, record, log
line or error text; every error message goes through `redact` first.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import math
import os
import queue
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from tutorloop.actors import program_teacher
from tutorloop.loop.config import TeacherEndpoint, TeacherSection
from tutorloop.store.journal import TeacherJournal

log = logging.getLogger("tutorloop.teacher")

CALL_COLUMNS = (
    "request_hash", "teacher", "backend", "model", "strategy", "example_id", "round", "stage", "sample_index",
    "request", "response", "finish_reason", "tokens_in", "tokens_out", "cost_usd", "latency_s", "attempts",
    "status", "error",
)
# Unusable-response reasons; a record's error starts with one of them ("length: ...").
UNUSABLE_REASONS = ("malformed_json", "empty_choices", "empty_text", "length")
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def estimate_tokens(text: str) -> int:
    """Token estimate where no tokenizer count is available: one token per 4 characters, rounded up."""
    return math.ceil(len(text) / 4) if text else 0


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class TeacherRequest:
    """One teacher call. The hash covers what determines the answer; the metadata below does not."""

    teacher: str
    backend: str
    model: str
    api: str  # "chat" | "completions"
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    sample_index: int = 0
    # metadata, not hashed
    strategy: str = ""
    example_id: str = ""
    stage: str = ""
    round: int = 0
    question: str = ""  # the replay backend looks recordings up by question
    dataset: str = ""  # the replay backend reads this task's recordings

    def payload(self) -> dict[str, Any]:
        """What is sent (and stored as the record's `request`): messages or prompt, and the parameters."""
        body: dict[str, Any] = {"api": self.api}
        if self.messages is not None:
            body["messages"] = self.messages
        else:
            body["prompt"] = self.prompt
        body["params"] = self.params
        return body

    @property
    def request_hash(self) -> str:
        key = {"backend": self.backend, "model": self.model, "api": self.api, "params": self.params,
               "sample_index": self.sample_index}
        key["messages" if self.messages is not None else "prompt"] = (
            self.messages if self.messages is not None else self.prompt)
        return hashlib.sha256(_canonical(key).encode()).hexdigest()

    def text(self) -> str:
        """The prompt as one text: the completion prompt, or the last user message of a chat."""
        if self.messages is None:
            return self.prompt or ""
        users = [m["content"] for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""

    def tokens_in_estimate(self) -> int:
        if self.messages is None:
            return estimate_tokens(self.prompt or "")
        return sum(estimate_tokens(m["content"]) + 4 for m in self.messages)  # +4: per-message framing

    @property
    def max_tokens(self) -> int:
        return int(self.params.get("max_tokens", 0))


def call_record(request: TeacherRequest, *, status: str, response: str | None = None,
                finish_reason: str | None = None, tokens_in: int = 0, tokens_out: int = 0,
                cost_usd: float = 0.0, latency_s: float = 0.0, attempts: int = 1,
                error: str | None = None) -> dict[str, Any]:
    """The teacher_calls row of a finished request (keys exactly CALL_COLUMNS)."""
    return {
        "request_hash": request.request_hash, "teacher": request.teacher, "backend": request.backend,
        "model": request.model, "strategy": request.strategy, "example_id": request.example_id,
        "round": request.round, "stage": request.stage, "sample_index": request.sample_index,
        "request": _canonical(request.payload()), "response": response, "finish_reason": finish_reason,
        "tokens_in": int(tokens_in), "tokens_out": int(tokens_out), "cost_usd": float(cost_usd),
        "latency_s": float(latency_s), "attempts": int(attempts), "status": status, "error": error,
    }


_SECRET_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-*]{6,}"),  # OpenAI-style keys, even partly masked ones echoed by a server
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with the given secrets and anything shaped like an API key replaced by '***'."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


class TokenBucket:
    """Async token bucket: `per_minute` tokens refill evenly; bursts up to `burst_s` seconds' worth.

    A short burst window (not a whole minute) spreads requests out, so a server that counts per
    minute on a sliding window does not see one big burst at the start.
    """

    def __init__(self, per_minute: float, burst_s: float = 6.0) -> None:
        self.capacity = max(1.0, per_minute * burst_s / 60.0)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock: asyncio.Lock | None = None

    async def acquire(self, amount: float) -> None:
        # A request bigger than the whole bucket waits for a full bucket rather than forever.
        amount = min(float(amount), self.capacity)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= amount:
                    self.tokens -= amount
                    return
                await asyncio.sleep((amount - self.tokens) / self.rate)


def retry_after_seconds(headers: Any) -> float | None:
    """Delay asked for by a response's `retry-after-ms` or `retry-after` header (seconds or HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def parse_completion(api: str, body: str) -> tuple[str | None, str | None, dict[str, Any], str | None]:
    """(text, finish_reason, usage, problem) of a response body; problem is one of UNUSABLE_REASONS or None."""
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


_PROBLEM_TEXT = {
    "malformed_json": "the response body is not a valid completion JSON",
    "empty_choices": "the response has no choices",
    "empty_text": "the response text is empty",
    "length": "the response was cut off by max_tokens (finish_reason=length)",
}


class OpenAIBackend:
    """Any OpenAI-compatible endpoint through AsyncOpenAI, with limits and retries of its own."""

    def __init__(self, endpoint: TeacherEndpoint, cfg: TeacherSection, share: int = 1) -> None:
        self.endpoint = endpoint
        self.cfg = cfg
        # A pool of `share` actors splits the limits so that together they keep them.
        self.concurrency = max(1, math.ceil(cfg.concurrency / share))
        self.rpm = TokenBucket(cfg.requests_per_minute / share) if cfg.requests_per_minute else None
        self.tpm = TokenBucket(cfg.tokens_per_minute / share) if cfg.tokens_per_minute else None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._secret = ""

    def _ensure_client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI

            key = os.environ.get(self.endpoint.api_key_env) or ""
            self._secret = key
            base_url = self.endpoint.base_url or os.environ.get("OPENAI_BASE_URL") or None
            # A local server needs no key, but the client insists on one: send a placeholder.
            self._client = AsyncOpenAI(api_key=key or "EMPTY", base_url=base_url, timeout=self.cfg.timeout_s,
                                       max_retries=0)
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._client

    def _price(self, tokens_in: int, tokens_out: int) -> float:
        price = self.endpoint.price
        return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1e6

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = self.cfg.retry_backoff_max_s
        if retry_after is not None:
            base = min(retry_after, cap)
            return base + random.uniform(0, 0.1 * base)  # jitter only ever adds to what the server asked
        backoff = min(cap, self.cfg.retry_backoff_s * 2 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)

    async def _send(self, client: Any, request: TeacherRequest) -> Any:
        params = dict(request.params)
        if request.api == "chat":
            return await client.chat.completions.with_raw_response.create(
                model=request.model, messages=request.messages, **params)
        return await client.completions.with_raw_response.create(model=request.model, prompt=request.prompt, **params)

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        import openai

        client = self._ensure_client()
        started = time.monotonic()
        tokens_in = tokens_out = 0
        cost = 0.0
        attempts = 0
        est_in = request.tokens_in_estimate()
        while True:
            attempts += 1
            if self.rpm:
                await self.rpm.acquire(1)
            if self.tpm:
                await self.tpm.acquire(est_in + request.max_tokens)
            retry_after: float | None = None
            text = finish = None
            async with self._semaphore:
                try:
                    raw = await self._send(client, request)
                except openai.APIStatusError as exc:
                    status, retryable = "failed", exc.status_code in RETRYABLE_STATUS
                    retry_after = retry_after_seconds(exc.response.headers)
                    error = f"HTTP {exc.status_code}: {exc.message}"
                except openai.APITimeoutError:
                    status, retryable = "failed", True
                    error = f"timeout: no response within {self.cfg.timeout_s:g} s"
                except openai.APIConnectionError as exc:
                    status, retryable = "failed", True
                    cause = exc.__cause__ or exc.__context__
                    error = f"connection error: {type(cause).__name__ if cause else 'unknown'}: {cause or exc}"
                else:
                    body = raw.http_response.text
                    text, finish, usage, problem = parse_completion(request.api, body)
                    t_in = int(usage.get("prompt_tokens") or est_in)
                    t_out = int(usage.get("completion_tokens") or estimate_tokens(text or ""))
                    tokens_in, tokens_out = tokens_in + t_in, tokens_out + t_out
                    cost += self._price(t_in, t_out)
                    if problem is None:
                        return call_record(request, status="ok", response=text, finish_reason=finish,
                                           tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost,
                                           latency_s=time.monotonic() - started, attempts=attempts)
                    status, retryable = "unusable", self.cfg.retry_unusable
                    error = f"{problem}: {_PROBLEM_TEXT[problem]}"
            error = redact(error, (self._secret,))
            if not retryable or attempts > self.cfg.max_retries:
                log.warning("teacher %s: request %s gave up after %d attempt(s): %s",
                            request.teacher, request.request_hash[:12], attempts, error)
                return call_record(request, status=status, response=text, finish_reason=finish,
                                   tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost,
                                   latency_s=time.monotonic() - started, attempts=attempts, error=error)
            delay = self._delay(attempts, retry_after)
            log.info("teacher %s: attempt %d failed (%s); retrying in %.2f s",
                     request.teacher, attempts, error, delay)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class ReplayBackend:
    """Answers two-stage zero-shot CoT requests from recorded teacher outputs, by question."""

    def __init__(self, endpoint: TeacherEndpoint, data_dir: str) -> None:
        self.endpoint = endpoint
        self.data_dir = data_dir
        self._recordings: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def _lookup(self, request: TeacherRequest) -> dict[str, Any] | None:
        from tutorloop.loop.datasets import load_recorded_teacher, normalize_question

        if request.dataset not in self._recordings:
            self._recordings[request.dataset] = load_recorded_teacher(self.data_dir, request.dataset)
        completions = self._recordings[request.dataset].get(normalize_question(request.question), [])
        return completions[request.sample_index] if request.sample_index < len(completions) else None

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        started = time.monotonic()
        if request.stage not in ("reason", "answer"):
            return call_record(request, status="failed", error=f"replay serves zero_shot_cot stages only, not "
                                                               f"{request.strategy}/{request.stage}")
        try:
            recorded = self._lookup(request)
        except ValueError as exc:  # DataError: missing or malformed recording file
            return call_record(request, status="failed", error=str(exc))
        if recorded is None:
            return call_record(request, status="miss", latency_s=time.monotonic() - started,
                               error=f"no recording for this question in {request.dataset} "
                                     f"(sample {request.sample_index})")
        if request.stage == "reason":
            text, finish = recorded.get("reasoning_completion"), recorded.get("reasoning_finish_reason") or "stop"
        else:
            text, finish = recorded.get("completion"), "stop"
        problem = "length" if finish == "length" else None if text and text.strip() else "empty_text"
        return call_record(request, status="unusable" if problem else "ok", response=text, finish_reason=finish,
                           tokens_in=request.tokens_in_estimate(), tokens_out=estimate_tokens(text or ""),
                           latency_s=time.monotonic() - started,
                           error=f"{problem}: {_PROBLEM_TEXT[problem]} (recorded)" if problem else None)


class ProgramBackend:
    """The synthetic-arithmetic program teacher, in-process."""

    def __init__(self, endpoint: TeacherEndpoint) -> None:
        self.endpoint = endpoint

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        started = time.monotonic()
        text = program_teacher.respond(request.text())
        t_in, t_out = request.tokens_in_estimate(), estimate_tokens(text)
        price = self.endpoint.price
        return call_record(request, status="ok", response=text, finish_reason="stop", tokens_in=t_in,
                           tokens_out=t_out, cost_usd=(t_in * price.input_per_mtok + t_out * price.output_per_mtok) / 1e6,
                           latency_s=time.monotonic() - started)


class TeacherRouter:
    """The backends of every configured teacher; routes a request by its teacher name. Never raises."""

    def __init__(self, cfg: TeacherSection, data_dir: str = "data", share: int = 1) -> None:
        self.backends: dict[str, Any] = {}
        for endpoint in cfg.teachers:
            if endpoint.backend == "openai":
                self.backends[endpoint.name] = OpenAIBackend(endpoint, cfg, share)
            elif endpoint.backend == "replay":
                self.backends[endpoint.name] = ReplayBackend(endpoint, data_dir)
            else:
                self.backends[endpoint.name] = ProgramBackend(endpoint)

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        backend = self.backends.get(request.teacher)
        if backend is None:
            return call_record(request, status="failed", error=f"no teacher named {request.teacher!r} in the config")
        try:
            return await backend.complete(request)
        except Exception as exc:  # a bug or an unexpected client error: record it, keep the run going
            secret = getattr(backend, "_secret", "")
            return call_record(request, status="failed", error=redact(f"{type(exc).__name__}: {exc}", (secret,)))

    async def aclose(self) -> None:
        for backend in self.backends.values():
            if hasattr(backend, "aclose"):
                await backend.aclose()


# How long an executor waits for answers before it calls `on_wait` (the driver then lets readers
# have the history): fast teachers (replay, a local server) answer within it and never cause a release.
WAIT_GRACE_S = 0.02


class LocalExecutor:
    """Runs requests in-process on an asyncio loop in a background thread; yields records as they finish."""

    def __init__(self, teacher_cfg: TeacherSection, data_dir: str = "data") -> None:
        self._router = TeacherRouter(teacher_cfg, data_dir)
        self._window = teacher_cfg.concurrency
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-executor", daemon=True)
        self._thread.start()

    def execute(self, requests: list[TeacherRequest], on_wait: Callable[[], None] | None = None,
                journal: TeacherJournal | None = None) -> Iterator[list[dict[str, Any]]]:
        """Yields lists of call records, each holding everything that finished since the last one.

        At most `concurrency` requests are out at once and the next ones go out only when the caller
        asks for more. `journal` records each request as it goes out and each answer the instant it
        arrives, so a killed driver loses only the answers still in flight. `on_wait` is called
        before a wait longer than WAIT_GRACE_S.
        """
        done: queue.Queue = queue.Queue()
        queued = list(requests)
        futures: list = []

        def arrived(future: Any) -> None:
            if journal is not None and not future.cancelled() and future.exception() is None:
                journal.answered([future.result()])
            done.put(future)

        def submit(count: int) -> None:
            if journal is not None:
                journal.sent(request.request_hash for request in queued[:count])
            for request in queued[:count]:
                future = asyncio.run_coroutine_threadsafe(self._router.complete(request), self._loop)
                future.add_done_callback(arrived)
                futures.append(future)
            del queued[:count]

        submit(self._window)
        try:
            left = len(requests)
            while left:
                try:
                    group = [done.get(timeout=WAIT_GRACE_S)]
                except queue.Empty:
                    if on_wait is not None:
                        on_wait()
                    group = [done.get()]
                while True:
                    try:
                        group.append(done.get_nowait())
                    except queue.Empty:
                        break
                left -= len(group)
                yield [future.result() for future in group]
                submit(len(group))
        finally:  # the caller stopped early: do not leave requests running
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._router.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TeacherActor:
    """Ray actor shell (async, CPU only) around a TeacherRouter; one of a RayTeacherPool."""

    def __init__(self, teacher_cfg: dict[str, Any], data_dir: str, share: int) -> None:
        self._router = TeacherRouter(TeacherSection.model_validate(teacher_cfg), data_dir, share)

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        return await self._router.complete(request)

    async def aclose(self) -> None:
        await self._router.aclose()


class RayTeacherPool:
    """`num_actors` TeacherActors; requests are spread round-robin, records yielded as they complete.

    The concurrency, requests- and tokens-per-minute limits are split evenly across the actors.
    API keys are read from each actor's environment (a local Ray inherits the driver's).
    """

    def __init__(self, teacher_cfg: TeacherSection, num_actors: int | None = None, data_dir: str = "data",
                 num_cpus: float = 0.25) -> None:
        import ray

        self._ray = ray
        count = num_actors or teacher_cfg.num_actors
        self._window = teacher_cfg.concurrency
        actor_cls = ray.remote(num_cpus=num_cpus)(TeacherActor)
        self._actors = [actor_cls.remote(teacher_cfg.model_dump(mode="json"), data_dir, count) for _ in range(count)]

    def execute(self, requests: list[TeacherRequest], on_wait: Callable[[], None] | None = None,
                journal: TeacherJournal | None = None) -> Iterator[list[dict[str, Any]]]:
        """Yields lists of call records, each holding everything that finished since the last one.

        Like LocalExecutor: at most `concurrency` requests out at once, refilled only when the caller
        comes back for more; `journal` and `on_wait` likewise (answers are journaled as soon as
        they reach the driver).
        """
        ray = self._ray
        queued = list(enumerate(requests))
        pending: list = []

        def submit(count: int) -> None:
            if journal is not None:
                journal.sent(request.request_hash for _, request in queued[:count])
            for i, request in queued[:count]:
                pending.append(self._actors[i % len(self._actors)].complete.remote(request))
            del queued[:count]

        submit(self._window)
        try:
            while pending:
                ready, rest = ray.wait(pending, num_returns=1, timeout=WAIT_GRACE_S)
                if not ready:
                    if on_wait is not None:
                        on_wait()
                    ready, rest = ray.wait(pending, num_returns=1)
                # Take whatever else is already done too, without waiting.
                if rest:
                    more, rest = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                pending[:] = rest
                records = ray.get(ready)
                if journal is not None:
                    journal.answered(records)
                yield records
                submit(len(ready))
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self) -> None:
        ray = self._ray
        if not self._actors:
            return
        ray.get([actor.aclose.remote() for actor in self._actors], timeout=30)
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
