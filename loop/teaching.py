"""The teaching phase: jobs -> teacher requests -> cache -> teacher pool -> persist -> grading -> rationales.

Runs in the driver. Each job (one example, teacher, strategy and sample index) is a small state
machine (loop/teaching_job.py; jobs are planned in loop/teaching_plan.py): it issues one request per stage and advances only after that stage's call record has been
handed to `persist` (the driver's store writer), so no teacher answer is ever used before it is
stored. Requests go out in waves (all ready stages at once); identical requests (same hash) are
sent once; a request whose hash `lookup` finds is not sent at all. With a `journal`, every request
is recorded as it goes out and every answer the instant it arrives, so a killed run loses no answer
it received; only requests in flight at the kill are sent again (store/journal.py).

Budget: `teacher.max_cost_usd` minus what the run already spent. Before a wave, each new request
reserves its worst-case cost (estimated prompt tokens + max_tokens at the endpoint's prices); the
first request that would go over the budget stops all sending, and the jobs left unfinished end
with reject_reason "budget". Cached answers cost nothing and are still used. (A response retried as
unusable is billed again; that retry is not part of the reservation.)

Every rationale is graded against gold (loop/core/answers.py) and stored with its grade and rejection
reason; exactly one rationale record per job.

An `openai` teacher is checked once (actors/teacher/preflight.py) before the session first sends
it anything, so a wrong address, key or model stops the phase with one line; a phase answered
entirely from the cache needs no server. A teacher that stops answering mid-phase trips its
backend's circuit breaker: the pool stops the phase with TeacherUnavailable once the answers
received so far are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from tqdm import tqdm

from tutorloop.actors.teacher import TeacherRequest, check_teacher
from tutorloop.actors.teacher.sources import AnswerSources
from tutorloop.loop.core.records import RationaleRecord, TeacherCallRecord
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection
from tutorloop.loop.strategies import PromptBuilder, load_templates
from tutorloop.loop.teaching_job import JobRun, TeachingJob, max_request_cost
from tutorloop.store.journal import TeacherJournal


class Executor(Protocol):
    """LocalTeacherPool or RayTeacherPool: yields the call records of `requests` as they finish."""

    def ask(
        self,
        requests: list[TeacherRequest],
        on_wait: Callable[[], None] | None = None,
        journal: TeacherJournal | None = None,
    ) -> Iterator[list[TeacherCallRecord]]: ...

    def close(self) -> None: ...


@dataclass
class TeachingOutcome:
    rationales: list[RationaleRecord]  # without their round: the store sets it
    calls_sent: int
    cache_hits: int
    cost_usd: float
    budget_exhausted: bool
    message: str


# A job and the request it waits on
_Asked = tuple[JobRun, TeacherRequest]


@dataclass
class _Tally:
    """What a session has sent, found cached and spent so far, and whether the budget ran out."""

    sent: int = 0
    hits: int = 0
    cost: float = 0.0
    exhausted: bool = False


def teach_until_accepted(
    jobs: list[TeachingJob], budget: int, run: Callable[[list[TeachingJob]], TeachingOutcome]
) -> tuple[TeachingOutcome, list[str]]:
    """`training.accepted_budget`: the jobs' questions asked in their order, in batches of as many
    questions as rationales are still wanted, until `budget` are accepted or the questions run out.

    `run` is one teaching session over a batch. Returns the batches' outcomes merged, and the ids of
    the questions asked. A question with several jobs (samples, teachers) may overshoot by its extras.
    A resumed run asks the same batches: each batch's answers come back from the cache."""
    by_question: dict[str, list[TeachingJob]] = {}
    for job in jobs:
        by_question.setdefault(job.example.id, []).append(job)
    waiting, asked = list(by_question), []
    merged = TeachingOutcome([], 0, 0, 0.0, False, "")
    while waiting and not merged.budget_exhausted:
        wanted = budget - sum(1 for r in merged.rationales if r["accepted"])
        if wanted <= 0:
            break
        batch, waiting = waiting[:wanted], waiting[wanted:]
        outcome = run([job for question in batch for job in by_question[question]])
        asked += batch
        merged = TeachingOutcome(
            merged.rationales + outcome.rationales,
            merged.calls_sent + outcome.calls_sent,
            merged.cache_hits + outcome.cache_hits,
            merged.cost_usd + outcome.cost_usd,
            outcome.budget_exhausted,
            outcome.message,
        )
    accepted = sum(1 for r in merged.rationales if r["accepted"])
    merged.message = (
        f"accepted budget {budget}: {accepted} accepted of {len(asked)} questions asked"
        f"{'' if accepted >= budget else ' (teacher budget reached)' if merged.budget_exhausted else ' (questions ran out)'}"
        f"; last batch: {merged.message}"
    )
    return merged, asked


