"""The round engine: baseline, round 0 (multi-task core), tailored rounds; resumable phase by phase.

Each phase commits its outputs together with its `done` mark in one transaction, and work inside a
phase (exam batches, teacher calls) is stored as it finishes, so a run killed at any point resumes
without repeating finished work or paying the teacher twice.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray
import yaml
from tqdm import tqdm

from tutorloop.loop import cluster
from tutorloop.loop.config import (RESUME_SAFE_KEYS, Config, ConfigError, apply_overrides, changed_keys,
                                   config_from_dict)
from tutorloop.loop.errors import RunError
from tutorloop.loop.curriculum import (build_contrast_pairs, build_samples, find_mistakes, order_mistakes,
                                       random_selection, replay_samples)
from tutorloop.loop.datasets import Example, answer_type_of, load_examples
from tutorloop.actors.teacher import WAIT_GRACE_S
from tutorloop.store.journal import TeacherJournal
from tutorloop.store.writer import StoreWriter

HISTORY = "history.duckdb"
CONFIG_FILE = "config.yaml"
EXAM_CHUNK_BATCHES = 4  # exam work is stored every this many generation batches
READERS_EVERY_S = 1.0  # a driver busy storing fast teacher answers still lets readers in this often


class StopRequested(Exception):
    """Ctrl-C or SIGTERM: stop at the next safe point."""


def derive_seed(seed: int, round_: int, phase: str) -> int:
    """Seeds from (run seed, round, phase): a resumed phase draws the same numbers as the first try."""
    digest = hashlib.sha256(f"{seed}/{round_}/{phase}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def round_kind(round_: int) -> str:
    return "baseline" if round_ < 0 else "core" if round_ == 0 else "tailored"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("tutorloop", "torch", "transformers", "peft", "ray", "duckdb", "openai"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


@dataclass
class RoundReport:
    round: int
    test_accuracy: float | None = None
    mistakes: int | None = None
    teacher_calls: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    budget_exhausted: bool = False
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        acc = "-" if self.test_accuracy is None else f"{self.test_accuracy:.1%}"
        mistakes = "-" if self.mistakes is None else str(self.mistakes)
        return (f"round {self.round:>2} ({round_kind(self.round)}): test accuracy {acc} | mistakes {mistakes} | "
                f"teacher calls {self.teacher_calls} (cache hits {self.cache_hits}) | "
                f"cost ${self.cost_usd:.4f} | {self.seconds:.0f}s")


class RoundEngine:
    """Drives the rounds of one run directory; the only process that writes its history."""

    def __init__(self, cfg: Config, run_dir: Path, address: str | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.address = address
        self.writer = StoreWriter(run_dir / HISTORY)
        self.writer.hold()  # released before every wait on actors or the teacher
        self.journal = TeacherJournal(run_dir)
        self.answer_type = answer_type_of(cfg.data)
        self.pool = load_examples(cfg.data, "train")
        self.test = load_examples(cfg.data, "test")
        self.examples = {e.id: e for e in self.pool + self.test}
        self._students: list = []
        self._trainer = None
        self._teacher_pool = None
        self._owns_ray = False
        self._stop = False
        # Where the wall time went, for scripts/bench_loop.py: teacher waits measured here, model
        # time reported by the actors at shutdown.
        self.seconds = {"teacher_wait_s": 0.0, "teacher_callbacks_s": 0.0}
        self.actor_seconds: dict[str, float] = {}

    # ----- store helpers -------------------------------------------------------------------------
    def _phase_done(self, round_: int, name: str) -> bool:
        rows = self.writer.fetch("SELECT status FROM phases WHERE round = ? AND name = ?", [round_, name])
        return bool(rows) and rows[0][0] == "done"

    def _begin_phase(self, round_: int, name: str, total: int) -> float:
        with self.writer.transaction() as tx:
            tx.execute("INSERT OR IGNORE INTO rounds (round, kind, status, started_at) "
                       "VALUES (?, ?, 'running', current_timestamp)", [round_, round_kind(round_)])
            tx.execute("INSERT OR REPLACE INTO phases (round, name, status, started_at, progress, total) "
                       "VALUES (?, ?, 'running', current_timestamp, "
                       "coalesce((SELECT progress FROM phases WHERE round = ? AND name = ?), 0), ?)",
                       [round_, name, round_, name, total])
        return time.monotonic()

    def _finish_phase(self, tx, round_: int, name: str, started: float, info: dict | None = None) -> None:
        tx.execute("UPDATE phases SET status = 'done', finished_at = current_timestamp, progress = total, "
                   "seconds = coalesce(seconds, 0) + ?, info = ? WHERE round = ? AND name = ?",
                   [time.monotonic() - started, info or {}, round_, name])

    def _metrics(self, tx, round_: int, split: str, values: dict[str, float]) -> None:
        tx.insert("metrics", [{"round": round_, "split": split, "name": k, "value": float(v)}
                              for k, v in values.items() if v is not None])

    def _metric(self, round_: int, split: str, name: str) -> float | None:
        rows = self.writer.fetch("SELECT value FROM metrics WHERE round = ? AND split = ? AND name = ?",
                                 [round_, split, name])
        return rows[0][0] if rows else None

    def _adapter(self, round_: int) -> bytes | None:
        """Adapter trained in `round_` (None for the untrained student)."""
        if round_ < 0:
            return None
        from tutorloop.actors.models import adapter_to_bytes

        rows = self.writer.fetch("SELECT path FROM checkpoints WHERE round = ? AND kind = 'adapter'", [round_])
        if not rows:
            raise RunError(f"{self.run_dir}: round {round_} has no stored adapter")
        return adapter_to_bytes(self.run_dir / rows[0][0])

    def _wait_releasing(self, refs: list) -> list:
        """ray.wait for one result; the history is let go (readers get their turn) only for a real wait."""
        ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_GRACE_S)
        if not ready:
            self.writer.release()
            ready, _ = ray.wait(refs, num_returns=1)
        return ready

    # ----- actors ----------------------------------------------------------------------------------
    def _start_cluster(self) -> None:
        from tutorloop.actors.student import StudentActor, student_actor_options

        started = time.monotonic()
        self._owns_ray = cluster.start_ray(self.cfg, self.address)
        self.seconds["ray_start_s"] = time.monotonic() - started
        missing = cluster.missing_cpus(self.cfg)
        if missing > 0:
            raise RunError(f"the Ray cluster has {missing:g} CPU(s) too few for the actors this config asks for "
                           f"(ray.*_cpus, ray.num_students, teacher.num_actors); add nodes or lower them")
        student_opts = student_actor_options(self.cfg.ray, "student")
        self._students = [
            StudentActor.options(**student_opts).remote(self.cfg.student, self.answer_type, self.cfg.run.seed,
                                                        self.cfg.ray.torch_threads)
            for _ in range(self.cfg.ray.num_students)
        ]
        self._trainer_opts = student_actor_options(self.cfg.ray, "trainer")
        self._trainer_actor()  # starts now, so its start-up overlaps the students'

    def _trainer_actor(self):
        from tutorloop.actors.trainer import TrainerActor

        if self._trainer is None:
            self._trainer = TrainerActor.options(**self._trainer_opts).remote(
                self.cfg.student, self.cfg.training, self.cfg.run.seed, self.cfg.ray.torch_threads)
        return self._trainer

    def _executor(self):
        from tutorloop.actors.teacher import RayTeacherPool

        if self._teacher_pool is None:
            self._teacher_pool = RayTeacherPool(self.cfg.teacher, self.cfg.teacher.num_actors,
                                                data_dir=self.cfg.data.data_dir, num_cpus=self.cfg.ray.teacher_cpus)
        return self._teacher_pool

    def _collect_actor_seconds(self) -> None:
        actors = self._students + ([self._trainer] if self._trainer is not None else [])
        try:
            for timings in ray.get([a.timings.remote() for a in actors], timeout=30):
                for key, value in timings.items():
                    # Actors boot side by side, so the wall time their boots take is the longest one.
                    merge = max if key == "boot_s" else float.__add__
                    self.actor_seconds[key] = merge(self.actor_seconds.get(key, 0.0), float(value))
        except (ray.exceptions.RayError, TimeoutError):
            pass  # accounting only; a dead actor must not stop the shutdown

    def _shutdown(self) -> None:
        self._collect_actor_seconds()
        self.journal.close()
        if self._teacher_pool is not None:
            self._teacher_pool.close()
        for actor in self._students + ([self._trainer] if self._trainer is not None else []):
            ray.kill(actor)
        self._students, self._trainer, self._teacher_pool = [], None, None
        if self._owns_ray:
            ray.shutdown()

    # ----- phases ----------------------------------------------------------------------------------
    def exam(self, round_: int, phase: str, examples: list[Example], mode: str, num_samples: int,
             greedy: bool, adapter: bytes | None) -> list[dict]:
        """Exam sharded over the student actors in chunks; each finished chunk is stored at once."""
        split = "test" if phase == "eval" else "train"
        done_rows = self.writer.fetch(
            "SELECT DISTINCT example_id, batch FROM attempts WHERE round = ? AND phase = ? AND mode = ?",
            [round_, phase, mode])
        done_ids = {r[0] for r in done_rows}
        next_batch = max((r[1] for r in done_rows), default=-1) + 1
        todo = [e for e in examples if e.id not in done_ids]
        chunk = self.cfg.student.generation.batch_size * EXAM_CHUNK_BATCHES
        chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
        seed = derive_seed(self.cfg.run.seed, round_, f"{phase}/{mode}")
        adapter_ref = ray.put(adapter)
        bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc=f"round {round_} {phase} {mode}",
                   unit="q", leave=False, dynamic_ncols=True)
        pending: dict = {}
        queue = list(enumerate(chunks))
        idle = list(self._students)
        try:
            while queue or pending:
                while queue and idle:
                    index, part = queue.pop(0)
                    actor = idle.pop()
                    ref = actor.exam.remote(part, mode, num_samples, greedy, seed, adapter_ref)
                    pending[ref] = (index, part, actor)
                ready = self._wait_releasing(list(pending))
                index, part, actor = pending.pop(ready[0])
                idle.append(actor)
                records = ray.get(ready[0])
                rows = [dict(r, round=round_, phase=phase, split=split, batch=next_batch + index) for r in records]
                with self.writer.transaction() as tx:
                    tx.insert("attempts", rows)
                    tx.execute("UPDATE phases SET progress = progress + ? WHERE round = ? AND name = ?",
                               [len(part), round_, phase])
                bar.update(len(part))
                self._check_stop()
        finally:
            bar.close()
        rows = self.writer.fetch(
            "SELECT example_id, sample_index, mode, output, extracted, correct FROM attempts "
            "WHERE round = ? AND phase = ? AND mode = ?", [round_, phase, mode])
        keys = ("example_id", "sample_index", "mode", "output", "extracted", "correct")
        return [dict(zip(keys, r)) for r in rows]

    def _pool_exam(self, round_: int, adapter: bytes | None) -> dict[str, list[dict]]:
        """Tailored round step 1: the student answers the training pool; returns its mistakes."""
        mode = self.cfg.student.exam_mode
        if self._phase_done(round_, "exam"):
            attempts = self.exam(round_, "exam", [], mode, 1, True, None)
            return find_mistakes(attempts)
        gen = self.cfg.student.generation
        examined = self.pool
        size = self.cfg.training.exam_size
        if size is not None and size < len(self.pool):
            drawn = random_selection(self.pool, size, derive_seed(self.cfg.run.seed, round_, "exam-draw"))
            examined = [self.examples[i] for i in drawn]
        started = self._begin_phase(round_, "exam", len(examined))
        greedy = gen.num_samples == 1
        attempts = self.exam(round_, "exam", examined, mode, gen.num_samples, greedy, adapter)
        mistakes = find_mistakes(attempts)
        accuracy = sum(a["correct"] for a in attempts) / max(len(attempts), 1)
        with self.writer.transaction() as tx:
            self._metrics(tx, round_, "train", {"accuracy": accuracy, "mistakes": len(mistakes)})
            self._finish_phase(tx, round_, "exam", started, {"mistakes": len(mistakes)})
        return mistakes

    def _teach(self, round_: int, report: RoundReport, mistakes: dict[str, list[dict]] | None) -> None:
        """Teacher rationales -> graded -> samples and contrast pairs, committed with the phase mark."""
        from tutorloop.loop.teaching import TeachingSession, plan_jobs

        if self._phase_done(round_, "teach"):
            self.journal.clear()  # left by a kill between the phase's commit and its clean-up
            report.teacher_calls = int(self._metric(round_, "train", "teacher_calls") or 0)
            report.cache_hits = int(self._metric(round_, "train", "cache_hits") or 0)
            report.cost_usd = float(self._metric(round_, "train", "teacher_cost_usd") or 0)
            return
        seed = derive_seed(self.cfg.run.seed, round_, "teach")
        training = self.cfg.training
        if round_ == 0:
            targets = list(self.pool)
            strategies = list(self.cfg.teacher.strategies)
            job_mistakes = None
        else:
            ordered = order_mistakes(mistakes or {}, training.mistake_order, training.max_mistakes, seed)
            if training.selection == "random":
                # Ablation without tailoring: as many questions, drawn at random, taught as in round 0.
                ordered = random_selection(self.pool, len(ordered), seed)
                strategies, job_mistakes = list(self.cfg.teacher.strategies), None
            else:
                strategies = self._tailored_strategies()
                job_mistakes = {i: mistakes[i] for i in ordered}
            targets = [self.examples[i] for i in ordered]
        report.mistakes = len(mistakes) if mistakes is not None else None
        jobs = plan_jobs(targets, self.cfg.teacher, round_, strategies=strategies, mistakes=job_mistakes)
        if set(training.tasks) == {"answer"}:
            jobs = []  # fine-tuning on gold answers alone (the answer-only baseline) needs no teacher
        started = self._begin_phase(round_, "teach", len(jobs))
        self._recover_journal(report)
        spent = self.writer.fetch("SELECT coalesce(sum(cost_usd), 0) FROM teacher_calls")[0][0]
        session = TeachingSession(self.cfg.teacher, jobs, lookup=self._cached_calls, executor=self._executor(),
                                  persist=self._persist_calls, spent_usd=float(spent), on_wait=self.writer.release,
                                  journal=self.journal)
        callbacks_before = self.seconds["teacher_callbacks_s"]
        waited = time.monotonic()
        outcome = session.run()
        self.seconds["teacher_wait_s"] += (time.monotonic() - waited
                                           - (self.seconds["teacher_callbacks_s"] - callbacks_before))
        report.teacher_calls, report.cache_hits = outcome.calls_sent, outcome.cache_hits
        report.cost_usd, report.budget_exhausted = outcome.cost_usd, outcome.budget_exhausted
        if outcome.budget_exhausted:
            report.notes.append(outcome.message)
        rationales = [dict(r, round=round_) for r in outcome.rationales]
        weights = {t.name: t.loss_weight for t in self.cfg.teacher.teachers}
        samples = build_samples(round_, self.examples, rationales, training.tasks, weights,
                                [t.id for t in targets])
        pairs: list[dict] = []
        if round_ > 0 and training.reflection != "none":
            pairs = build_contrast_pairs(round_, self.examples, rationales, mistakes or {},
                                         self._earlier_rationales(round_))
        if round_ > 0 and training.replay_fraction > 0:
            earlier = self._earlier_samples(round_)
            samples += replay_samples(round_, earlier, len(samples), training.replay_fraction, seed)
        accepted = sum(1 for r in rationales if r["accepted"])
        if round_ == 0 and not accepted and set(training.tasks) - {"answer"}:
            raise RunError(f"{self.run_dir}: round 0 got no accepted teacher rationale to train on; "
                           f"see `tutorloop sql {self.run_dir} \"SELECT * FROM teacher_yield\"`")
        with self.writer.transaction() as tx:
            tx.insert("rationales", rationales)
            tx.insert("samples", samples)
            tx.insert("contrast_pairs", pairs)
            self._metrics(tx, round_, "train", {
                "teacher_calls": outcome.calls_sent, "cache_hits": outcome.cache_hits,
                "teacher_cost_usd": outcome.cost_usd, "rationales_accepted": accepted,
                "samples": len(samples), "contrast_pairs": len(pairs),
                "budget_exhausted": float(outcome.budget_exhausted)})
            self._finish_phase(tx, round_, "teach", started, {"message": outcome.message})
        self.journal.clear()

    def _recover_journal(self, report: RoundReport) -> None:
        """After a kill: store the answers that arrived but missed the history, and say what goes out again."""
        recovered = self.journal.recover()
        if not recovered.answers and not recovered.in_flight:
            return
        stored = self._stored_calls([a["request_hash"] for a in recovered.answers])
        missing = [a for a in recovered.answers if a["request_hash"] not in stored]
        if missing:
            self._persist_calls(missing)
        report.notes.append(f"resumed teaching: {len(missing)} answers recovered from {self.journal.path.name}; "
                            f"{len(recovered.in_flight)} requests were in flight at the stop and are sent again")

    def _tailored_strategies(self) -> list[str]:
        """`tailored` where a teacher can write corrections; a replay teacher can only re-explain."""
        backends = {t.backend for t in self.cfg.teacher.teachers}
        return ["tailored"] if backends - {"replay"} else ["zero_shot_cot"]

    def _cached_calls(self, hashes: list[str]) -> dict[str, dict]:
        if not hashes:
            return {}
        started = time.monotonic()
        try:
            return self._stored_calls(hashes)
        finally:
            self.seconds["teacher_callbacks_s"] += time.monotonic() - started

    def _stored_calls(self, hashes: list[str]) -> dict[str, dict]:
        rows = self.writer.fetch("SELECT * FROM teacher_calls WHERE request_hash IN (SELECT unnest(?))",
                                 [hashes])
        columns = [r[0] for r in self.writer.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'teacher_calls' "
            "ORDER BY ordinal_position")]
        return {row[0]: dict(zip(columns, row)) for row in rows}

    def _persist_calls(self, records: list[dict]) -> None:
        started = time.monotonic()
        with self.writer.transaction() as tx:
            tx.insert("teacher_calls", records, ignore_duplicates=True)
            tx.execute("UPDATE phases SET progress = progress + ? WHERE status = 'running' AND name = 'teach'",
                       [len(records)])
        self.writer.release_if_held(READERS_EVERY_S)
        self.seconds["teacher_callbacks_s"] += time.monotonic() - started
        self._check_stop()

    def _earlier_rationales(self, round_: int) -> dict[str, list[str]]:
        rows = self.writer.fetch("SELECT example_id, rationale FROM rationales WHERE accepted AND round < ? "
                                 "ORDER BY round, sample_index, strategy, teacher, rationale", [round_])
        found: dict[str, list[str]] = {}
        for example_id, text in rows:
            found.setdefault(example_id, []).append(text)
        return found

    def _earlier_samples(self, round_: int) -> list[dict]:
        rows = self.writer.fetch("SELECT round, example_id, task, source, input, target, weight FROM samples "
                                 "WHERE round < ? AND source NOT LIKE 'replay:%' "
                                 "ORDER BY round, example_id, task, source, target, input",
                                 [round_])
        keys = ("round", "example_id", "task", "source", "input", "target", "weight")
        return [dict(zip(keys, r)) for r in rows]

    def _train(self, round_: int) -> None:
        if self._phase_done(round_, "train"):
            return
        from tutorloop.actors.models import adapter_from_bytes

        keys = ("example_id", "task", "input", "target", "weight")
        samples = [dict(zip(keys, r)) for r in self.writer.fetch(
            f"SELECT {', '.join(keys)} FROM samples WHERE round = ? ORDER BY example_id, task, source, target, input",
            [round_])]
        pair_keys = ("example_id", "input", "anchor", "positive", "negative")
        pairs = [dict(zip(pair_keys, r)) for r in self.writer.fetch(
            f"SELECT {', '.join(pair_keys)} FROM contrast_pairs WHERE round = ? "
            "ORDER BY example_id, anchor, positive, negative", [round_])]
        started = self._begin_phase(round_, "train", len(samples))
        init = None
        if round_ > 0 and self.cfg.training.continue_from_previous:
            init = self._adapter(round_ - 1)
        if samples or pairs:
            checkpoint_dir = self.run_dir / "checkpoints" / f"round-{round_}"
            self.writer.release()
            result = self._await_training(self._trainer_actor().train.remote(samples, pairs, init,
                                                                             str(checkpoint_dir)))
            adapter, steps = result["adapter"], [dict(s, round=round_) for s in result["steps"]]
        elif round_ > 0:
            # Nothing new to learn (no mistakes, or no usable rationale): keep the previous adapter.
            adapter, steps = self._adapter(round_ - 1), []
        else:
            raise RunError(f"{self.run_dir}: round 0 built no training samples for training.tasks="
                           f"{self.cfg.training.tasks} from its teacher rationales")
        relative = Path("adapters") / f"round-{round_}"
        target = self.run_dir / relative
        if target.exists():
            shutil.rmtree(target)
        adapter_from_bytes(adapter, target)
        digest = hashlib.sha256(adapter).hexdigest()
        with self.writer.transaction() as tx:
            tx.execute("DELETE FROM train_steps WHERE round = ?", [round_])
            tx.insert("train_steps", steps)
            tx.execute("INSERT OR REPLACE INTO checkpoints (round, kind, path, sha256) VALUES (?, 'adapter', ?, ?)",
                       [round_, str(relative), digest])
            if steps:
                self._metrics(tx, round_, "train", {"train_loss_last": steps[-1]["loss"],
                                                   "train_loss_first": steps[0]["loss"]})
            self._finish_phase(tx, round_, "train", started, {"steps": len(steps)})
        shutil.rmtree(self.run_dir / "checkpoints" / f"round-{round_}", ignore_errors=True)

    def _await_training(self, ref) -> dict:
        """The trainer's result; a stop request ends the wait at once (training resumes from its
        last checkpoint), instead of after the whole training phase."""
        while True:
            ready, _ = ray.wait([ref], timeout=0.5)
            if ready:
                return ray.get(ready[0])
            if self._stop:
                ray.kill(self._trainer)
                self._trainer = None
                raise StopRequested

    def _evaluate(self, round_: int, report: RoundReport) -> None:
        modes = self.cfg.student.eval_modes
        if not self._phase_done(round_, "eval"):
            adapter = self._adapter(round_)
            started = self._begin_phase(round_, "eval", len(self.test) * len(modes))
            values = {}
            for mode in modes:
                attempts = self.exam(round_, "eval", self.test, mode, 1, True, adapter)
                values[f"accuracy_{mode}"] = sum(a["correct"] for a in attempts) / max(len(attempts), 1)
            values["accuracy"] = values[f"accuracy_{modes[0]}"]
            with self.writer.transaction() as tx:
                self._metrics(tx, round_, "test", values)
                self._finish_phase(tx, round_, "eval", started)
        report.test_accuracy = self._metric(round_, "test", "accuracy")

    def _close_round(self, round_: int, report: RoundReport, started: float) -> None:
        report.seconds = time.monotonic() - started
        with self.writer.transaction() as tx:
            tx.execute("UPDATE rounds SET status = 'done', finished_at = current_timestamp, summary = ? "
                       "WHERE round = ?", [{"line": report.line(), "notes": report.notes}, round_])

    def _round_done(self, round_: int) -> bool:
        rows = self.writer.fetch("SELECT status FROM rounds WHERE round = ?", [round_])
        return bool(rows) and rows[0][0] == "done"

    def run_round(self, round_: int) -> RoundReport:
        report = RoundReport(round_)
        started = time.monotonic()
        if round_ >= 0:
            mistakes = None
            if round_ > 0:
                mistakes = self._pool_exam(round_, self._adapter(round_ - 1))
            self._check_stop()
            self._teach(round_, report, mistakes)
            self._check_stop()
            self._train(round_)
            self._check_stop()
        self._evaluate(round_, report)
        self._close_round(round_, report, started)
        return report

    # ----- the loop --------------------------------------------------------------------------------
    def _should_stop(self, history: list[float]) -> str | None:
        patience = self.cfg.run.patience
        if patience and len(history) > patience:
            best_before = max(history[:-patience])
            if max(history[-patience:]) <= best_before:
                return f"test accuracy did not improve for {patience} round(s)"
        budget = self.cfg.teacher.max_cost_usd
        if budget is not None:
            spent = self.writer.fetch("SELECT coalesce(sum(cost_usd), 0) FROM teacher_calls")[0][0]
            exhausted = self.writer.fetch("SELECT count(*) FROM metrics WHERE name = 'budget_exhausted' "
                                          "AND value > 0")[0][0]
            if exhausted or spent >= budget:
                return f"teacher budget spent (${spent:.4f} of ${budget:.4f})"
        return None

    def execute(self) -> int:
        rounds = ([-1] if self.cfg.run.baseline else []) + list(range(0, self.cfg.run.rounds + 1))
        previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.writer.execute("UPDATE runs SET status = 'running', message = NULL")
        try:
            self._start_cluster()
            # After Ray's start: Ray installs its own handlers, which would abort the driver mid-write.
            signal.signal(signal.SIGTERM, self._request_stop)
            signal.signal(signal.SIGINT, self._request_stop)
            history: list[float] = []
            print(f"tutorloop: run {self.run_dir} | student {self.cfg.student.model} | task {self.cfg.data.task} "
                  f"| pool {len(self.pool)} | test {len(self.test)}", flush=True)
            stop_reason = None
            for round_ in rounds:
                if self._round_done(round_):
                    accuracy = self._metric(round_, "test", "accuracy")
                    print(f"round {round_:>2} ({round_kind(round_)}): done earlier, test accuracy "
                          f"{accuracy if accuracy is None else format(accuracy, '.1%')}", flush=True)
                else:
                    if stop_reason:
                        break
                    self._check_stop()
                    report = self.run_round(round_)
                    print(report.line(), flush=True)
                    for note in report.notes:
                        print(f"  note: {note}", flush=True)
                if round_ >= 0:
                    history.append(self._metric(round_, "test", "accuracy") or 0.0)
                    stop_reason = self._should_stop(history)
            message = f"stopped early: {stop_reason}" if stop_reason else "finished"
            self.writer.execute("UPDATE runs SET status = 'finished', message = ?", [message])
            print(f"tutorloop: {message}. History: {self.run_dir / HISTORY}", flush=True)
            self.writer.release()  # the report reads the file read-only
            if self.cfg.run.report:
                from tutorloop.loop.report import write_report

                _, html = write_report(self.run_dir)
                print(f"tutorloop: report: {html}", flush=True)
            print(next_steps(self.run_dir), flush=True)
            return 0
        except (KeyboardInterrupt, StopRequested):
            self.writer.execute("UPDATE phases SET status = 'stopped' WHERE status = 'running'")
            self.writer.execute("UPDATE runs SET status = 'stopped', message = 'interrupted'")
            print(f"\ntutorloop: stopped at a safe point. Resume with: tutorloop resume {self.run_dir}",
                  file=sys.stderr, flush=True)
            return 130
        except Exception as exc:
            self.writer.execute("UPDATE phases SET status = 'failed' WHERE status = 'running'")
            self.writer.execute("UPDATE runs SET status = 'failed', message = ?", [str(exc).splitlines()[0][:500]])
            raise
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self.writer.release()
            self._shutdown()

    def _request_stop(self, *_: object) -> None:
        """Ctrl-C or SIGTERM: stop at the next safe point; a second Ctrl-C stops at once."""
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        print("\ntutorloop: stopping at the next safe point (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def _check_stop(self) -> None:
        if self._stop:
            raise StopRequested


def next_steps(run_dir: Path) -> str:
    """Three queries worth running on a finished run."""
    queries = [
        "SELECT round, kind, test_accuracy, mistakes, teacher_calls, round_s FROM round_summary",
        "SELECT from_round, to_round, mode, wrong_to_right, right_to_wrong FROM transitions",
        "SELECT round, teacher, strategy, calls, accepted, rejections, cost_usd FROM teacher_yield",
    ]
    return "Try:\n" + "\n".join(f'  tutorloop sql {run_dir} "{q}"' for q in queries)


# ----- run directories -----------------------------------------------------------------------------
def stored_config(run_dir: Path) -> tuple[Config, str]:
    from tutorloop.store.query import fetch_rows

    rows = fetch_rows(run_dir / HISTORY, "SELECT config, config_hash, status FROM runs")
    if not rows:
        raise RunError(f"{run_dir}: the history holds no run")
    return config_from_dict(json.loads(rows[0]["config"]), str(run_dir / CONFIG_FILE)), rows[0]["status"]


def create_run(cfg: Config, run_dir: Path) -> None:
    """A new run directory: resolved config (no secrets: keys stay in the environment) and the history."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    writer = StoreWriter(run_dir / HISTORY)
    pool = load_examples(cfg.data, "train")
    test = load_examples(cfg.data, "test")
    with writer.transaction() as tx:
        tx.insert("runs", [{"run_id": uuid.uuid4().hex, "name": cfg.run.name, "created_at": _now(),
                            "status": "created", "config": cfg.to_dict(),
                            "config_hash": cfg.fingerprint(RESUME_SAFE_KEYS), "versions": _versions()}])
        tx.insert("examples", [{"example_id": e.id, "dataset": e.dataset, "split": e.split, "question": e.question,
                                "gold": e.answer, "answer_type": e.answer_type, "rationale": e.rationale}
                               for e in pool + test])


