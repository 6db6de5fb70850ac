"""The teaching phase: jobs -> teacher requests -> cache -> teacher pool -> persist -> grading -> rationales.

Runs in the driver. Each job (one example, teacher, strategy and sample index) is a small state
machine: it issues one request per stage and advances only after that stage's call record has been
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

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from tqdm import tqdm

from tutorloop.actors.teacher import TeacherRequest, check_teacher
from tutorloop.actors.teacher.sources import AnswerSources
from tutorloop.loop.core.answers import answers_match, extract_answer
from tutorloop.loop.core.config import TeacherEndpoint, TeacherSection
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.records import AttemptRecord, RationaleRecord, TeacherCallRecord
from tutorloop.loop.curriculum import TeachingTargets
from tutorloop.loop.strategies import (
    Exemplar,
    PromptBuilder,
    answer_trigger,
    builtin_exemplars,
    clean_rationale,
    load_templates,
)
from tutorloop.loop.tailored_reply import parse_tailored_reply
from tutorloop.store.journal import TeacherJournal

ANSWER_STAGE_MAX_TOKENS = 32  # stage 2 of zero-shot CoT only states the answer
# reject_reason of a call that ended unusable, by the reason code its error starts with
_UNUSABLE_REJECT = {
    "length": "truncated",
    "empty_text": "empty",
    "empty_choices": "empty",
    "malformed_json": "malformed",
}


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
class TeachingJob:
    """One rationale to obtain: an example, a teacher, a strategy and a sample index."""

    example: Example
    teacher: TeacherEndpoint
    strategy: str
    sample_index: int
    round: int
    exemplars: list[Exemplar] = field(default_factory=list)  # few_shot_cot, teacher_forcing
    mistake: AttemptRecord | None = None  # tailored: the student's wrong attempt ("output", "extracted")


@dataclass
class TeachingOutcome:
    rationales: list[RationaleRecord]  # without their round: the store sets it
    calls_sent: int
    cache_hits: int
    cost_usd: float
    budget_exhausted: bool
    message: str


def _pick_exemplars(example: Example, pool: list[Example], count: int, prompts_dir: str | None) -> list[Exemplar]:
    """In-context examples: the pool's first examples with gold rationales, else the built-in arithmetic ones."""
    chosen = [Exemplar(e.question, e.rationale, e.answer) for e in pool if e.rationale and e.id != example.id][:count]
    if len(chosen) == count:
        return chosen
    if example.answer_type == "number":
        return builtin_exemplars(prompts_dir)[:count]
    raise ConfigError(
        f"{example.dataset}: few_shot_cot and teacher_forcing need in-context examples, but this "
        f"task has no gold rationales and the built-in exemplars are arithmetic only"
    )


def plan_jobs(
    examples: list[Example],
    teacher_cfg: TeacherSection,
    round: int,
    strategies: list[str] | None = None,
    mistakes: dict[str, list[AttemptRecord]] | None = None,
) -> list[TeachingJob]:
    """One job per (example, teacher, strategy, sample index); tailored jobs only for examples with a mistake."""
    strategies = list(strategies if strategies is not None else teacher_cfg.strategies)
    if "tailored" in strategies and mistakes is None:
        raise ConfigError("teacher.strategies: 'tailored' needs the student's mistakes (none were given)")
    per_teacher = {teacher.name: _teacher_strategies(teacher, strategies) for teacher in teacher_cfg.teachers}
    jobs = []
    for example in examples:
        for teacher in teacher_cfg.teachers:
            for strategy in per_teacher[teacher.name]:
                mistake = None
                exemplars: list[Exemplar] = []
                if strategy == "tailored":
                    wrong = (mistakes or {}).get(example.id) or []
                    if not wrong:
                        continue
                    mistake = wrong[0]
                if strategy in ("few_shot_cot", "teacher_forcing"):
                    exemplars = _pick_exemplars(example, examples, teacher_cfg.exemplars, teacher_cfg.prompts_dir)
                samples = teacher_cfg.tailored_samples if strategy == "tailored" else teacher_cfg.diverse_samples
                for sample in range(samples):
                    jobs.append(TeachingJob(example, teacher, strategy, sample, round, exemplars, mistake))
    return jobs


