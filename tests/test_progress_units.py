"""Phase progress in one unit per phase, consistent across a resume: teach counts jobs (not teacher
calls), train counts optimizer steps, and a resumed phase's seconds add up over its attempts.

The engine runs with the in-process fakes of test_engine_plan.py (no Ray); the teacher is the real
program teacher through the in-process pool, and the history is a real DuckDB file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

from test_engine_plan import FakeWorkers, config

from tutorloop.loop.core.config import Config
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.engine import RoundEngine
from tutorloop.loop.run_dir import create_run
from tutorloop.store.query import fetch_rows

ZERO_SHOT = ["teacher.strategies=[zero_shot_cot]", "teacher.concurrency=2"]  # two calls per job, small groups
PHASE_ROW = "SELECT progress, total, status FROM phases WHERE round = ? AND name = ?"


class WatchedTeacher:
    """A teacher pool that records the teach phase's stored progress before each group of answers it
    hands on and once it has answered, and can request a stop after a group of a chosen `ask`."""

    def __init__(self, pool: Any, workers: WatchingWorkers) -> None:
        self.pool, self.workers = pool, workers

    def ask(self, requests: list, on_wait: Callable[[], None] | None = None, journal: Any = None) -> Iterator[list]:
        self.workers.asks += 1
        for group in self.pool.ask(requests, on_wait=on_wait, journal=journal):
            self.workers.watch("teach")
            yield group
            if self.workers.asks == self.workers.stop_in_ask:
                self.workers.engine.stopping.requested = True  # what the Ctrl-C handler does
        self.workers.watch("teach")

    def close(self) -> None:
        self.pool.close()


class WatchingWorkers(FakeWorkers):
    """FakeWorkers whose teacher pool is watched, whose trainer takes `train_s` seconds before its steps,
    and which record the round's phase rows (progress, total) as the engine stores them."""

    def __init__(
        self,
        cfg: Config,
        tmp: Path,
        round_: int = 0,
        stop_in_ask: int | None = None,
        train_s: float = 0.0,
        **fakes: Any,
    ) -> None:
        super().__init__(cfg, tmp, **fakes)
        self.round, self.stop_in_ask, self.train_s = round_, stop_in_ask, train_s
        self.asks = 0
        self.seen: dict[str, list[dict]] = {"teach": [], "train": []}

    def watch(self, phase: str) -> None:
        rows = self.engine.history.writer.fetch(PHASE_ROW, [self.round, phase])
        self.engine.history.release()  # the fakes' own readers open the file read-only
        if rows:
            self.seen[phase].append(dict(zip(("progress", "total", "status"), rows[0])))

    def teacher(self, teacher_cfg: TeacherSection) -> WatchedTeacher:
        return WatchedTeacher(super().teacher(teacher_cfg), self)

    def train(
        self,
        samples: list[dict],
        pairs: list[dict],
        init_adapter: bytes | None,
        checkpoint_dir: str,
        on_progress: Callable[[int, int, dict | None], None],
        poll: Callable[[], None],
        seed: int | None = None,
    ) -> dict:
        self.watch("train")  # as the phase began, before the trainer knows its plan
        time.sleep(self.train_s)

        def watched(total: int, done: int, last: dict | None) -> None:
            on_progress(total, done, last)
            self.watch("train")

        return super().train(samples, pairs, init_adapter, checkpoint_dir, watched, poll, seed)


def engine_on(cfg: Config, run_dir: Path, **fakes: Any) -> tuple[RoundEngine, WatchingWorkers]:
    if not run_dir.exists():
        create_run(cfg, run_dir)
    work = run_dir.parent / f"{run_dir.name}-work-{len(list(run_dir.parent.glob(f'{run_dir.name}-work-*')))}"
    work.mkdir()
    workers = WatchingWorkers(cfg, work, **fakes)
    engine = RoundEngine(cfg, run_dir, workers=workers)
    workers.engine = engine
    return engine, workers


def round_jobs(run_dir: Path, round_: int) -> int:
    """The round's teaching jobs: exactly one rationale record each."""
    return fetch_rows(run_dir, "SELECT count(*) AS n FROM rationales WHERE round = ?", [round_])[0]["n"]


def assert_within_total(seen: list[dict]) -> None:
    assert seen, "no progress was recorded"
    for row in seen:
        assert 0 <= row["progress"] <= row["total"], f"progress above its total: {row}"


