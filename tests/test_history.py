"""The history views on a run built for them (known answers, transitions, costs, losses), multi-run SQL
with a `run` column, read-only refusals that leave the file unchanged, `tutorloop sql` while a writer
is busy (it answers or says the run is writing, and the writer never fails), formats and the prompt."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tutorloop.loop.cli import main, split_sql_targets
from tutorloop.store.query import ReadOnlyQueryError, fetch_rows, multi_query, query, run_names
from tutorloop.store.writer import StoreWriter

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 5, 1, 12, 0, 0)

# Test questions t1..t4: correct (True) or not per round, in the two eval modes.
EVAL = {
    "explain": {-1: [False, False, False, True], 0: [True, False, False, True], 1: [True, True, False, False]},
    "answer": {-1: [False, False, False, False], 0: [False, True, False, False], 1: [False, True, True, False]},
}
# Round 1's pool exam, two samples per question: p1 both right, p2 one right, p3 none.
EXAM = {"p1": [True, True], "p2": [True, False], "p3": [False, False]}
ROUND_SECONDS = {-1: 10.0, 0: 60.0, 1: 90.0}
PHASE_SECONDS = {
    (-1, "eval"): 5.0,
    (0, "teach"): 2.0,
    (0, "train"): 30.0,
    (0, "eval"): 6.0,
    (1, "exam"): 12.0,
    (1, "teach"): 3.0,
    (1, "train"): 40.0,
    (1, "eval"): 7.0,
}
# (round, teacher, strategy, example, status, cost)
CALLS = [
    (0, "big", "cote", "p1", "ok", 0.010),
    (0, "big", "cote", "p2", "ok", 0.010),
    (0, "big", "cote", "p3", "failed", 0.0),
    (0, "big", "rp", "p3", "ok", 0.004),
    (1, "big", "tailored", "p2", "ok", 0.020),
    (1, "big", "tailored", "p3", "ok", 0.020),
    (1, "small", "tailored", "p2", "ok", 0.001),
    (1, "small", "tailored", "p3", "ok", 0.001),
]
# (round, teacher, strategy, example, accepted, reject reason)
RATIONALES = [
    (0, "big", "cote", "p1", True, None),
    (0, "big", "cote", "p2", False, "wrong_answer"),
    (0, "big", "cote", "p3", False, "failed"),
    (0, "big", "rp", "p3", True, None),
    (1, "big", "tailored", "p2", True, None),
    (1, "big", "tailored", "p3", True, None),
    (1, "small", "tailored", "p2", True, None),
    (1, "small", "tailored", "p3", False, "wrong_answer"),
]
STEPS = [
    (0, 1, 2.0, {"answer": 1.0, "explain": 3.0}, None),
    (0, 2, 1.5, {"answer": 0.8, "explain": 2.2}, None),
    (1, 1, 1.2, {"answer": 0.5, "explain": 1.5}, 0.4),
]


def accuracy(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


def build_history(run_dir: Path, name: str = "synthetic", shift: float = 0.0) -> Path:
    """A finished run's history written through StoreWriter, with every number known in advance.
    `shift` adds to every test accuracy metric, so two runs differ."""
    writer = StoreWriter(run_dir / "history.duckdb")
    config = {
        "run": {"name": name},
        "student": {"model": "tiny", "eval_modes": ["explain", "answer"]},
        "teacher": {
            "teachers": [
                {"name": "big", "backend": "openai", "model": "m-big"},
                {"name": "small", "backend": "openai", "model": "m-small"},
            ],
            "strategies": ["crop"],
        },
        "data": {"task": "synthetic"},
    }
    with writer.transaction() as tx:
        tx.insert(
            "runs",
            [
                {
                    "run_id": name,
                    "name": name,
                    "created_at": T0,
                    "status": "finished",
                    "config": config,
                    "config_hash": "x",
                    "versions": {},
                }
            ],
        )
        tx.insert(
            "examples",
            [
                {
                    "example_id": e,
                    "dataset": "synthetic",
                    "split": split,
                    "question": f"What is {e}?",
                    "gold": "1",
                    "answer_type": "number",
                    "rationale": None,
                }
                for split, ids in (("test", ["t1", "t2", "t3", "t4"]), ("train", list(EXAM)))
                for e in ids
            ],
        )
        start = T0
        for round_, seconds in ROUND_SECONDS.items():
            tx.insert(
                "rounds",
                [
                    {
                        "round": round_,
                        "kind": ["baseline", "core", "tailored"][round_ + 1],
                        "status": "done",
                        "started_at": start,
                        "finished_at": start + timedelta(seconds=seconds),
                    }
                ],
            )
            start += timedelta(seconds=seconds)
        tx.insert(
            "phases", [{"round": r, "name": n, "status": "done", "seconds": s} for (r, n), s in PHASE_SECONDS.items()]
        )
        tx.insert(
            "attempts",
            [
                {
                    "round": r,
                    "phase": "eval",
                    "split": "test",
                    "example_id": f"t{i + 1}",
                    "mode": mode,
                    "sample_index": 0,
                    "output": "...",
                    "extracted": "1" if ok else "2",
                    "correct": ok,
                    "batch": 0,
                }
                for mode, by_round in EVAL.items()
                for r, flags in by_round.items()
                for i, ok in enumerate(flags)
            ],
        )
        tx.insert(
            "attempts",
            [
                {
                    "round": 1,
                    "phase": "exam",
                    "split": "train",
                    "example_id": e,
                    "mode": "explain",
                    "sample_index": k,
                    "output": f"wrong {e}" if not ok else "ok",
                    "extracted": "1" if ok else "2",
                    "correct": ok,
                    "batch": 0,
                }
                for e, flags in EXAM.items()
                for k, ok in enumerate(flags)
            ],
        )
        tx.insert(
            "teacher_calls",
            [
                {
                    "request_hash": f"{r}-{t}-{s}-{e}",
                    "teacher": t,
                    "backend": "openai",
                    "model": f"m-{t}",
                    "strategy": s,
                    "example_id": e,
                    "round": r,
                    "status": status,
                    "cost_usd": cost,
                    "tokens_in": 100,
                    "tokens_out": 50,
                    "error": None if status == "ok" else "500: server error",
                }
                for r, t, s, e, status, cost in CALLS
            ],
        )
        tx.insert(
            "rationales",
            [
                {
                    "round": r,
                    "teacher": t,
                    "strategy": s,
                    "example_id": e,
                    "sample_index": 0,
                    "accepted": ok,
                    "reject_reason": why,
                    "rationale": f"{t} explains {e}",
                    "extracted": "1" if ok else "2",
                    "feedback": f"{t}: the step for {e} was wrong" if s == "tailored" else None,
                    "task": "explain",
                }
                for r, t, s, e, ok, why in RATIONALES
            ],
        )
        tx.insert(
            "train_steps",
            [
                {
                    "round": r,
                    "step": k,
                    "epoch": 1.0,
                    "lr": 1e-3,
                    "loss": loss,
                    "task_losses": tasks,
                    "contrast_loss": contrast,
                }
                for r, k, loss, tasks, contrast in STEPS
            ],
        )
        metrics = []
        for r in ROUND_SECONDS:
            values = {f"accuracy_{m}": accuracy(EVAL[m][r]) + shift for m in EVAL}
            values["accuracy"] = values["accuracy_explain"]
            metrics += [{"round": r, "split": "test", "name": k, "value": v} for k, v in values.items()]
        train = {
            0: {"cache_hits": 0, "rationales_accepted": 2, "samples": 4, "contrast_pairs": 0, "train_loss_last": 1.5},
            1: {
                "accuracy": 0.5,
                "mistakes": 2,
                "cache_hits": 1,
                "rationales_accepted": 3,
                "samples": 6,
                "contrast_pairs": 3,
                "train_loss_last": 1.2,
            },
        }
        metrics += [
            {"round": r, "split": "train", "name": k, "value": float(v)}
            for r, values in train.items()
            for k, v in values.items()
        ]
        tx.insert("metrics", metrics)
    return run_dir


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_history(tmp_path_factory.mktemp("runs") / "alpha")


def test_round_summary(history: Path) -> None:
    rows = fetch_rows(history, "SELECT * FROM round_summary")
    assert [r["round"] for r in rows] == [-1, 0, 1]
    assert [r["kind"] for r in rows] == ["baseline", "core", "tailored"]
    assert [r["test_accuracy"] for r in rows] == [0.25, 0.5, 0.5]
    assert [r["test_accuracy_explain"] for r in rows] == [0.25, 0.5, 0.5]
    assert [r["test_accuracy_answer"] for r in rows] == [0.0, 0.25, 0.5]
    assert [r["pool_accuracy"] for r in rows] == [None, None, 0.5]
    assert [r["mistakes"] for r in rows] == [None, None, 2]
    assert [r["rationales_accepted"] for r in rows] == [None, 2, 3]
    assert [r["samples"] for r in rows] == [None, 4, 6]
    assert [r["contrast_pairs"] for r in rows] == [None, 0, 3]
    # Calls and cost come from teacher_calls: 4 calls in round 0 (one failed), 4 in round 1.
    assert [r["teacher_calls"] for r in rows] == [0, 4, 4]
    assert [r["teacher_cost_usd"] for r in rows] == pytest.approx([0.0, 0.024, 0.042])
    assert [r["cache_hits"] for r in rows] == [None, 0, 1]
    assert [r["train_loss_last"] for r in rows] == [None, 1.5, 1.2]
    assert [(r["exam_s"], r["teach_s"], r["train_s"], r["eval_s"]) for r in rows] == [
        (None, None, None, 5.0),
        (None, 2.0, 30.0, 6.0),
        (12.0, 3.0, 40.0, 7.0),
    ]
    assert [r["round_s"] for r in rows] == [10.0, 60.0, 90.0]


def test_question_history(history: Path) -> None:
    rows = fetch_rows(
        history,
        "SELECT example_id, round, phase, mode, correct, share_correct, samples, gold "
        "FROM question_history WHERE phase = 'exam' ORDER BY example_id",
    )
    assert rows == [
        {
            "example_id": "p1",
            "round": 1,
            "phase": "exam",
            "mode": "explain",
            "correct": True,
            "share_correct": 1.0,
            "samples": 2,
            "gold": "1",
        },
        {
            "example_id": "p2",
            "round": 1,
            "phase": "exam",
            "mode": "explain",
            "correct": False,
            "share_correct": 0.5,
            "samples": 2,
            "gold": "1",
        },
        {
            "example_id": "p3",
            "round": 1,
            "phase": "exam",
            "mode": "explain",
            "correct": False,
            "share_correct": 0.0,
            "samples": 2,
            "gold": "1",
        },
    ]
    evals = fetch_rows(
        history,
        "SELECT example_id, round, mode, correct FROM question_history "
        "WHERE phase = 'eval' ORDER BY mode, round, example_id",
    )
    expected = [
        {"example_id": f"t{i + 1}", "round": r, "mode": m, "correct": ok}
        for m in ("answer", "explain")
        for r in (-1, 0, 1)
        for i, ok in enumerate(EVAL[m][r])
    ]
    assert evals == expected


def test_transitions(history: Path) -> None:
    rows = fetch_rows(history, "SELECT * FROM transitions ORDER BY from_round, mode")
    got = [
        (
            r["from_round"],
            r["to_round"],
            r["split"],
            r["mode"],
            r["wrong_to_right"],
            r["right_to_wrong"],
            r["stayed_right"],
            r["stayed_wrong"],
            r["wrong_to_right_ids"],
            r["right_to_wrong_ids"],
        )
        for r in rows
    ]
    assert got == [
        (-1, 0, "test", "answer", 1, 0, 0, 3, ["t2"], []),
        (-1, 0, "test", "explain", 1, 0, 1, 2, ["t1"], []),
        (0, 1, "test", "answer", 1, 0, 1, 2, ["t3"], []),
        (0, 1, "test", "explain", 1, 1, 1, 1, ["t2"], ["t4"]),
    ]


def test_teacher_yield(history: Path) -> None:
    rows = fetch_rows(history, "SELECT * FROM teacher_yield")
    got = [
        (
            r["round"],
            r["teacher"],
            r["strategy"],
            r["calls"],
            r["failed_calls"],
            r["rationales"],
            r["accepted"],
            dict(r["rejections"] or {}),
            r["tokens_in"],
            r["tokens_out"],
        )
        for r in rows
    ]
    assert got == [
        (0, "big", "cote", 3, 1, 3, 1, {"wrong_answer": 1, "failed": 1}, 300, 150),
        (0, "big", "rp", 1, 0, 1, 1, {}, 100, 50),
        (1, "big", "tailored", 2, 0, 2, 2, {}, 200, 100),
        (1, "small", "tailored", 2, 0, 2, 1, {"wrong_answer": 1}, 200, 100),
    ]
    assert [r["acceptance_rate"] for r in rows] == pytest.approx([1 / 3, 1.0, 1.0, 0.5])
    assert [r["cost_usd"] for r in rows] == pytest.approx([0.02, 0.004, 0.04, 0.002])
    assert [r["cost_per_accepted_usd"] for r in rows] == pytest.approx([0.02, 0.004, 0.02, 0.002])


def test_training_curves(history: Path) -> None:
    rows = fetch_rows(history, "SELECT round, step, term, value FROM training_curves ORDER BY round, step, term")
    assert [(r["round"], r["step"], r["term"], r["value"]) for r in rows] == [
        (0, 1, "answer", 1.0),
        (0, 1, "explain", 3.0),
        (0, 1, "total", 2.0),
        (0, 2, "answer", 0.8),
        (0, 2, "explain", 2.2),
        (0, 2, "total", 1.5),
        (1, 1, "answer", 0.5),
        (1, 1, "contrast", 0.4),
        (1, 1, "explain", 1.5),
        (1, 1, "total", 1.2),
    ]


def test_several_runs_get_a_run_column(tmp_path: Path, history: Path) -> None:
    other = build_history(tmp_path / "beta", name="beta", shift=0.25)
    rows = multi_query(
        [history, other], "SELECT run, round, test_accuracy FROM round_summary ORDER BY run, round"
    ).to_pylist()
    assert rows == [{"run": "alpha", "round": r, "test_accuracy": a} for r, a in ((-1, 0.25), (0, 0.5), (1, 0.5))] + [
        {"run": "beta", "round": r, "test_accuracy": a} for r, a in ((-1, 0.5), (0, 0.75), (1, 0.75))
    ]
    # every table and view is there, joined per run
    joined = multi_query(
        [history, other],
        """
        SELECT t.run, sum(t.wrong_to_right) AS fixed, any_value(y.cost) AS cost FROM transitions t
        JOIN (SELECT run, sum(cost_usd) AS cost FROM teacher_yield GROUP BY run) y USING (run)
        GROUP BY t.run ORDER BY t.run""",
    ).to_pylist()
    assert [(r["run"], r["fixed"]) for r in joined] == [("alpha", 4), ("beta", 4)]
    assert [r["cost"] for r in joined] == pytest.approx([0.066, 0.066])
    # two runs named alike are told apart by their paths
    assert run_names([tmp_path / "a" / "quick", tmp_path / "b" / "quick", history]) == [
        str(tmp_path / "a" / "quick"),
        str(tmp_path / "b" / "quick"),
        "alpha",
    ]


def test_cli_several_runs_formats(tmp_path: Path, history: Path, capsys: pytest.CaptureFixture) -> None:
    other = build_history(tmp_path / "beta", name="beta", shift=0.25)
    assert split_sql_targets([str(history), str(other), "SELECT 1"]) == ([str(history), str(other)], "SELECT 1")
    long_query = "SELECT " + " + ".join(["1"] * 300) + " AS s"  # longer than any file name may be
    assert split_sql_targets([str(history), long_query]) == ([str(history)], long_query)
    assert (
        main(
            [
                "sql",
                str(history),
                str(other),
                "SELECT run, count(*) AS n FROM attempts GROUP BY run ORDER BY run",
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"run": "alpha", "n": 30}, {"run": "beta", "n": 30}]
    out = tmp_path / "rounds.parquet"
    assert (
        main(["sql", str(history), str(other), "SELECT * FROM round_summary", "--format", "parquet", "--out", str(out)])
        == 0
    )
    table = pq.read_table(out)
    assert table.num_rows == 6 and table.column_names[:2] == ["run", "round"]
    query_file = tmp_path / "q.sql"
    query_file.write_text(
        "-- fixed questions\nSELECT from_round, wrong_to_right FROM transitions\n"
        "WHERE mode = 'explain' ORDER BY from_round;\n"
    )
    assert main(["sql", str(history), "-f", str(query_file), "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["from_round,wrong_to_right", "-1,1", "0,1"]
    assert main(["sql", str(history), "-f", str(query_file), "--format", "markdown"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| from_round | wrong_to_right |",
        "|---|---|",
        "| -1 | 1 |",
        "| 0 | 1 |",
    ]
    assert main(["sql", str(history), "SELECT 1", "SELECT 2"]) == 2
    assert "one quoted argument" in capsys.readouterr().err
    assert main(["sql", str(history), "--format", "parquet", "SELECT 1"]) == 2
    assert "needs --out" in capsys.readouterr().err


WRITES = [
    "INSERT INTO metrics VALUES (5, 'test', 'x', 1)",
    "UPDATE metrics SET value = 2",
    "DELETE FROM attempts",
    "DROP TABLE metrics",
    "CREATE TABLE t (a INT)",
    "CREATE VIEW v AS SELECT 1",
    "SELECT 1; DROP VIEW round_summary",
    "/* comment */ delete from metrics",
    "ALTER TABLE runs ADD x INT",
    "ATTACH ':memory:' AS m",
    "COPY metrics TO '{tmp}/leak.csv'",
    "CHECKPOINT",
]


@pytest.mark.parametrize("sql", WRITES)
def test_sql_refuses_writes_and_file_is_unchanged(tmp_path: Path, sql: str, capsys: pytest.CaptureFixture) -> None:
    run = build_history(tmp_path / "run")
    other = build_history(tmp_path / "other", name="other")
    files = [run / "history.duckdb", other / "history.duckdb"]
    before = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    stamps = [f.stat().st_mtime_ns for f in files]
    sql = sql.format(tmp=tmp_path)
    with pytest.raises(ReadOnlyQueryError, match="only reads"):
        query(run, sql)
    with pytest.raises(ReadOnlyQueryError, match="only reads"):
        multi_query([run, other], sql)
    assert main(["sql", str(run), sql]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tutorloop: error: refused:") and err.count("\n") == 1
    assert main(["sql", str(run), str(other), sql]) == 2
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == before
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert not (tmp_path / "leak.csv").exists()


def test_reads_that_look_like_writes_are_allowed(history: Path) -> None:
    rows = fetch_rows(history, "SELECT 'DROP TABLE x; DELETE' AS s")
    assert rows == [{"s": "DROP TABLE x; DELETE"}]
    assert {r["name"] for r in fetch_rows(history, "SHOW TABLES")} >= {"attempts", "round_summary"}
    assert fetch_rows(history, "DESCRIBE metrics")[0]["column_name"] == "round"
    pivot = fetch_rows(
        history,
        "PIVOT (SELECT round, name, value FROM metrics WHERE split = 'test') ON name USING first(value) ORDER BY round",
    )
    assert [(r["round"], r["accuracy_answer"]) for r in pivot] == [(-1, 0.0), (0, 0.25), (1, 0.5)]


def test_interactive_prompt_reads_statements_from_stdin(history: Path, tmp_path: Path) -> None:
    other = build_history(tmp_path / "beta", name="beta")
    script = (
        "SELECT round, test_accuracy\n  FROM round_summary\n  ORDER BY round;\n"
        "SELECT nope FROM metrics;\n"
        "DELETE FROM metrics;\n"
        "SELECT count(DISTINCT run) AS runs FROM rounds;\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "tutorloop.loop.cli", "sql", str(history), str(other), "--format", "csv"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    # The first and last statements answer; the two bad ones print one error line each and the prompt goes on.
    blocks = result.stdout.strip().split("\n")
    assert blocks[0] == "round,test_accuracy" and blocks[-2:] == ["runs", "2"]
    assert len([line for line in blocks if line.startswith(("-1,", "0,", "1,"))]) == 6
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "SQL:" in errors[0] and "refused: DELETE" in errors[1]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


WRITER = """
import sys, time
from tutorloop.store.writer import StoreWriter
writer = StoreWriter(sys.argv[1], lock_timeout_s=30)
print("ready", flush=True)
for i in range(int(sys.argv[2])):
    with writer.transaction() as tx:   # a batch like the engine's: open, write, hold briefly, close
        tx.insert("metrics", [{"round": 100 + i, "split": "test", "name": "accuracy", "value": i / 100}])
        time.sleep(float(sys.argv[3]))
    time.sleep(0.01)
