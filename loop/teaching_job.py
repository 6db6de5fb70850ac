"""One teaching job and its state machine: the request of each stage, and the graded rationale at the end.

A job (one example, teacher, strategy and sample index) issues one request per stage and advances on
that stage's stored call record (loop/teaching.py runs many at once). Its rationale is graded against
gold (loop/core/answers.py), with `teacher.check_equations` its written arithmetic too
(loop/core/calculator.py) and with `teacher.check_reaches_answer` whether its reasoning gets to that
answer, and ends as exactly one rationale record, accepted or with its rejection reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tutorloop.actors.teacher import TeacherRequest
from tutorloop.actors.teacher.sources import AnswerSources
from tutorloop.loop.core.answers import answers_match, extract_answer, reasoning_reaches_answer
from tutorloop.loop.core.calculator import false_equations
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.records import AttemptRecord, RationaleRecord, TeacherCallRecord
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection
from tutorloop.loop.strategies import Exemplar, PromptBuilder, answer_trigger, clean_rationale
from tutorloop.loop.tailored_reply import parse_tailored_reply

ANSWER_STAGE_MAX_TOKENS = 32  # stage 2 of zero-shot CoT only states the answer
# reject_reason of a call that ended unusable, by the reason code its error starts with
_UNUSABLE_REJECT = {
    "length": "truncated",
    "empty_text": "empty",
    "empty_choices": "empty",
    "malformed_json": "malformed",
}


@dataclass
class TeachingJob:
    """One rationale to obtain: an example, a teacher, a strategy and a sample index."""

    example: Example
    teacher: TeacherEndpoint
    strategy: str
    sample_index: int
    round: int
    exemplars: list[Exemplar] = field(default_factory=list)  # few_shot_cot, teacher_forcing
    mistake: AttemptRecord | None = None  # tailored: the student's wrong attempt ("output", "extracted")


class JobRun:
    """The state machine of one job: which request is next, and the rationale record at the end."""

    def __init__(
        self, job: TeachingJob, builder: PromptBuilder, cfg: TeacherSection, sources: AnswerSources | None = None
    ) -> None:
        self.job = job
        self.builder = builder
        self.cfg = cfg
        self.sources = sources or AnswerSources(cfg)
        self.stage1: TeacherCallRecord | None = None
        self.reason_prompt = ""
        self.result: RationaleRecord | None = None

    # -- requests ---------------------------------------------------------------------------------
    def _request(
        self,
        stage: str,
        text: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> TeacherRequest:
        job, cfg = self.job, self.cfg
        if temperature is None and job.strategy == "tailored":  # a second reply is a second, distinct correction
            temperature = cfg.temperature if job.sample_index == 0 else cfg.diverse_temperature
        elif temperature is None:
            temperature = cfg.diverse_temperature if cfg.diverse_samples > 1 else cfg.temperature
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens or cfg.max_tokens}
        if stop:
            params["stop"] = stop
        chat = job.teacher.api == "chat"
        return TeacherRequest(
            teacher=job.teacher.name,
            backend=job.teacher.backend,
            model=job.teacher.model,
            api=job.teacher.api,
            messages=[{"role": "user", "content": text}] if chat else None,
            prompt=None if chat else text,
            params=params,
            sample_index=job.sample_index,
            strategy=job.strategy,
            example_id=job.example.id,
            source=self.sources.of(job.teacher.name, job.example.dataset),
            stage=stage,
            round=job.round,
            question=job.example.question,
            dataset=job.example.dataset,
            answer_type=job.example.answer_type,
        )

    def first_request(self) -> TeacherRequest:
        job, b = self.job, self.builder
        if job.strategy == "zero_shot_cot":
            self.reason_prompt = b.zero_shot_reason(job.example)
            return self._request("reason", self.reason_prompt)
        if job.strategy in ("cote", "crop"):
            return self._request("cote", b.cote(job.example))
        if job.strategy == "rp":
            return self._request("rp", b.rp(job.example))
        if job.strategy == "few_shot_cot":
            return self._request("few_shot_cot", b.few_shot(job.example, job.exemplars), stop=["\n\nQ:"])
        if job.strategy == "teacher_forcing":
            return self._request("teacher_forcing", b.teacher_forcing(job.example, job.exemplars), stop=["\n\nQ:"])
        if job.strategy == "tailored":
            mistake = job.mistake or {}
            text = b.tailored(
                job.example, mistake.get("output") or "", mistake.get("extracted"), self.cfg.tailored_show_answer
            )
            return self._request("tailored", text)
        raise ConfigError(f"teacher.strategies: unknown strategy {job.strategy!r}")

    def worst_case_requests(self) -> list[TeacherRequest]:
        """Every request this job can send, for the dry run's cost bound: a stage-2 prompt (zero-shot CoT's
        answer, crop's rp fallback) as if the earlier stage used all of its max_tokens."""
        job = self.job
        requests = [self.first_request()]
        if job.strategy == "zero_shot_cot":
            filler = "x" * (4 * self.cfg.max_tokens)  # a rationale as long as max_tokens allows
            text = self.builder.zero_shot_answer(job.example, self.reason_prompt, filler)
            requests.append(self._request("answer", text, max_tokens=ANSWER_STAGE_MAX_TOKENS, temperature=0.0))
        elif job.strategy == "crop":
            requests.append(self._request("rp", self.builder.rp(job.example)))
        return requests

    # -- advancing --------------------------------------------------------------------------------
    def advance(self, request: TeacherRequest, record: TeacherCallRecord) -> TeacherRequest | None:
        """Take a stored call record; return the next request, or None when the job is finished."""
        job = self.job
        failed = self._failure(record)
        if request.stage == "reason":
            if failed:
                self._finish(record, None, None, failed)
                return None
            self.stage1 = record
            text = self.builder.zero_shot_answer(job.example, self.reason_prompt, record["response"])
            # Stage 2 only reads off the answer: greedy and short.
            return self._request("answer", text, max_tokens=ANSWER_STAGE_MAX_TOKENS, temperature=0.0)
        if request.stage == "answer":
            rationale = clean_rationale(self.stage1["response"])
            if failed:
                self._finish(record, rationale, None, failed)
            else:
                # A completion continues the trigger with " 6"; a chat model replies "6": join with a space.
                extracted = extract_answer(
                    f"{answer_trigger(job.example.answer_type)} {record['response'].lstrip()}", job.example.answer_type
                )
                self._grade(record, rationale, extracted)
            return None
        if request.stage == "tailored":
            reply = None if failed else parse_tailored_reply(record["response"], job.example.answer_type)
            if failed:
                self._finish(record, None, None, failed)
            elif reply is None:
                self._finish(record, clean_rationale(record["response"]), None, "bad_format")
            else:
                self._grade(record, reply.rationale, reply.answer, feedback=reply.mistake or None)
            return None
        # single-stage strategies, and the two stages of crop
        if failed:
            self._finish(record, None, None, failed)
        else:
            self._grade(
                record, clean_rationale(record["response"]), extract_answer(record["response"], job.example.answer_type)
            )
        if job.strategy == "crop" and request.stage == "cote" and not self.result["accepted"]:
            self.result = None  # COTE was wrong: rationalize the gold answer instead
            return self._request("rp", self.builder.rp(job.example))
        return None

    def give_up(self, reason: str) -> None:
        """End the job without a rationale (before its request was sent)."""
        self._finish(None, None, None, reason)

    @staticmethod
    def _failure(record: TeacherCallRecord) -> str | None:
        status = record["status"]
        if status == "ok":
            return None
        if status == "unusable":
            code = (record.get("error") or "").split(":", 1)[0]
            return _UNUSABLE_REJECT.get(code, "unusable")
        return status  # "miss" | "failed"

    def _grade(
        self, record: TeacherCallRecord, rationale: str, extracted: str | None, feedback: str | None = None
    ) -> None:
        example = self.job.example
        if not rationale:
            reason = "empty"
        elif extracted is None:
            reason = "no_answer"
        elif not answers_match(extracted, example.answer, example.answer_type):
            reason = "wrong_answer"
        elif self.cfg.check_equations and example.answer_type == "number" and false_equations(rationale):
            reason = "false_equation"  # the right answer reached by wrong arithmetic
        elif self.cfg.check_reaches_answer and not reasoning_reaches_answer(
            rationale, example.answer, example.answer_type, example.dataset
        ):
            reason = "answer_not_reached"  # the right answer stated after reasoning that ends elsewhere
        else:
            reason = None
        self._finish(record, rationale, extracted, reason, feedback)

    def _finish(
        self,
        record: TeacherCallRecord | None,
        rationale: str | None,
        extracted: str | None,
        reason: str | None,
        feedback: str | None = None,
    ) -> None:
        job = self.job
        self.result = {
            "teacher": job.teacher.name,
            "strategy": job.strategy,
            "example_id": job.example.id,
            "sample_index": job.sample_index,
            "rationale": rationale or None,
            "extracted": extracted,
            "accepted": reason is None,
            "reject_reason": reason,
            "feedback": feedback,
            "request_hash": record["request_hash"] if record else None,
            "task": job.teacher.task_tag or "explain",
        }


def max_request_cost(request: TeacherRequest, endpoint: TeacherEndpoint) -> float:
    """Worst-case cost of one attempt: estimated prompt tokens plus all of max_tokens."""
    return endpoint.price.cost_usd(request.tokens_in_estimate(), request.max_tokens)