class TeachingSession:
    """Runs a list of jobs to rationale records; see the module docstring for the rules it keeps."""

    def __init__(
        self,
        teacher_cfg: TeacherSection,
        jobs: list[TeachingJob],
        lookup: Callable[[list[str]], dict[str, TeacherCallRecord]],
        executor: Executor,
        persist: Callable[[list[TeacherCallRecord]], None],
        spent_usd: float = 0.0,
        progress: bool = True,
        on_wait: Callable[[], None] | None = None,
        journal: TeacherJournal | None = None,
        preflight: Callable[[TeacherEndpoint, TeacherSection], None] = check_teacher,
        on_jobs_done: Callable[[int], None] | None = None,
        sources: AnswerSources | None = None,
    ) -> None:
        self.cfg = teacher_cfg
        # Keys name what answers (two sources never merge in a wave); the engine's name the configured teachers.
        self.sources = sources or AnswerSources(teacher_cfg)
        self.preflight = preflight  # raises TeacherUnavailable for a teacher that cannot be asked
        self._checked: set[str] = set()
        self.on_wait = on_wait  # called before the executor blocks on the teacher
        self.journal = journal  # makes each answer durable on arrival, before `persist` batches it
        # Told how many jobs are finished (all their calls answered, stored or cached) as that changes.
        self.on_jobs_done = on_jobs_done
        self._jobs_done = self._jobs_reported = 0
        self.jobs = jobs
        self.lookup = lookup
        self.executor = executor
        self.persist = persist
        self.spent_usd = spent_usd
        self.progress = progress
        self.builder = PromptBuilder(load_templates(teacher_cfg.prompts_dir))
        self.endpoints = {t.name: t for t in teacher_cfg.teachers}
        self._tally = _Tally()
        self._bar: tqdm | None = None

    def run(self) -> TeachingOutcome:
        runs = [JobRun(job, self.builder, self.cfg, self.sources) for job in self.jobs]
        self._tally = _Tally()
        self._jobs_done = self._jobs_reported = 0
        self._bar = tqdm(total=len(runs), desc="teacher", unit="job", disable=not self.progress)
        ready: list[_Asked] = [(run, run.first_request()) for run in runs]
        try:
            while ready:
                ready = self._wave(ready)
        except BaseException:
            self._bar.leave = False  # the error's line is what stays on the console, not a stalled bar
            raise
        finally:
            self._bar.close()
        return self._outcome([run.result for run in runs])

    def _wave(self, ready: list[_Asked]) -> list[_Asked]:
        """Answers every ready request (cache first, then the executor); returns the requests that follow."""
        waiting: dict[str, list[_Asked]] = {}
        unique: dict[str, TeacherRequest] = {}  # identical requests are sent once
        for run, request in ready:
            waiting.setdefault(request.request_hash, []).append((run, request))
            unique.setdefault(request.request_hash, request)
        upcoming: list[_Asked] = []
        cached = self.lookup(list(unique)) if unique else {}
        self._tally.hits += sum(1 for key in unique if key in cached)
        for key, record in cached.items():
            if key in waiting:
                self._deliver(waiting.pop(key), record, upcoming)
        to_send = self._within_budget([r for key, r in unique.items() if key not in cached], waiting)
        self._report_jobs()
        self._check_teachers(to_send)
        # Each group holds every answer that arrived while the previous group was being stored,
        # so fast teachers get bigger batches; the journal already holds each answer.
        for group in self.executor.ask(to_send, on_wait=self.on_wait, journal=self.journal):
            self._tally.sent += len(group)
            self.persist(group)  # stored before any job reads it
            for record in group:
                self._tally.cost += record["cost_usd"]
                self._deliver(waiting.pop(record["request_hash"], []), record, upcoming)
            self._report_jobs()
        return upcoming

    def _check_teachers(self, requests: list[TeacherRequest]) -> None:
        """The preflight of each teacher about to get its first request of this session."""
        for name in sorted({request.teacher for request in requests} - self._checked):
            self.preflight(self.endpoints[name], self.cfg)
            self._checked.add(name)

    def _within_budget(self, requests: list[TeacherRequest], waiting: dict[str, list[_Asked]]) -> list[TeacherRequest]:
        """The requests whose worst-case cost still fits; from the first that does not, every job
        left waiting ends with reject_reason "budget"."""
        tally, limit = self._tally, self.cfg.max_cost_usd
        to_send: list[TeacherRequest] = []
        reserved = 0.0
        for request in requests:
            estimate = max_request_cost(request, self.endpoints[request.teacher])
            if not tally.exhausted and limit is not None and self.spent_usd + tally.cost + reserved + estimate > limit:
                tally.exhausted = True
            if tally.exhausted:
                for run, _ in waiting.pop(request.request_hash):
                    run.give_up("budget")
                    self._job_finished()
                continue
            reserved += estimate
            to_send.append(request)
        return to_send

    def _deliver(self, waiting: list[_Asked], record: TeacherCallRecord, upcoming: list[_Asked]) -> None:
        """Hands a stored record to every job that asked for it; their next requests join `upcoming`."""
        for run, request in waiting:
            following = run.advance(request, record)
            if following is not None:
                upcoming.append((run, following))
            else:
                self._job_finished()

    def _job_finished(self) -> None:
        self._jobs_done += 1
        self._bar.update(1)

    def _report_jobs(self) -> None:
        if self.on_jobs_done is not None and self._jobs_done != self._jobs_reported:
            self.on_jobs_done(self._jobs_done)
            self._jobs_reported = self._jobs_done

    def _outcome(self, rationales: list[RationaleRecord]) -> TeachingOutcome:
        tally, limit = self._tally, self.cfg.max_cost_usd
        accepted = sum(1 for r in rationales if r["accepted"])
        budget_left = sum(1 for r in rationales if r["reject_reason"] == "budget")
        message = (
            f"teacher: {len(rationales)} jobs, {accepted} rationales accepted, "
            f"{len(rationales) - accepted} rejected; {tally.sent} calls sent, {tally.hits} cache hits, "
            f"${tally.cost:.4f} spent"
        )
        if tally.exhausted:
            message += (
                f"; budget teacher.max_cost_usd=${limit:.4f} reached (${self.spent_usd + tally.cost:.4f} "
                f"spent in all): {budget_left} jobs stopped before sending"
            )
        return TeachingOutcome(rationales, tally.sent, tally.hits, tally.cost, tally.exhausted, message)
