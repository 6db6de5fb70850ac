"""The DuckDB history: schema and migrations, batched writer, lock waits, read-only queries, views."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tutorloop.loop.core.errors import StoreError
from tutorloop.store.journal import TeacherJournal
from tutorloop.store.query import ReadOnlyQueryError, fetch_rows, query
from tutorloop.store.schema import SCHEMA_VERSION, TABLES
from tutorloop.store.writer import StoreWriter


def attempt(round_: int, example: str, correct: bool, phase: str = "eval", sample: int = 0) -> dict:
    return {
        "round": round_,
        "phase": phase,
        "split": "test" if phase == "eval" else "train",
        "example_id": example,
        "mode": "explain",
        "sample_index": sample,
        "output": "x",
        "extracted": "1",
        "correct": correct,
        "prompt_tokens": 3,
        "output_tokens": 4,
        "batch": 0,
    }


def test_new_file_has_every_table_and_view(tmp_path: Path) -> None:
    StoreWriter(tmp_path / "h.duckdb")
    names = {
        r["table_name"] for r in fetch_rows(tmp_path / "h.duckdb", "SELECT table_name FROM information_schema.tables")
    }
    assert set(TABLES) <= names
    assert {"round_summary", "question_history", "transitions", "teacher_yield", "training_curves"} <= names
    version = fetch_rows(tmp_path / "h.duckdb", "SELECT max(version) AS v FROM schema_version")[0]["v"]
    assert version == SCHEMA_VERSION


def test_round_trip_with_json_columns(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "h.duckdb")
    writer.insert(
        "train_steps",
        [
            {
                "round": 0,
                "step": 1,
                "epoch": 0.5,
                "lr": 1e-3,
                "loss": 2.0,
                "task_losses": {"answer": 1.0, "explain": 3.0},
                "contrast_loss": 0.4,
                "tokens": 100,
                "pad_fraction": 0.1,
                "elapsed_s": 1.0,
            }
        ],
    )
    rows = fetch_rows(tmp_path / "h.duckdb", "SELECT * FROM train_steps")
    assert json.loads(rows[0]["task_losses"]) == {"answer": 1.0, "explain": 3.0}
    curves = fetch_rows(tmp_path / "h.duckdb", "SELECT term, value FROM training_curves ORDER BY term")
    assert curves == [
        {"term": "answer", "value": 1.0},
        {"term": "contrast", "value": 0.4},
        {"term": "explain", "value": 3.0},
        {"term": "total", "value": 2.0},
    ]


def test_mixed_values_store_as_their_inferred_types(tmp_path: Path) -> None:
    """Numbers after ints round as DuckDB casts them (half to even), a missing key and None are NULL,
    and a dict in a text column is JSON text, whether a column takes the one-pass path or not."""
    writer = StoreWriter(tmp_path / "h.duckdb")
    rows = [
        attempt(0, "a", True),
        dict(attempt(0, "b", True), prompt_tokens=2.5, extracted=None),
        dict(attempt(0, "c", True), prompt_tokens=3.7, extracted={"b": [1], "a": 2}),
        {k: v for k, v in dict(attempt(0, "d", False), prompt_tokens=None).items() if k != "output"},
    ]
    assert writer.insert("attempts", rows) == 4
    writer.insert(
        "metrics",
        [{"round": 0, "split": "test", "name": n, "value": v} for n, v in [("int", 1), ("float", 0.5), ("none", None)]],
    )
    stored = fetch_rows(
        tmp_path / "h.duckdb",
        "SELECT example_id, prompt_tokens, extracted, output, correct FROM attempts ORDER BY example_id",
    )
    assert [tuple(r.values()) for r in stored] == [
        ("a", 3, "1", "x", True),
        ("b", 2, None, "x", True),
        ("c", 4, '{"a": 2, "b": [1]}', "x", True),
        ("d", None, "1", None, False),
    ]
    values = fetch_rows(tmp_path / "h.duckdb", "SELECT name, value FROM metrics ORDER BY name")
    assert values == [{"name": "float", "value": 0.5}, {"name": "int", "value": 1.0}, {"name": "none", "value": None}]


def test_transaction_rolls_back_whole_batch(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "h.duckdb")
    with pytest.raises(duckdb.ConstraintException):
        with writer.transaction() as tx:
            tx.insert("metrics", [{"round": 0, "split": "test", "name": "accuracy", "value": 0.5}])
            tx.insert("metrics", [{"round": 0, "split": "test", "name": "accuracy", "value": 0.6}])
    assert fetch_rows(tmp_path / "h.duckdb", "SELECT count(*) AS n FROM metrics")[0]["n"] == 0


def test_ignore_duplicates_keeps_first(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "h.duckdb")
    call = {
        "request_hash": "abc",
        "teacher": "t",
        "backend": "program",
        "model": "m",
        "status": "ok",
        "response": "first",
    }
    writer.insert("teacher_calls", [call], ignore_duplicates=True)
    writer.insert("teacher_calls", [dict(call, response="second")], ignore_duplicates=True)
    assert fetch_rows(tmp_path / "h.duckdb", "SELECT response FROM teacher_calls") == [{"response": "first"}]


def test_version_2_file_keeps_its_attempts_without_the_key(tmp_path: Path) -> None:
    """A file written before attempts lost its primary key opens with its rows, NOT NULL columns and
    views intact."""
    from tutorloop.store.schema import MIGRATIONS, views_sql

    path = tmp_path / "h.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    for version, migration in enumerate(MIGRATIONS[:2]):
        con.execute(migration)
        con.execute("INSERT INTO schema_version VALUES (?, current_timestamp)", [version + 1])
    con.execute(views_sql())
    con.execute(
        "INSERT INTO attempts BY NAME SELECT * FROM (VALUES (0, 'eval', 'test', 'a', 'explain', 0, 'x', "
        "'1', true, 3, 4, 0)) t(round, phase, split, example_id, mode, sample_index, output, extracted, "
        "correct, prompt_tokens, output_tokens, batch)"
    )
    con.close()
    writer = StoreWriter(path)
    writer.insert("attempts", [attempt(0, "b", False)])
    assert fetch_rows(path, "SELECT example_id, correct FROM attempts ORDER BY example_id") == [
        {"example_id": "a", "correct": True},
        {"example_id": "b", "correct": False},
    ]
    assert fetch_rows(path, "SELECT max(version) AS v FROM schema_version")[0]["v"] == SCHEMA_VERSION
    keys = fetch_rows(
        path,
        "SELECT count(*) AS n FROM duckdb_constraints() WHERE table_name = 'attempts' "
        "AND constraint_type = 'PRIMARY KEY'",
    )
    assert keys == [{"n": 0}]
    with pytest.raises(duckdb.ConstraintException):
        writer.insert("attempts", [dict(attempt(0, "c", True), correct=None)])
    assert fetch_rows(path, "SELECT count(*) AS n FROM question_history")[0]["n"] >= 1


def test_migration_from_empty_and_refusal_of_newer(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    duckdb.connect(str(path)).close()  # version 0: an empty file
    StoreWriter(path)
    assert fetch_rows(path, "SELECT max(version) AS v FROM schema_version")[0]["v"] == SCHEMA_VERSION
    StoreWriter(path)  # re-opening an up-to-date file changes nothing
    assert fetch_rows(path, "SELECT count(*) AS n FROM schema_version")[0]["n"] == SCHEMA_VERSION
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (?, current_timestamp)", [SCHEMA_VERSION + 1])
    con.close()
    with pytest.raises(StoreError, match="newer tutorloop"):
        StoreWriter(path)


HOLD_LOCK = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_writer_waits_for_a_lock_then_writes(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    writer = StoreWriter(path, lock_timeout_s=20)
    holder = hold_lock(path, 1.5)
    started = time.monotonic()
    writer.insert("metrics", [{"round": 0, "split": "test", "name": "accuracy", "value": 0.5}])
    assert time.monotonic() - started >= 1.0
    holder.wait(timeout=30)
    assert fetch_rows(path, "SELECT value FROM metrics") == [{"value": 0.5}]


def test_reader_gives_up_after_bounded_wait(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    StoreWriter(path)
    holder = hold_lock(path, 8)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="a run is writing"):
            query(path, "SELECT 1", timeout_s=1.0)
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO metrics VALUES (0, 'test', 'x', 1)",
        "update metrics set value=2",
        "DELETE FROM metrics",
        "drop table metrics",
        "CREATE TABLE t (a INT)",
        "SELECT 1; DROP TABLE metrics",
    ],
)
def test_sql_refuses_writes_and_leaves_file_unchanged(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "h.duckdb"
    StoreWriter(path).insert("metrics", [{"round": 0, "split": "test", "name": "accuracy", "value": 0.5}])
    before = path.read_bytes()
    with pytest.raises(ReadOnlyQueryError, match="only reads"):
        query(path, sql)
    assert path.read_bytes() == before


def test_views_transitions_and_yield(tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    writer = StoreWriter(path)
    # q1 wrong->right, q2 right->wrong, q3 stays right between rounds 0 and 1
    writer.insert(
        "attempts",
        [
            attempt(0, "q1", False),
            attempt(0, "q2", True),
            attempt(0, "q3", True),
            attempt(1, "q1", True),
            attempt(1, "q2", False),
            attempt(1, "q3", True),
        ],
    )
    writer.insert(
        "teacher_calls",
        [
            {
                "request_hash": f"h{i}",
                "teacher": "t",
                "backend": "openai",
                "model": "m",
                "strategy": "tailored",
                "round": 1,
                "status": "ok",
                "cost_usd": 0.25,
                "tokens_in": 10,
                "tokens_out": 5,
            }
            for i in range(4)
        ],
    )
    writer.insert(
        "rationales",
        [
            {
                "round": 1,
                "teacher": "t",
                "strategy": "tailored",
                "example_id": f"q{i}",
                "sample_index": 0,
                "accepted": i < 2,
                "reject_reason": None if i < 2 else "wrong_answer",
                "task": "explain",
            }
            for i in range(4)
        ],
    )
    rows = fetch_rows(path, "SELECT * FROM transitions")
    assert len(rows) == 1
    row = rows[0]
    assert (row["from_round"], row["to_round"]) == (0, 1)
    assert (row["wrong_to_right"], row["right_to_wrong"], row["stayed_right"], row["stayed_wrong"]) == (1, 1, 1, 0)
    assert row["wrong_to_right_ids"] == ["q1"] and row["right_to_wrong_ids"] == ["q2"]
    y = fetch_rows(path, "SELECT * FROM teacher_yield")[0]
    assert (y["calls"], y["rationales"], y["accepted"]) == (4, 4, 2)
    assert y["cost_usd"] == pytest.approx(1.0) and y["cost_per_accepted_usd"] == pytest.approx(0.5)
    assert dict(y["rejections"]) == {"wrong_answer": 2}


def test_cli_sql_formats_and_refusal(tmp_path: Path) -> None:
    path = tmp_path / "history.duckdb"
    StoreWriter(path).insert("metrics", [{"round": 0, "split": "test", "name": "accuracy", "value": 0.25}])
    cli = [sys.executable, "-m", "tutorloop.loop.cli", "sql", str(tmp_path)]
    out = subprocess.run(
        cli + ["SELECT round, value FROM metrics", "--format", "json"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"round": 0, "value": 0.25}]
    out = subprocess.run(
        cli + ["SELECT round, value FROM metrics", "--format", "csv"], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip().splitlines() == ["round,value", "0,0.25"]
    out = subprocess.run(cli + ["DELETE FROM metrics"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "only reads" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(cli + ["SELECT nope FROM metrics"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_journal_recovers_answers_and_in_flight_past_a_torn_line(tmp_path: Path) -> None:
    journal = TeacherJournal(tmp_path)
    journal.sent(["a", "b", "c"])
    journal.answered([{"request_hash": "b", "response": "ok"}])
    journal.sent(["d"])
    journal.close()
    with journal.path.open("a") as f:
        f.write('{"answer": {"request_hash": "c", "resp')  # the write a SIGKILL cut short
    recovered = TeacherJournal(tmp_path).recover()
    assert recovered.answers == [{"request_hash": "b", "response": "ok"}]
    assert recovered.in_flight == ["a", "c", "d"]
    resumed = TeacherJournal(tmp_path)
    resumed.answered([{"request_hash": "a", "response": "again"}])
    resumed.close()
    assert TeacherJournal(tmp_path).recover().in_flight == ["c", "d"]
    TeacherJournal(tmp_path).clear()
    assert not journal.path.exists() and TeacherJournal(tmp_path).recover().answers == []
