"""A run directory written by the previous code (tests/data/run_schema_v3) still reads and resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from shared_run import cli

OLD_RUN = Path(__file__).parent / "data" / "run_schema_v3"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "old"
    shutil.copytree(OLD_RUN, run_dir)
    return run_dir


def _count(run_dir: Path, sql: str) -> int:
    con = duckdb.connect(str(run_dir / "history.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_sql_and_report_read_an_old_run(old_run: Path) -> None:
    result = cli("sql", str(old_run), "SELECT round, kind, test_accuracy FROM round_summary ORDER BY round")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:-1]]  # below the header, above "(3 rows)"
    assert [row[:2] for row in rows] == [["-1", "baseline"], ["0", "core"], ["1", "tailored"]], result.stdout
    result = cli("report", str(old_run))
    assert result.returncode == 0, result.stderr
    assert "round" in (old_run / "report.md").read_text()
    assert (old_run / "report.html").stat().st_size > 10_000


def _as_if_killed_while_teaching_round_1(run_dir: Path) -> None:
    """What a kill -9 in round 1's teach phase leaves: its answers stored, nothing after them."""
    con = duckdb.connect(str(run_dir / "history.duckdb"))
    try:
        for table in ("rationales", "samples", "contrast_pairs", "train_steps", "metrics", "checkpoints"):
            con.execute(f"DELETE FROM {table} WHERE round = 1")
        con.execute("DELETE FROM phases WHERE round = 1 AND name IN ('train', 'eval')")
        con.execute("UPDATE phases SET status = 'running' WHERE round = 1 AND name = 'teach'")
        con.execute("UPDATE rounds SET status = 'running', finished_at = NULL WHERE round = 1")
        con.execute("UPDATE runs SET status = 'stopped'")
    finally:
        con.close()
    shutil.rmtree(run_dir / "adapters" / "round-1")


def test_an_old_run_resumes_without_asking_the_teacher_again(old_run: Path) -> None:
    _as_if_killed_while_teaching_round_1(old_run)
    calls_before = _count(old_run, "SELECT count(*) FROM teacher_calls")
    round_1_calls = _count(old_run, "SELECT count(*) FROM teacher_calls WHERE round = 1")
    assert round_1_calls > 0

    result = cli("resume", str(old_run), timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Every round-1 request was answered from the stored calls: no row was added.
    assert _count(old_run, "SELECT count(*) FROM teacher_calls") == calls_before
    assert _count(old_run, "SELECT cache_hits FROM round_summary WHERE round = 1") == round_1_calls
    assert _count(old_run, "SELECT count(*) FROM rationales WHERE round = 1") > 0
    assert _count(old_run, "SELECT count(*) FROM rounds WHERE status = 'done'") == 3
    assert _count(old_run, "SELECT count(*) FROM metrics WHERE round = 1 AND split = 'test' AND name = 'accuracy'") == 1
    assert (old_run / "adapters" / "round-1" / "adapter_model.safetensors").exists()
