"""The records that move between phases, actors and the store.

Actors return them through Ray and the driver stores them; neither side imports the other, so what
they share is defined here. Each record's keys are its table's columns (`columns`), less the ones the
store sets on the way in: the `round` of every row (store/history.py), and an attempt's phase, split
and batch. A teacher call names its round itself: the journal recovers it without the driver's state.
"""

from __future__ import annotations

from typing import Iterable, NotRequired, Protocol, TypedDict


def columns(record_type: type) -> tuple[str, ...]:
    """A record type's keys in declaration order (a base type's first): the columns it fills."""
    return tuple(record_type.__annotations__)


class AttemptRecord(TypedDict):
    """One graded answer of the student to one question (actors/exam.py); read back to find mistakes."""

    example_id: str
    sample_index: int
    mode: str  # answer | explain | prompted
    output: str
    extracted: str | None
    correct: bool
    prompt_tokens: int
    output_tokens: int


class RationaleRecord(TypedDict):
    """A teaching job's graded rationale (loop/teaching_job.py), one per job, accepted or not."""

    teacher: str
    strategy: str
    example_id: str
    sample_index: int
    rationale: str | None
    extracted: str | None
    accepted: bool
    reject_reason: str | None
    feedback: str | None  # tailored: the teacher's statement of what was wrong
    request_hash: str | None  # the call that answered it; None when no call was made (budget)
    task: str  # the teacher's task tag, "explain" without one


class SampleRecord(TypedDict):
    """A training sample (loop/curriculum.py): a student prompt and the target it learns."""

    example_id: str
    task: str
    source: str  # teacher name, "gold", or "replay:round-<k>"
    input: str
    target: str
    weight: float


class EarlierSample(SampleRecord):
    """A sample of an earlier round, with that round (a replay names it as its source)."""

    round: int


class ContrastPairRecord(TypedDict):
    """A self-reflection pair (loop/curriculum.py); a None positive trains on the anchor."""

    example_id: str
    input: str
    anchor: str
    positive: str | None
    negative: str


class TeacherCallRecord(TypedDict):
    """The teacher_calls row of a finished request (actors/teacher/calls.py)."""

    request_hash: str
    teacher: str
    backend: str
    model: str
    strategy: str
    example_id: str
    round: int
    stage: str
    sample_index: int
    request: str  # canonical JSON of messages or prompt and parameters, never a key
    response: str | None
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_s: float
    attempts: int
    status: str  # ok | miss | failed | unusable
    error: str | None


class TrainStepRecord(TypedDict):
    """One optimizer step of a training (actors/training.py)."""

    step: int
    epoch: float
    lr: float
    loss: float
    task_losses: dict[str, float]
    contrast_loss: float | None
    tokens: int
    pad_fraction: float
    elapsed_s: NotRequired[float]  # set once the step is done


class CallJournal(Protocol):
    """Where a teacher pool notes each request as it goes out and each answer as it arrives (the
    driver's store/journal.py), so a killed run neither loses an answer nor sends a request twice."""

    def sent(self, hashes: Iterable[str]) -> None: ...

    def answered(self, records: Iterable[TeacherCallRecord]) -> None: ...