def plan_round_jobs(targets: TeachingTargets, teacher_cfg: TeacherSection, round: int) -> list[TeachingJob]:
    """A round's jobs: its mistakes with the targets' strategies (tailored), and the questions it teaches
    without a mistake (`training.mistake_balance: category`) with the configured strategies."""
    if targets.mistakes is None:
        return plan_jobs(targets.examples, teacher_cfg, round, strategies=targets.strategies)
    mistaken = [e for e in targets.examples if e.id in targets.mistakes]
    right = [e for e in targets.examples if e.id not in targets.mistakes]
    jobs = plan_jobs(mistaken, teacher_cfg, round, strategies=targets.strategies, mistakes=targets.mistakes)
    return jobs + (plan_jobs(right, teacher_cfg, round) if right else [])


def _teacher_strategies(teacher: TeacherEndpoint, strategies: list[str]) -> list[str]:
    """The strategies `teacher` is asked with. A replay teacher cannot read a mistake: beside a teacher
    that tailors it re-explains the mistaken question (zero_shot_cot), as in a round of replay alone."""
    if teacher.backend != "replay":
        return strategies
    chosen = list(dict.fromkeys("zero_shot_cot" if s == "tailored" else s for s in strategies))
    other = [s for s in chosen if s != "zero_shot_cot"]
    if other:
        raise ConfigError(
            f"teacher '{teacher.name}': the replay backend serves only zero_shot_cot, not {', '.join(other)}"
        )
    return chosen


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
            text = b.tailored(job.example, mistake.get("output") or "", mistake.get("extracted"))
            return self._request("tailored", text)
        raise ConfigError(f"teacher.strategies: unknown strategy {job.strategy!r}")

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


def _max_cost(request: TeacherRequest, endpoint: TeacherEndpoint) -> float:
    """Worst-case cost of one attempt: estimated prompt tokens plus all of max_tokens."""
    return endpoint.price.cost_usd(request.tokens_in_estimate(), request.max_tokens)


# A job and the request it waits on
_Asked = tuple[JobRun, TeacherRequest]


@dataclass
class _Tally:
    """What a session has sent, found cached and spent so far, and whether the budget ran out."""

    sent: int = 0
    hits: int = 0
    cost: float = 0.0
    exhausted: bool = False


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
            estimate = _max_cost(request, self.endpoints[request.teacher])
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


def estimate_cost(jobs: list[TeachingJob], teacher_cfg: TeacherSection) -> dict[str, Any]:
    """Dry-run upper bound of a set of jobs, per teacher and in total, without sending or looking up anything.

    Stage-2 prompts (zero-shot CoT answer, crop's rp fallback) are counted as if every earlier stage
    used all of its max_tokens; crop counts both of its requests.
    """
    builder = PromptBuilder(load_templates(teacher_cfg.prompts_dir))
    per_teacher: dict[str, dict[str, Any]] = {
        t.name: {"requests": 0, "tokens_in": 0, "max_tokens_out": 0, "max_cost_usd": 0.0} for t in teacher_cfg.teachers
    }
    sources = AnswerSources(teacher_cfg)  # the keys do not count here; their data_dir does not matter
    for job in jobs:
        run = JobRun(job, builder, teacher_cfg, sources)
        first = run.first_request()
        requests = [first]
        if job.strategy == "zero_shot_cot":
            filler = "x" * (4 * teacher_cfg.max_tokens)  # a rationale as long as max_tokens allows
            requests.append(
                run._request(
                    "answer",
                    builder.zero_shot_answer(job.example, run.reason_prompt, filler),
                    max_tokens=ANSWER_STAGE_MAX_TOKENS,
                    temperature=0.0,
                )
            )
        elif job.strategy == "crop":
            requests.append(run._request("rp", builder.rp(job.example)))
        row = per_teacher[job.teacher.name]
        for request in requests:
            row["requests"] += 1
            row["tokens_in"] += request.tokens_in_estimate()
            row["max_tokens_out"] += request.max_tokens
            row["max_cost_usd"] += _max_cost(request, job.teacher)
    totals = {
        key: sum(row[key] for row in per_teacher.values())
        for key in ("requests", "tokens_in", "max_tokens_out", "max_cost_usd")
    }
    return {**totals, "teachers": per_teacher}