def _now():
    from datetime import datetime

    return datetime.now()


def run_from_config(cfg: Config, config_path: str | Path, run_dir: str | Path | None = None,
                    overwrite: bool = False, resume: bool = False, address: str | None = None) -> int:
    run_dir = Path(run_dir) if run_dir else Path(cfg.run.run_dir) / cfg.run.name
    if (run_dir / HISTORY).exists():
        if resume:
            stored, _ = stored_config(run_dir)
            _check_resumable(stored, cfg, run_dir)
            _update_config(run_dir, cfg)
            return RoundEngine(cfg, run_dir, address).execute()
        if not overwrite:
            raise RunError(f"{run_dir}: a run exists here; continue it with `tutorloop resume {run_dir}` "
                           f"or start over with --overwrite")
        shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunError(f"{run_dir}: folder exists and is not a run; choose another run.name or --run-dir")
    create_run(cfg, run_dir)
    return RoundEngine(cfg, run_dir, address).execute()


def _check_resumable(stored: Config, new: Config, run_dir: Path) -> None:
    if stored.fingerprint(RESUME_SAFE_KEYS) != new.fingerprint(RESUME_SAFE_KEYS):
        old, cur = stored.to_dict(), new.to_dict()
        changed = sorted(changed_keys(old, cur))
        changed = [k for k in changed if not any(k == s or k.startswith(s + ".") for s in RESUME_SAFE_KEYS)]
        raise RunError(f"{run_dir}: config changed since the run started ({', '.join(changed)}); only "
                       f"{', '.join(RESUME_SAFE_KEYS)} may change on resume")


