"""Whether an `openai` teacher is there at all: the error that stops a phase, the short cause of a
connection failure, and the circuit breaker that gives up on a server that stopped answering.

A phase that cannot reach its teacher stops with one line instead of sending every request
`max_retries` times into a closed port; the answers received before the stop stay stored, and
requests the breaker cut off are neither journaled as answers nor stored, so a resumed run sends
them again.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from tutorloop.loop.core.errors import RunError
from tutorloop.loop.core.teacher_config import TeacherEndpoint

# The status of a record the open breaker cut off: never stored, the pool raises TeacherUnavailable.
UNREACHABLE = "unreachable"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class TeacherUnavailable(RunError):
    """An `openai` teacher cannot be reached or refuses us (address, key or model); one line says which."""


def base_url(endpoint: TeacherEndpoint) -> str:
    """The address the openai client sends this endpoint's requests to."""
    return (endpoint.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL).rstrip("/")


def client_options(endpoint: TeacherEndpoint, timeout_s: float) -> dict[str, Any]:
    """Keyword arguments of OpenAI/AsyncOpenAI for this endpoint: our own retries, key from the environment."""
    # A local server needs no key, but the client insists on one: send a placeholder.
    key = os.environ.get(endpoint.api_key_env) or "EMPTY"
    return {"api_key": key, "base_url": base_url(endpoint), "timeout": timeout_s, "max_retries": 0}


def where(endpoint: TeacherEndpoint) -> str:
    """How a message names a teacher: its name and address."""
    return f"teacher '{endpoint.name}' at {base_url(endpoint)}"


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def failure_cause(exc: BaseException, timeout_s: float) -> str:
    """A connection error of the openai client in a few words: what a user fixes (address, server, network)."""
    for link in _chain(exc):
        name = type(link).__name__
        if isinstance(link, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(link, socket.gaierror):
            return "host not found (DNS)"
        if isinstance(link, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(link, OSError) and link.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "host unreachable"
        if name == "RemoteProtocolError":  # httpx: the server closed the connection mid-exchange
            return "the server closed the connection without an answer"
        if "Timeout" in name or isinstance(link, TimeoutError):
            return f"timeout (no answer within {timeout_s:g} s)"
    inner = _chain(exc)[-1]
    return f"connection failed ({type(inner).__name__}: {inner})"


class CircuitBreaker:
    """Counts connection failures in a row (refused, reset, DNS, timeout); any response (even a 429 or
    a 500) means the server is there. `limit` is teacher.max_consecutive_failures."""

    def __init__(self, endpoint: TeacherEndpoint, limit: int) -> None:
        self.endpoint = endpoint
        self.limit = limit
        self.failures = 0
        self.reason: str | None = None  # set once open; every request from then on is cut off with it

    @property
    def open(self) -> bool:
        return self.reason is not None

    def answered(self) -> None:
        self.failures = 0

    def failed(self, cause: str, trip: bool = False) -> None:
        """One more connection failure; `trip` opens the breaker whatever the count (the server is gone)."""
        self.failures += 1
        if self.reason is None and (trip or self.failures >= self.limit):
            self.reason = f"{where(self.endpoint)}: stopped after {self.failures} connection failures in a row: {cause}"


def unreachable_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records an open breaker cut off (their `error` is the one line that stops the phase)."""
    return [r for r in records if r["status"] == UNREACHABLE]


def answered_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that are answers to keep: all but those an open breaker cut off."""
    return [r for r in records if r["status"] != UNREACHABLE]