print("wrote", i + 1, flush=True)
"""

HOLD = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_sql_during_a_live_run_answers_or_says_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = build_history(tmp_path / "live")
    path = run / "history.duckdb"
    # A writer that holds the file for a long time: the reader waits its bounded time, then says so.
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        assert main(["sql", str(run), "SELECT count(*) FROM metrics", "--wait", "1"]) == 1
        err = capsys.readouterr().err
        assert "a run is writing" in err and "try again" in err and err.count("\n") == 1
        assert time.monotonic() - started < 10
        assert main(["sql", str(run), str(tmp_path / "live"), "SELECT 1", "--wait", "1"]) == 1
        assert "a run is writing" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # A writer committing batch after batch, like a round engine: every read answers (between batches)
    # or says the run is writing, and the writer finishes every batch.
    batches = 40
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(batches), "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert writer.stdout.readline().strip() == "ready"
    answered = busy = 0
    seen = []
    while writer.poll() is None:
        code = main(
            ["sql", str(run), "SELECT count(*) AS n FROM metrics WHERE round >= 100", "--format", "csv", "--wait", "2"]
        )
        captured = capsys.readouterr()
        if code == 0:
            answered += 1
            seen.append(int(captured.out.split()[1]))
        else:
            busy += 1
            assert "a run is writing" in captured.err
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert out.strip() == f"wrote {batches}"
    assert answered > 0
    assert seen == sorted(seen)  # reads see whole batches, in order
    assert fetch_rows(run, "SELECT count(*) AS n FROM metrics WHERE round >= 100")[0]["n"] == batches
