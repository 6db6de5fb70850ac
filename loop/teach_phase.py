"""A round's teach phase: the teaching session over the round's jobs, and the training data built from its answers.

Answers are stored as they arrive (the journal first), so a run stopped mid-phase resumes without
paying the teacher twice; the phase's rationales, samples and contrast pairs commit with its mark.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tutorloop.loop.core.config import Config
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.core.records import ContrastPairRecord, RationaleRecord, SampleRecord
from tutorloop.loop.curriculum import TeachingTargets, build_contrast_pairs, build_samples, replay_samples
from tutorloop.loop.planner import Pool, plan_teaching
from tutorloop.loop.round_plan import CORE, TAILORED, Phase
from tutorloop.loop.round_report import RoundReport, RoundState
from tutorloop.loop.run_teachers import RunTeachers
from tutorloop.loop.stopping import StopSignals
from tutorloop.loop.tailored_reply import tailored_example
from tutorloop.loop.workers import Workers
from tutorloop.store.history import RunHistory
from tutorloop.store.journal import TeacherJournal

if TYPE_CHECKING:
    from tutorloop.loop.teaching import TeachingOutcome
    from tutorloop.loop.teaching_job import TeachingJob

READERS_EVERY_S = 1.0  # a driver busy storing fast teacher answers still lets readers in this often


class TeachPhase:
    """The teach phase of the rounds of one run; shares the engine's history, journal, teachers and workers."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        history: RunHistory,
        journal: TeacherJournal,
        teachers: RunTeachers,
        questions: Pool,
        workers: Workers,
        stopping: StopSignals,
        seconds: dict[str, float],
    ) -> None:
        self.cfg, self.run_dir, self.history, self.journal = cfg, run_dir, history, journal
        self.teachers, self.questions, self.workers, self.stopping = teachers, questions, workers, stopping
        self.seconds = seconds  # the engine's wall-time split: teacher waits and callbacks are added here
        self._calls_rekeyed = False  # answers a run stored under the teacher's old cache key (loop/call_keys.py)

    def run(self, state: RoundState, phase: Phase) -> None:
        """Teacher rationales -> graded -> samples and contrast pairs, committed with the phase mark."""
        training, report = self.cfg.training, state.report
        plan = plan_teaching(self.cfg, self.questions, state.round, state.mistakes)
        targets, jobs, seed = plan.targets, plan.jobs, plan.seed
        phase.begin(len(jobs))
        budget = training.accepted_budget_of(state.round) if state.kind == TAILORED and jobs else None
        outcome, asked = self._ask_teacher(jobs, report, state.kind, budget)
        if asked is not None:  # only the questions asked before the accepted budget was met are taught
            targets = replace(targets, examples=[self.questions.examples[i] for i in asked])
        rationales = outcome.rationales
        example = (
            tailored_example(rationales, state.mistakes or {}, self.questions.examples)
            if state.kind == TAILORED
            else None
        )
        if example:
            report.notes.append(example)
        accepted = sum(1 for r in rationales if r["accepted"])
        if state.kind == CORE and not accepted and set(training.tasks) - {"answer"}:
            self.history.keep_graded_rationales(state.round, rationales)  # what the message points at
            rejected = (
                ", ".join(
                    f"{reason} {count}"
                    for reason, count in Counter(r["reject_reason"] for r in rationales).most_common()
                )
                or "no teacher jobs"
            )
            raise RunError(
                f"{self.run_dir}: round 0 got no accepted teacher rationale to train on ({rejected}); "
                f'see `tutorloop sql {self.run_dir} "SELECT * FROM teacher_yield"`'
            )
        samples, pairs = self._curriculum(state, rationales, targets, seed)
        phase.outputs.rows = {"rationales": rationales, "samples": samples, "contrast_pairs": pairs}
        phase.outputs.metrics["train"] = {
            "teacher_calls": outcome.calls_sent,
            "cache_hits": outcome.cache_hits,
            "teacher_cost_usd": outcome.cost_usd,
            "rationales_accepted": accepted,
            "samples": len(samples),
            "contrast_pairs": len(pairs),
            "budget_exhausted": float(outcome.budget_exhausted),
        }
        if state.kind == CORE:  # recorded once per run, with the round that trains on the pool first
            phase.outputs.metrics["train"]["pool_test_duplicates"] = self.questions.duplicates
        phase.outputs.info = {"message": outcome.message}
        phase.after_commit(self.journal.clear)

    def resumed(self, state: RoundState) -> None:
        """A teach phase done earlier: its counts back on the report."""
        self.journal.clear()  # left by a kill between the phase's commit and its clean-up
        metric = self.history.metric
        state.report.teacher_calls = int(metric(state.round, "train", "teacher_calls") or 0)
        state.report.cache_hits = int(metric(state.round, "train", "cache_hits") or 0)
        state.report.cost_usd = float(metric(state.round, "train", "teacher_cost_usd") or 0)

    def _ask_teacher(
        self, jobs: list[TeachingJob], report: RoundReport, kind: str, budget: int | None
    ) -> tuple[TeachingOutcome, list[str] | None]:
        """The teaching session over `jobs` (served teachers started first): answers stored as they come,
        the journal's first. With an accepted `budget`, sessions over batches of the jobs' questions until
        it is met, and the ids of the questions asked (else None)."""
        from tutorloop.actors.teacher.sources import AnswerSources
        from tutorloop.loop.call_keys import rekey_legacy_calls
        from tutorloop.loop.teaching import TeachingSession, teach_until_accepted

        recovered, in_flight = self.history.recover_answers(self.journal)
        if recovered or in_flight:
            report.notes.append(
                f"resumed teaching: {recovered} answers recovered from {self.journal.path.name}; "
                f"{in_flight} requests were in flight at the stop and are sent again"
            )
        if not self._calls_rekeyed:  # once, and after the journal's answers: they may hold old keys too
            rekey_legacy_calls(self.history, self.cfg.teacher, self.cfg.data.data_dir)
            self._calls_rekeyed = True
        self.history.release()  # a server may take a while to load
        teachers, started = self.teachers.for_round(kind, start=bool(jobs))
        report.notes += started
        finished = [0]  # jobs of earlier batches, so the phase's progress counts on across them

        def run_session(batch: list[TeachingJob]) -> TeachingOutcome:
            outcome = TeachingSession(
                teachers,
                batch,
                lookup=self._cached_calls,
                executor=self.workers.teacher(teachers),
                persist=self._persist_calls,
                spent_usd=self.history.spent_usd(),
                on_wait=self.history.release,
                journal=self.journal,
                on_jobs_done=lambda done: self.history.set_progress(report.round, "teach", finished[0] + done),
                sources=AnswerSources(self.cfg.teacher, self.cfg.data.data_dir),
            ).run()
            finished[0] += len(batch)
            return outcome

        callbacks_before = self.seconds["teacher_callbacks_s"]
        waited = time.monotonic()
        outcome, asked = teach_until_accepted(jobs, budget, run_session) if budget else (run_session(jobs), None)
        self.seconds["teacher_wait_s"] += (
            time.monotonic() - waited - (self.seconds["teacher_callbacks_s"] - callbacks_before)
        )
        report.teacher_calls, report.cache_hits = outcome.calls_sent, outcome.cache_hits
        report.cost_usd, report.budget_exhausted = outcome.cost_usd, outcome.budget_exhausted
        if outcome.budget_exhausted or budget:
            report.notes.append(outcome.message)
        return outcome, asked

    def _cached_calls(self, hashes: list[str]) -> dict[str, dict]:
        started = time.monotonic()
        try:
            found = self.history.stored_calls(hashes)
            missing = [key for key in hashes if key not in found]
            return found | self.history.reuse_shared_calls(missing)  # paid by another run of the experiment
        finally:
            self.seconds["teacher_callbacks_s"] += time.monotonic() - started

    def _persist_calls(self, records: list[dict]) -> None:
        started = time.monotonic()
        self.history.persist_calls(records)
        self.history.release_if_held(READERS_EVERY_S)
        self.seconds["teacher_callbacks_s"] += time.monotonic() - started
        self.stopping.check()

    def _curriculum(
        self, state: RoundState, rationales: list[RationaleRecord], targets: TeachingTargets, seed: int
    ) -> tuple[list[SampleRecord], list[ContrastPairRecord]]:
        """The round's training data: multi-task samples, and in tailored rounds contrast pairs and replay."""
        training = self.cfg.training
        weights = {t.name: t.loss_weight for t in self.cfg.teacher.teachers}
        samples = build_samples(
            self.questions.examples, rationales, training.tasks, weights, [t.id for t in targets.examples]
        )
        # A tagged teacher's rationale trains its own prefix and also the plain explain prompt, the one
        # the exam and eval ask with: else a tagged teacher's lessons would never reach the eval.
        tagged = [
            dict(r, task="explain") for r in rationales if r["accepted"] and r.get("task") not in (None, "explain")
        ]
        if "explain" in training.tasks and tagged:
            samples += build_samples(self.questions.examples, tagged, ["explain"], weights, [])
        pairs: list[ContrastPairRecord] = []
        if state.kind == TAILORED and training.reflection != "none":
            built = build_contrast_pairs(
                self.questions.examples,
                rationales,
                state.mistakes or {},
                self.history.earlier_rationales(state.round),
                training.max_pairs_per_question,
            )
            pairs = built.pairs
            state.report.notes.append(built.note())
        if state.kind == TAILORED and training.replay_fraction > 0:
            earlier = self.history.earlier_samples(state.round)
            samples += replay_samples(earlier, len(samples), training.replay_fraction, seed)
        return samples, pairs
