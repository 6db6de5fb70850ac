"""A teacher request (what is sent, and the hash that identifies its answer) and its call record.

API keys are never part of a request or record; every error text goes through `redact` before it
is kept or logged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from tutorloop.loop.core.records import TeacherCallRecord, columns

CALL_COLUMNS = columns(TeacherCallRecord)
# Why a response cannot be used; a record's error starts with its reason ("length: ...").
PROBLEM_TEXT = {
    "malformed_json": "the response body is not a valid completion JSON",
    "empty_choices": "the response has no choices",
    "empty_text": "the response text is empty",
    "length": "the response was cut off by max_tokens (finish_reason=length)",
}


def estimate_tokens(text: str) -> int:
    """Token estimate where no tokenizer count is available: one token per 4 characters, rounded up
    (the usual English average for BPE tokenizers; no tokenizer download needed)."""
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
    # What answers it (actors/teacher/sources.py): the same prompt to another endpoint, recording or model
    # file is another request. Hashed, never sent or stored.
    source: str = ""
    # metadata, not hashed
    strategy: str = ""
    example_id: str = ""
    stage: str = ""
    round: int = 0
    question: str = ""  # the replay backend looks recordings up by question
    dataset: str = ""  # the replay backend reads this task's recordings
    answer_type: str = "number"  # the replay backend reads a rationale recorded without its answer by it

    def payload(self) -> dict[str, Any]:
        """What is sent (and stored as the record's `request`): messages or prompt, and the parameters."""
        body: dict[str, Any] = {"api": self.api}
        if self.messages is not None:
            body["messages"] = self.messages
        else:
            body["prompt"] = self.prompt
        body["params"] = self.params
        return body

    @classmethod
    def from_record(cls, record: TeacherCallRecord, source: str = "") -> TeacherRequest:
        """The request a stored call record answered (its hashed fields; metadata left empty)."""
        body = json.loads(record["request"])
        return cls(
            teacher=record["teacher"],
            backend=record["backend"],
            model=record["model"],
            api=body["api"],
            messages=body.get("messages"),
            prompt=body.get("prompt"),
            params=body["params"],
            sample_index=int(record["sample_index"]),
            source=source,
        )

    def _key(self) -> dict[str, Any]:
        key = {
            "backend": self.backend,
            "model": self.model,
            "api": self.api,
            "params": self.params,
            "sample_index": self.sample_index,
        }
        key["messages" if self.messages is not None else "prompt"] = (
            self.messages if self.messages is not None else self.prompt
        )
        return key

    @property
    def request_hash(self) -> str:
        return hashlib.sha256(_canonical({**self._key(), "source": self.source}).encode()).hexdigest()

    @property
    def legacy_hash(self) -> str:
        """The key before it named the source: what runs stored by earlier versions hold (loop/call_keys.py)."""
        return hashlib.sha256(_canonical(self._key()).encode()).hexdigest()

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


def call_record(
    request: TeacherRequest,
    *,
    status: str,
    response: str | None = None,
    finish_reason: str | None = None,
    tokens_in: int = 0,
    tokens_out: int = 0,
    cost_usd: float = 0.0,
    latency_s: float = 0.0,
    attempts: int = 1,
    error: str | None = None,
) -> TeacherCallRecord:
    """The teacher_calls row of a finished request (keys exactly CALL_COLUMNS); its round is the request's."""
    return {
        "request_hash": request.request_hash,
        "teacher": request.teacher,
        "backend": request.backend,
        "model": request.model,
        "strategy": request.strategy,
        "example_id": request.example_id,
        "round": request.round,
        "stage": request.stage,
        "sample_index": request.sample_index,
        "request": _canonical(request.payload()),
        "response": response,
        "finish_reason": finish_reason,
        "tokens_in": int(tokens_in),
        "tokens_out": int(tokens_out),
        "cost_usd": float(cost_usd),
        "latency_s": float(latency_s),
        "attempts": int(attempts),
        "status": status,
        "error": error,
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
