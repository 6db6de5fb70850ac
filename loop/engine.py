"""The round engine: baseline, round 0 (multi-task core), tailored rounds; resumable phase by phase.

Each round follows its kind's plan (loop/round_plan.py). Each phase commits its outputs together
with its `done` mark in one transaction, and work inside a phase (exam chunks, teacher calls) is
stored as it finishes, so a run killed at any point resumes without repeating finished work or
paying the teacher twice.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from tutorloop.actors.teacher.health import TeacherUnavailable
from tutorloop.loop.console import console_to_log, elapsed_bar
from tutorloop.loop.core.config import Config
from tutorloop.loop.core.datasets import Example, answer_type_of
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.core.records import AttemptRecord, ContrastPairRecord, SampleRecord, TrainStepRecord
from tutorloop.loop.core.teardown import Teardown
from tutorloop.loop.curriculum import find_mistakes
from tutorloop.loop.formatting import next_steps, percent
from tutorloop.loop.planner import exam_draw, load_pool
from tutorloop.loop.round_plan import (
    BASELINE,
    RECHECK,
    ROUND_PLAN,
    TAILORED,
    Phase,
    derive_seed,
    planned_rounds,
    remove_trainer_state,
    round_kind,
    trainer_state_dir,
)
from tutorloop.loop.round_report import RoundReport, RoundState
from tutorloop.loop.run_teachers import RunTeachers
from tutorloop.loop.stopping import StopRequested, StopSignals
from tutorloop.loop.takeaway import takeaway
from tutorloop.loop.teach_phase import TeachPhase
from tutorloop.loop.tracking import Trackers, round_metrics
from tutorloop.loop.workers import RayWorkers, Workers
from tutorloop.store.history import RunHistory
from tutorloop.store.journal import TeacherJournal

LOG_FILE = "run.log"  # in the run directory


class RoundEngine:
    """Drives the rounds of one run directory; the only process that writes its history."""

    def __init__(self, cfg: Config, run_dir: Path, address: str | None = None, workers: Workers | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.history = RunHistory(run_dir)
        self.history.hold()  # released before every wait on actors or the teacher
        self.journal = TeacherJournal(run_dir)
        self.answer_type = answer_type_of(cfg.data)
        self.questions = load_pool(cfg)  # the pool without test duplicates, and the test split
        self.pool, self.test, self.val = self.questions.pool, self.questions.test, self.questions.val
        self.pool_duplicates, self.examples = self.questions.duplicates, self.questions.examples
        if workers is None:
            workers = RayWorkers(cfg, self.answer_type, address, log_file=run_dir / LOG_FILE)
        self.workers = workers
        self.trackers = Trackers(cfg, run_dir)  # run.report_to; nothing when the list is empty
        self.stopping = StopSignals()
        self.teachers = RunTeachers(cfg.teacher, run_dir)  # starts served teachers when a round needs them
        # Where the wall time went, for scripts/bench_loop.py: teacher waits measured by the teach
        # phase, model time reported by the actors at shutdown.
        self.seconds = {"teacher_wait_s": 0.0, "teacher_callbacks_s": 0.0}
        self.teaching = TeachPhase(
            cfg,
            run_dir,
            self.history,
            self.journal,
            self.teachers,
            self.questions,
            workers,
            self.stopping,
            self.seconds,
        )
        self.actor_seconds: dict[str, float] = {}
        self._phases: dict[str, Callable[[RoundState, Phase], None]] = {
            "exam": self._exam_pool,
            "teach": self.teaching.run,
            "train": self._train,
            "eval": self._evaluate,
        }
        self._resumed: dict[str, Callable[[RoundState], None]] = {
            "exam": self._exam_done,
            "teach": self.teaching.resumed,
            "train": lambda state: None,
            "eval": self._eval_done,
        }

    # ----- the run ---------------------------------------------------------------------------------
    def run(self) -> int:
        """All rounds the config plans, from wherever the history stands; the CLI's exit code.

        The terminal shows tutorloop's bars and summaries; warnings, logging and the actors' output go
        to the run's log file."""
        with console_to_log(self.run_dir / LOG_FILE):
            return self._run()

    def _duplicates_note(self) -> str:
        count = self.pool_duplicates
        return f" ({count} duplicate{'s' if count != 1 else ''} of test questions dropped)" if count else ""

    def _run(self) -> int:
        self.history.set_status("running")
        finished = False  # a teardown failure is raised only where no earlier error or stop is the news
        try:
            self.teachers.check_remote(
                {
                    round_kind(r)
                    for r in planned_rounds(self.cfg.run)
                    if r >= 0 and not self.history.phase_done(r, "teach")
                }
            )
            self.workers.start()
            self.history.release()
            with elapsed_bar(f"loading the student ({self.cfg.student.model})"):
                self.workers.wait_ready()
            self.seconds.update(self.workers.seconds)
            self.stopping.install()
            print(
                f"tutorloop: run {self.run_dir} | student {self.cfg.student.model} | task {self.cfg.data.task} | "
                f"pool {len(self.pool)}{self._duplicates_note()} | test {len(self.test)}"
                + (f" | val {len(self.val)}" if self.val else ""),
                flush=True,
            )
            message = self._rounds()
            self.history.set_status("finished", message)
            print(f"tutorloop: {message}. History: {self.history.path}", flush=True)
            self.history.release()  # the report reads the file read-only
            if self.cfg.run.report:
                from tutorloop.loop.report import write_report

                _, html = write_report(self.run_dir)
                print(f"tutorloop: report: {html}", flush=True)
            shown = takeaway(self.run_dir)
            if shown:
                print(shown, flush=True)
            print(next_steps(self.run_dir), flush=True)
            finished = True
            return 0
        except (KeyboardInterrupt, StopRequested):
            self.history.end("stopped", "interrupted")
            print(
                f"\ntutorloop: stopped at a safe point. Resume with: tutorloop resume {self.run_dir}",
                file=sys.stderr,
                flush=True,
            )
            return 130
        except TeacherUnavailable as exc:
            # The teacher's line names its address; add how to go on once it is back.
            self.history.end("failed", str(exc).splitlines()[0][:500])
            raise TeacherUnavailable(f"{exc}; resume with `tutorloop resume {self.run_dir}`") from None
        except Exception as exc:
            self.history.end("failed", str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__)
            raise
        finally:
            self.stopping.restore()
            self.history.release()
            teardown = Teardown()  # every step runs; failures go to the run's log
            teardown.step("close the teacher journal", self.journal.close)
            teardown.step("close the trackers", self.trackers.close)
            teardown.step("stop the teacher servers", self.teachers.close)  # before Ray goes: they are Ray actors
            self.actor_seconds = teardown.step("shut the workers down", self.workers.shutdown) or {}
            if finished:
                teardown.raise_first()

    def _rounds(self) -> str:
        """Runs the rounds not done yet; returns how the run ended."""
        accuracies: list[float] = []
        stop_reason = None
        for round_ in planned_rounds(self.cfg.run):
            if self.history.round_done(round_):
                accuracy = self.history.metric(round_, "test", "accuracy")
                print(
                    f"round {round_:>2} ({round_kind(round_)}): done earlier, test accuracy {percent(accuracy)}",
                    flush=True,
                )
            else:
                if stop_reason:
                    break
                self.stopping.check()
                report = self.run_round(round_)
                print(report.line(), flush=True)
                for note in report.notes:
                    print(f"  note: {note}", flush=True)
            if round_kind(round_) != BASELINE:
                accuracies.append(self.history.metric(round_, "test", "accuracy") or 0.0)
                stop_reason = self._stop_reason(accuracies)
        return f"stopped early: {stop_reason}" if stop_reason else "finished"

    def _stop_reason(self, accuracies: list[float]) -> str | None:
        patience = self.cfg.run.patience
        if patience and len(accuracies) > patience:
            if max(accuracies[-patience:]) <= max(accuracies[:-patience]):
                return f"test accuracy did not improve for {patience} round(s)"
        budget = self.cfg.teacher.max_cost_usd
        if budget is not None:
            spent = self.history.spent_usd()
            if self.history.budget_exhausted() or spent >= budget:
                return f"teacher budget spent (${spent:.4f} of ${budget:.4f})"
        return None

    def run_round(self, round_: int) -> RoundReport:
        """The phases of the round's kind in order; a phase done earlier only hands on what it stored."""
        started = time.monotonic()
        state = RoundState(round_, round_kind(round_), RoundReport(round_))
        for index, name in enumerate(ROUND_PLAN[state.kind]):
            if index:
                self.stopping.check()
            phase = Phase(self.history, round_, name)
            if phase.done:
                self._resumed[name](state)
                continue
            with phase:
                self._phases[name](state, phase)
        state.report.seconds = time.monotonic() - started
        self.history.close_round(round_, {"line": state.report.line(), "notes": state.report.notes})
        modes = list(dict.fromkeys(self.cfg.student.eval_modes + self.cfg.student.baseline_modes))
        self.trackers.log_round(round_, round_metrics(self.history, round_, modes))
        return state.report

    # ----- exams -----------------------------------------------------------------------------------
    def exam(
        self,
        round_: int,
        phase: str,
        examples: list[Example],
        mode: str,
        num_samples: int,
        greedy: bool,
        adapter: bytes | None,
        counted_in: str | None = None,
        split: str | None = None,
    ) -> list[AttemptRecord]:
        """The exam's attempts; questions answered earlier are skipped, each finished chunk stored at once
        and counted in the progress of the phase running it (`counted_in`, default the exam's own `phase`)."""
        # An eval's split is 'test' unless named ('val': the validation split, evaluated in the same phase).
        split = split or ("test" if phase == "eval" else "train")
        done_ids, next_batch = self.history.exam_progress(round_, phase, mode)
        todo = [e for e in examples if e.id not in done_ids]
        seed = derive_seed(self.cfg.run.seed, round_, f"{phase}/{mode}")
        with tqdm(
            total=len(examples),
            initial=len(examples) - len(todo),
            desc=f"round {round_} {phase} {mode}",
            unit="q",
            leave=False,
            dynamic_ncols=True,
        ) as bar:
            for chunk in self.workers.exam(
                todo, mode, num_samples, greedy, seed, adapter, on_wait=self.history.release
            ):
                self.history.store_attempts(
                    round_,
                    phase,
                    chunk.records,
                    len(chunk.examples),
                    split=split,
                    batch=next_batch + chunk.index,
                    counted_in=counted_in,
                )
                bar.update(len(chunk.examples))
                self.stopping.check()
        asked = {e.id for e in examples}  # the eval phase holds both the test and the validation attempts
        return [a for a in self.history.attempts(round_, phase, mode) if a["example_id"] in asked]

    def _exam_pool(self, state: RoundState, phase: Phase) -> None:
        """Tailored round step 1: the student answers (part of) the training pool; its mistakes drive the round."""
        gen = self.cfg.student.generation
        examined = exam_draw(self.cfg, self.questions, state.round)
        phase.begin(len(examined))
        attempts = self.exam(
            state.round,
            "exam",
            examined,
            self.cfg.student.exam_mode,
            gen.num_samples,
            gen.num_samples == 1,
            self._adapter(state.round - 1),
        )
        state.mistakes = find_mistakes(attempts)
        state.report.mistakes = len(state.mistakes)
        accuracy = sum(a["correct"] for a in attempts) / max(len(attempts), 1)
        phase.outputs.metrics["train"] = {"accuracy": accuracy, "mistakes": len(state.mistakes)}
        phase.outputs.info = {"mistakes": len(state.mistakes)}

    def _exam_done(self, state: RoundState) -> None:
        state.mistakes = find_mistakes(self.history.attempts(state.round, "exam", self.cfg.student.exam_mode))
        state.report.mistakes = len(state.mistakes)

    def _evaluate(self, state: RoundState, phase: Phase) -> None:
        modes = list(self.cfg.student.eval_modes)
        if state.kind == BASELINE:  # the fair baseline: also formats the untrained student knows
            modes += [m for m in self.cfg.student.baseline_modes if m not in modes]
        adapter = self._adapter(state.round)
        recheck = self._recheck_questions(state)
        phase.begin((len(self.test) + len(self.val)) * len(modes) + len(recheck))
        values, val_values = {}, {}
        for mode in modes:
            attempts = self.exam(state.round, "eval", self.test, mode, 1, True, adapter)
            values[f"accuracy_{mode}"] = sum(a["correct"] for a in attempts) / max(len(attempts), 1)
            if self.val:
                attempts = self.exam(state.round, "eval", self.val, mode, 1, True, adapter, split="val")
                val_values[f"accuracy_{mode}"] = sum(a["correct"] for a in attempts) / len(attempts)
        if recheck:
            self.exam(state.round, RECHECK, recheck, self.cfg.student.exam_mode, 1, True, adapter, counted_in="eval")
        values["accuracy"] = values[f"accuracy_{modes[0]}"]
        if state.kind == BASELINE and len(modes) > 1:
            state.report.notes.append(
                "baseline by mode: " + ", ".join(f"{mode} {percent(values[f'accuracy_{mode}'])}" for mode in modes)
            )
        phase.outputs.metrics["test"] = values
        if val_values:
            phase.outputs.metrics["val"] = {**val_values, "accuracy": val_values[f"accuracy_{modes[0]}"]}
        state.report.test_accuracy = values["accuracy"]

    def _recheck_questions(self, state: RoundState) -> list[Example]:
        """A tailored round's pool mistakes, examined again once it has trained (student.recheck_mistakes)."""
        if state.kind != TAILORED or not self.cfg.student.recheck_mistakes or not state.mistakes:
            return []
        return [self.examples[example_id] for example_id in state.mistakes]

    def _eval_done(self, state: RoundState) -> None:
        state.report.test_accuracy = self.history.metric(state.round, "test", "accuracy")

    # ----- training --------------------------------------------------------------------------------
    def _train(self, state: RoundState, phase: Phase) -> None:
        round_ = state.round
        samples, pairs = self.history.round_samples(round_), self.history.round_pairs(round_)
        phase.begin(None)  # optimizer steps: the trainer's plan sets the total before its first step
        state_dir = trainer_state_dir(self.run_dir, round_)
        if samples or pairs:
            init = None
            if state.kind == TAILORED and self.cfg.training.continue_from_previous:
                init = self._adapter(round_ - 1)
            adapter, steps = self._run_training(round_, samples, pairs, init, state_dir)
            self.trackers.log_steps(round_, steps)
        elif state.kind == TAILORED:
            # Nothing new to learn (no mistakes, or no usable rationale): keep the previous adapter.
            adapter, steps = self._adapter(round_ - 1), []
        else:
            raise RunError(
                f"{self.run_dir}: round 0 built no training samples for training.tasks="
                f"{self.cfg.training.tasks} from its teacher rationales"
            )
        phase.outputs.adapter = self._save_adapter(round_, adapter)
        phase.outputs.train_steps = steps
        if steps:
            phase.outputs.metrics["train"] = {
                "train_loss_last": steps[-1]["loss"],
                "train_loss_first": steps[0]["loss"],
            }
        phase.outputs.info = {"steps": len(steps)}
        phase.after_commit(lambda: remove_trainer_state(self.run_dir, round_))

    def _run_training(
        self,
        round_: int,
        samples: list[SampleRecord],
        pairs: list[ContrastPairRecord],
        init: bytes | None,
        checkpoint_dir: Path,
    ) -> tuple[bytes, list[TrainStepRecord]]:
        """The trainer's adapter and step records; the steps move a bar and the phase's progress as they
        come, and a stop request ends the training at once (it resumes from its last checkpoint)."""
        with tqdm(desc=f"round {round_} train", unit="step", leave=False, dynamic_ncols=True) as bar:

            def on_progress(total: int, done: int, last: dict | None) -> None:
                bar.total, bar.n = total, done
                if last is not None:
                    bar.set_postfix(loss=f"{last['loss']:.3f}", refresh=False)
                bar.refresh()
                self.history.set_progress(round_, "train", done, total)
                self.history.release()  # readers get the file back while the trainer works

            self.history.release()
            result = self.workers.train(
                samples,
                pairs,
                init,
                str(checkpoint_dir),
                on_progress,
                self.stopping.check,
                seed=derive_seed(self.cfg.run.seed, round_, "train"),
            )
        return result["adapter"], result["steps"]

    # ----- adapters --------------------------------------------------------------------------------
    def _adapter(self, round_: int) -> bytes | None:
        """Adapter trained in `round_` (None for the untrained student of the baseline)."""
        if round_kind(round_) == BASELINE:
            return None
        from tutorloop.actors.models import adapter_to_bytes

        return adapter_to_bytes(self.history.adapter_dir(round_))

    def _save_adapter(self, round_: int, adapter: bytes) -> tuple[str, str]:
        """Unpacks the round's adapter into adapters/round-<k>; returns its relative path and sha256."""
        from tutorloop.actors.models import adapter_from_bytes

        relative = Path("adapters") / f"round-{round_}"
        target = self.run_dir / relative
        if target.exists():
            shutil.rmtree(target)
        adapter_from_bytes(adapter, target)
        return str(relative), hashlib.sha256(adapter).hexdigest()