def test_zero_shot_cot_teach_progress_counts_jobs(tmp_path: Path) -> None:
    cfg = config(*ZERO_SHOT, "run.rounds=0", "run.baseline=false")
    engine, workers = engine_on(cfg, tmp_path / "run")
    assert engine.run() == 0
    jobs = round_jobs(engine.run_dir, 0)
    assert jobs > 0
    assert_within_total(workers.seen["teach"])
    assert {row["total"] for row in workers.seen["teach"]} == {jobs}
    # The last answer finished every job: progress reached the total before the phase's commit.
    assert workers.seen["teach"][-1]["progress"] == jobs
    final = fetch_rows(engine.run_dir, PHASE_ROW, [0, "teach"])[0]
    assert (final["progress"], final["total"], final["status"]) == (jobs, jobs, "done")


def test_teach_progress_after_a_stop_and_a_resume_with_cached_calls(tmp_path: Path) -> None:
    cfg = config(*ZERO_SHOT, "run.rounds=0", "run.baseline=false")
    run_dir = tmp_path / "run"
    # Stopped in the second wave (the answer stage): every reason call and some answer calls are stored.
    engine, first = engine_on(cfg, run_dir, stop_in_ask=2)
    assert engine.run() == 130
    stored = fetch_rows(run_dir, PHASE_ROW, [0, "teach"])[0]
    calls = fetch_rows(run_dir, "SELECT count(*) AS n FROM teacher_calls")[0]["n"]
    assert stored["status"] == "stopped" and calls > stored["total"]  # more calls than jobs are stored
    assert_within_total(first.seen["teach"])
    assert 0 < stored["progress"] < stored["total"]

    resumed, second = engine_on(cfg, run_dir)
    assert resumed.run() == 0
    jobs = round_jobs(run_dir, 0)
    assert stored["total"] == jobs
    assert_within_total(second.seen["teach"])
    # The resumed phase starts from what was stored and never falls below it.
    assert all(row["progress"] >= stored["progress"] for row in second.seen["teach"])
    assert second.seen["teach"][-1]["progress"] == jobs
    final = fetch_rows(run_dir, PHASE_ROW, [0, "teach"])[0]
    assert (final["progress"], final["total"]) == (jobs, jobs)


def test_train_total_is_the_step_count_from_the_start(tmp_path: Path) -> None:
    cfg = config("run.rounds=0", "run.baseline=false")
    run_dir = tmp_path / "run"
    # Stopped after the first step; the resumed training knows its step count before it starts.
    engine, first = engine_on(cfg, run_dir, interrupt=lambda call: call[0] == "train")
    assert engine.run() == 130
    resumed, second = engine_on(cfg, run_dir)
    assert resumed.run() == 0
    steps = fetch_rows(run_dir, "SELECT count(*) AS n FROM train_steps WHERE round = 0")[0]["n"]
    samples = fetch_rows(run_dir, "SELECT count(*) AS n FROM samples WHERE round = 0")[0]["n"]
    assert steps > 1 and samples != steps
    # Before the trainer has planned its steps the total is not known yet (0), never the sample count.
    assert first.seen["train"][0]["total"] == 0
    assert {row["total"] for row in first.seen["train"][1:]} == {steps}
    assert {row["total"] for row in second.seen["train"]} == {steps}
    assert_within_total(first.seen["train"][1:] + second.seen["train"])
    assert second.seen["train"][0]["progress"] >= 1  # the resumed phase starts from its stored step
    final = fetch_rows(run_dir, PHASE_ROW, [0, "train"])[0]
    assert (final["progress"], final["total"]) == (steps, steps)


def test_phase_seconds_add_up_over_its_attempts(tmp_path: Path) -> None:
    cfg = config("run.rounds=0", "run.baseline=false")
    run_dir = tmp_path / "run"
    attempt_s = 0.6
    engine, _ = engine_on(cfg, run_dir, train_s=attempt_s, interrupt=lambda call: call[0] == "train")
    assert engine.run() == 130
    stopped = fetch_rows(run_dir, "SELECT seconds FROM phases WHERE round = 0 AND name = 'train'")[0]["seconds"]
    assert stopped is not None and stopped >= attempt_s
    resumed, _ = engine_on(cfg, run_dir, train_s=attempt_s)
    assert resumed.run() == 0
    seconds = fetch_rows(run_dir, "SELECT seconds FROM phases WHERE round = 0 AND name = 'train'")[0]["seconds"]
    assert seconds >= 2 * attempt_s
