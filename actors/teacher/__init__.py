"""The teacher side: requests and call records, the three backends, and the pools that run them.

A teacher request is stateless: one prompt in, one call record out. The strategy state machines
(multi-stage prompts, grading) run in the driver (loop/teaching_job.py), which stores every call record
before using it; this package only runs requests, in-process (`LocalTeacherPool`) or spread over
CPU-only Ray actors (`RayTeacherPool`).

Backends (one interface, `async complete(request) -> call record`, never raising): `openai` (any
OpenAI-compatible endpoint, openai_backend.py), `replay` (recorded zero-shot CoT outputs,
replay.py) and `program` (the synthetic-arithmetic program teacher, program.py). Cost = tokens x
the endpoint's price per million tokens (`PriceSection.cost_usd`). An `openai` teacher that is not
there stops a phase with one line (TeacherUnavailable): before it by `check_teacher`
(preflight.py), during it by the backend's circuit breaker (health.py).

`RayTeacherPool` is loaded on first use, so importing this package does not import Ray.
"""

from __future__ import annotations

from typing import Any

from tutorloop.actors.teacher.calls import CALL_COLUMNS, TeacherRequest, call_record, estimate_tokens, redact
from tutorloop.actors.teacher.health import TeacherUnavailable
from tutorloop.actors.teacher.limits import TokenBucket, retry_after_seconds
from tutorloop.actors.teacher.local_pool import LocalTeacherPool
from tutorloop.actors.teacher.openai_backend import OpenAIBackend, parse_completion
from tutorloop.actors.teacher.preflight import check_teacher
from tutorloop.actors.teacher.program import ProgramBackend
from tutorloop.actors.teacher.replay import ReplayBackend
from tutorloop.actors.teacher.router import TeacherRouter

__all__ = [
    "CALL_COLUMNS",
    "LocalTeacherPool",
    "OpenAIBackend",
    "ProgramBackend",
    "RayTeacherPool",  # noqa: F822 (loaded on first use by __getattr__ below)
    "ReplayBackend",
    "TeacherRequest",
    "TeacherRouter",
    "TeacherUnavailable",
    "TokenBucket",
    "call_record",
    "check_teacher",
    "estimate_tokens",
    "parse_completion",
    "redact",
    "retry_after_seconds",
]


def __getattr__(name: str) -> Any:
    if name == "RayTeacherPool":
        from tutorloop.actors.teacher.ray_pool import RayTeacherPool

        return RayTeacherPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
