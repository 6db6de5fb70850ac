"""The `replay` backend: recorded text-davinci-002 zero-shot CoT outputs, looked up by question.

A question without a recording is a "miss"; a replayed answer costs nothing.
"""

from __future__ import annotations

import time
from typing import Any

from tutorloop.actors.teacher.calls import PROBLEM_TEXT, TeacherRequest, call_record, estimate_tokens
from tutorloop.loop.config import TeacherEndpoint
from tutorloop.loop.datasets import load_recorded_teacher, normalize_question
from tutorloop.loop.errors import DataError


class ReplayBackend:
    """Answers two-stage zero-shot CoT requests from recorded teacher outputs, by question."""

    def __init__(self, endpoint: TeacherEndpoint, data_dir: str) -> None:
        self.endpoint = endpoint
        self.data_dir = data_dir
        self._recordings: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def _lookup(self, request: TeacherRequest) -> dict[str, Any] | None:
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
        except DataError as exc:  # a missing or malformed recording file
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
                           error=f"{problem}: {PROBLEM_TEXT[problem]} (recorded)" if problem else None)
