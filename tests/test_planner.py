"""One planner for the engine, the dry run and run creation (loop/planner.py), and the read-only history
reader the dry run reads an existing run through (store/query.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from test_engine_plan import FakeWorkers, config, new_run
from test_history import CALLS, build_history

from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import StoreError
from tutorloop.loop.dry_run import plan_run
from tutorloop.loop.planner import exam_draw, load_pool, plan_teaching, worst_case_mistakes
from tutorloop.store.query import HISTORY_FILE, HistoryReader, fetch_rows


class WrongStudent(FakeWorkers):
    """Gets every question wrong: a tailored round's exam is the dry run's worst case."""

    def _right(self, example: Example, adapter: bytes | None, known: set[str]) -> bool:
        return False


def job_keys(jobs: list) -> Counter:
    return Counter((j.example.id, j.teacher.name, j.strategy, j.sample_index) for j in jobs)


def test_the_engine_teaches_the_jobs_the_dry_run_plans(tmp_path: Path) -> None:
    cfg = config("training.exam_size=8", "training.max_mistakes=3")
    engine, _ = new_run(cfg, tmp_path)
    workers = WrongStudent(cfg, tmp_path / "run-work")
    engine.workers, workers.engine = workers, engine
    assert engine.run() == 0
    pool = load_pool(cfg)
    examined = exam_draw(cfg, pool, 1)
    exam_call = next(c for c in workers.calls if c[0] == "exam" and c[2] == cfg.student.generation.num_samples)
    assert list(exam_call[3]) == [e.id for e in examined] and len(examined) == 8
    for round_, mistakes in ((0, None), (1, worst_case_mistakes(cfg, examined))):
        planned = plan_teaching(cfg, pool, round_, mistakes).jobs
        taught = fetch_rows(
            engine.run_dir,
            "SELECT example_id, teacher, strategy, sample_index FROM rationales WHERE round = ?",
            [round_],
        )
        assert Counter(tuple(r.values()) for r in taught) == job_keys(planned) and planned
    estimate = {r.round: r for r in plan_run(cfg, None)}[1]
    assert (estimate.exam_questions, estimate.teach_questions) == (8, 3)


def test_load_pool_drops_test_duplicates_once_for_everyone(tmp_path: Path) -> None:
    cfg = config()
    pool = load_pool(cfg)
    assert pool.pool and pool.test and not {e.id for e in pool.pool} & {e.id for e in pool.test}
    engine, _ = new_run(cfg, tmp_path)
    stored = {r["example_id"] for r in fetch_rows(engine.run_dir, "SELECT example_id FROM examples")}
    assert stored == {e.id for e in pool.pool + pool.test} == set(engine.examples)
    assert engine.pool_duplicates == pool.duplicates


def test_the_history_reader_reads_a_run_without_changing_it(tmp_path: Path) -> None:
    build_history(tmp_path)
    before = (tmp_path / HISTORY_FILE).read_bytes()
    reader = HistoryReader(tmp_path)
    assert reader.done_rounds() == {-1, 0, 1}
    assert reader.request_hashes() == {f"{r}-{t}-{s}-{e}" for r, t, s, e, _, _ in CALLS}
    assert reader.spent_usd() == pytest.approx(sum(c[5] for c in CALLS))
    assert (tmp_path / HISTORY_FILE).read_bytes() == before
    with pytest.raises(StoreError, match="no run history here"):
        HistoryReader(tmp_path / "nothing")
