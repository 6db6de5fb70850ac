"""The `replay` backend: recorded zero-shot CoT outputs, looked up by question.

By default the recordings are the shipped text-davinci-002 outputs of `data.task`. With
`recording: FILE` a teacher replays the user's own outputs instead, for any dataset: a `.json` file in
the shipped recorded format (data/README.md), or a `.jsonl` file with one answer per line,
`{"question": ..., "rationale": ..., "answer": ...}`, where `answer` (optional) is what the teacher
said after "Therefore, the answer is"; without it the answer graded is the rationale's own final answer
(loop/core/answers.py: after its last "the answer is", else its last number, yes/no, choice or line). Lines
with the same question are its samples 0, 1, ... in file order.
A question without a recording is a "miss"; a replayed answer costs nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tutorloop.actors.teacher.calls import PROBLEM_TEXT, TeacherRequest, call_record, estimate_tokens
from tutorloop.loop.core.answers import extract_answer
from tutorloop.loop.core.datasets import (
    load_recorded_teacher,
    normalize_question,
    read_jsonl,
    read_recorded,
    required_field,
)
from tutorloop.loop.core.errors import DataError
from tutorloop.loop.core.teacher_config import TeacherEndpoint

Recording = dict[str, list[dict[str, Any]]]  # normalize_question(question) -> completions in sample order


def _jsonl_completions(path: Path) -> Recording:
    """A JSONL file of question and rationale, as completions of the recorded format."""
    by_question: Recording = {}
    for number, record in read_jsonl(path):
        question, rationale = (required_field(record, key, path, number).strip() for key in ("question", "rationale"))
        for key, value in (("question", question), ("rationale", rationale)):
            if not value:
                raise DataError(f"{path}: line {number}: field '{key}' is empty")
        answer = record.get("answer")
        by_question.setdefault(normalize_question(question), []).append(
            {
                "question": question,
                "reasoning_completion": rationale,
                "reasoning_finish_reason": "stop",
                "completion": f" {answer}" if answer is not None else None,
            }
        )
    return by_question


def load_recording(recording: str | Path) -> Recording:
    """The user's own recorded teacher outputs (see the module docstring), by question.

    Raises DataError with one line naming the file (and the line or entry) where it is bad."""
    path = Path(recording).expanduser()
    if path.suffix == ".jsonl":
        return _jsonl_completions(path)
    by_question: Recording = {}
    for completions in read_recorded(path).values():
        by_question.setdefault(normalize_question(completions[0]["question"]), []).extend(completions)
    return by_question


class ReplayBackend:
    """Answers two-stage zero-shot CoT requests from recorded teacher outputs, by question."""

    def __init__(self, endpoint: TeacherEndpoint, data_dir: str) -> None:
        self.endpoint = endpoint
        self.data_dir = data_dir
        self._recordings: dict[str, Recording] = {}

    def _lookup(self, request: TeacherRequest) -> dict[str, Any] | None:
        # The user's own recording answers for every dataset; else the shipped one of the request's task.
        source = self.endpoint.recording or request.dataset
        if source not in self._recordings:
            self._recordings[source] = (
                load_recording(source)
                if self.endpoint.recording
                else load_recorded_teacher(self.data_dir, request.dataset)
            )
        completions = self._recordings[source].get(normalize_question(request.question), [])
        return completions[request.sample_index] if request.sample_index < len(completions) else None

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        started = time.monotonic()
        if request.stage not in ("reason", "answer"):
            return call_record(
                request,
                status="failed",
                error=f"replay serves zero_shot_cot stages only, not {request.strategy}/{request.stage}",
            )
        try:
            recorded = self._lookup(request)
        except DataError as exc:  # a missing or malformed recording file
            return call_record(request, status="failed", error=str(exc))
        if recorded is None:
            return call_record(
                request,
                status="miss",
                latency_s=time.monotonic() - started,
                error=f"no recording for this question in {request.dataset} (sample {request.sample_index})",
            )
        own_answer = request.stage == "answer" and recorded.get("completion") is None
        if request.stage == "reason":
            text, finish = recorded.get("reasoning_completion"), recorded.get("reasoning_finish_reason") or "stop"
        elif own_answer:  # no recorded answer: the rationale's final answer; "" (graded no_answer) if it states none
            text = extract_answer(recorded.get("reasoning_completion") or "", request.answer_type)
            text, finish = f" {text}" if text is not None else "", "stop"
        else:
            text, finish = recorded.get("completion"), "stop"
        problem = "length" if finish == "length" else None if own_answer or text and text.strip() else "empty_text"
        return call_record(
            request,
            status="unusable" if problem else "ok",
            response=text,
            finish_reason=finish,
            tokens_in=request.tokens_in_estimate(),
            tokens_out=estimate_tokens(text or ""),
            latency_s=time.monotonic() - started,
            error=f"{problem}: {PROBLEM_TEXT[problem]} (recorded)" if problem else None,
        )