def _update_config(run_dir: Path, cfg: Config) -> None:
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    StoreWriter(run_dir / HISTORY).execute("UPDATE runs SET config = ?", [cfg.to_dict()])


def resume_run(run_dir: Path, overrides: list[str] | None = None, address: str | None = None) -> int:
    if not (run_dir / HISTORY).exists():
        raise RunError(f"{run_dir}: no run history here (expected {run_dir / HISTORY})")
    stored, status = stored_config(run_dir)
    cfg = config_from_dict(apply_overrides(stored.to_dict(), overrides or []), "--set")
    _check_resumable(stored, cfg, run_dir)
    planned = ([-1] if cfg.run.baseline else []) + list(range(0, cfg.run.rounds + 1))
    done = {r[0] for r in StoreWriter(run_dir / HISTORY).fetch("SELECT round FROM rounds WHERE status = 'done'")}
    if status == "finished" and set(planned) <= done:
        print(f"tutorloop: {run_dir} is already finished ({len(done)} rounds); nothing to resume. "
              f"Add rounds with --set run.rounds=N", flush=True)
        return 0
    _update_config(run_dir, cfg)
    return RoundEngine(cfg, run_dir, address).execute()


__all__ = ["RoundEngine", "RunError", "run_from_config", "resume_run", "derive_seed", "ConfigError"]
