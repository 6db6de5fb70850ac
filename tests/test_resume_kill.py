"""Kill -9 a run at points in every phase, resume it, and compare with an uninterrupted run.

The teacher is the program teacher behind the local OpenAI-compatible server, which records every
request, so the test sees exactly which requests were sent again. A kill outside the teaching phase
must cost no request at all. A kill during teaching can cost only the requests in flight at that
instant (sent, answer not yet received): every answer that reached the driver is in the teacher
journal at once, and the resumed run stores it instead of asking again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from teacher_server import TeacherServer

from tutorloop.store.journal import TeacherJournal
from tutorloop.store.query import fetch_rows

REPO = Path(__file__).resolve().parents[1]

# (round, phase) to kill in; None phase = between rounds (right after the round is marked done).
CONCURRENCY = 4
KILL_POINTS = [
    (-1, "eval"),
    (0, "teach"),
    (0, "train"),
    (0, None),
    (1, "exam"),
    (1, "teach"),
    (1, "train"),
    (2, "eval"),
]


def overrides(server: TeacherServer) -> list[str]:
    return [
        "--set",
        "teacher.teachers.0.backend=openai",
        "--set",
        f"teacher.teachers.0.base_url={server.base_url}",
        "--set",
        "teacher.teachers.0.model=program",
        "--set",
        "training.checkpoint_every=3",
        "--set",
        f"teacher.concurrency={CONCURRENCY}",
    ]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": "EMPTY", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tutorloop.loop.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def descendants(pid: int) -> set[int]:
    table = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(map(int, table[::2]), map(int, table[1::2])):
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run and, at the same instant, every process under it (the local Ray it started,
    its actors), as when the machine's run dies: nothing of the old run keeps talking to the teacher."""
    victims = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def reached(run_dir: Path, round_: int, phase: str | None) -> bool:
    history = run_dir / "history.duckdb"
    if not history.exists():
        return False
    try:
        if phase is None:
            rows = fetch_rows(
                history, "SELECT 1 FROM rounds WHERE round = ? AND status = 'done'", [round_], timeout_s=0.5
            )
        else:
            rows = fetch_rows(
                history,
                "SELECT 1 FROM phases WHERE round = ? AND name = ? AND status = 'running' "
                "AND (progress > 0 OR name = 'train')",
                [round_, phase],
                timeout_s=0.5,
            )
    except Exception:  # the writer holds the file (StoreError), or it is being created
        return False
    return bool(rows)


def snapshot(run_dir: Path) -> dict:
    return {
        "rounds": fetch_rows(run_dir, "SELECT round, kind, status FROM rounds ORDER BY round"),
        "metrics": fetch_rows(
            run_dir,
            "SELECT round, split, name, round(value, 6) AS value FROM metrics "
            "WHERE name NOT LIKE '%cache_hits%' AND name NOT LIKE 'teacher_calls' "
            "ORDER BY round, split, name",
        ),
        # What was asked, not the request hash: the hash covers the server's address, and the two runs
        # talk to two servers.
        "requests": {
            (r["teacher"], r["request"], r["sample_index"])
            for r in fetch_rows(run_dir, "SELECT teacher, request, sample_index FROM teacher_calls")
        },
        "attempts": fetch_rows(run_dir, "SELECT count(*) AS n FROM attempts")[0]["n"],
        "rationales": fetch_rows(
            run_dir, "SELECT round, example_id, accepted FROM rationales ORDER BY round, example_id, sample_index"
        ),
    }


def prompt_of(request_json: str) -> str:
    """The prompt the server saw for a stored request: the last user message, or the completion prompt."""
    payload = json.loads(request_json)
    users = [m["content"] for m in payload.get("messages") or [] if m["role"] == "user"]
    return users[-1] if users else payload["prompt"]


@pytest.mark.slow
def test_kill_anywhere_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    with TeacherServer() as server:
        reference = tmp_path / "reference"
        proc = start(["run", "configs/quick.yaml", "--run-dir", str(reference), *overrides(server)])
        assert proc.wait(timeout=900) == 0
        reference_prompts = Counter(entry["prompt"] for entry in server.requests)
    expected = snapshot(reference)
    assert sum(reference_prompts.values()) == len(expected["requests"])

    rng = random.Random(7)
    # A little latency keeps the teaching phase open long enough for the poller to catch it.
    with TeacherServer(latency_s=0.05) as server:
        killed = tmp_path / "killed"
        proc = start(["run", "configs/quick.yaml", "--run-dir", str(killed), *overrides(server)])
        kills = teach_kills = 0
        in_flight: list[str] = []  # request hashes sent and not answered when a kill hit
        for round_, phase in KILL_POINTS:
            deadline = time.monotonic() + 600
            while not reached(killed, round_, phase):
                assert proc.poll() is None, f"run ended before the kill point {round_} {phase}"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
            if proc.poll() is None:
                kill_tree(proc)
                kills += 1
                lost = TeacherJournal(killed).recover().in_flight
                assert len(lost) <= CONCURRENCY, (round_, phase, lost)
                if phase == "teach":
                    teach_kills += 1
                else:
                    assert not lost, (round_, phase)
                in_flight += lost
            proc = start(["resume", str(killed)])
        assert proc.wait(timeout=900) == 0
        assert kills >= len(KILL_POINTS) - 1
        got = snapshot(killed)
        sent_prompts = Counter(entry["prompt"] for entry in server.requests)
    assert not TeacherJournal(killed).path.exists()  # removed once its teaching phase was committed
    prompts = {
        r["request_hash"]: prompt_of(r["request"])
        for r in fetch_rows(killed, "SELECT request_hash, request FROM teacher_calls")
    }
    resendable = Counter(prompts[h] for h in in_flight)
    sent_again = sent_prompts - reference_prompts
    print(
        f"kills: {kills} ({teach_kills} while teaching); in flight at the kills: {len(in_flight)}; "
        f"requests sent again: {sum(sent_again.values())}"
    )
    # Every request went out at least once, and only a request in flight at a kill went out again.
    assert not reference_prompts - sent_prompts
    assert not sent_again - resendable, sent_again - resendable
    assert got["rounds"] == expected["rounds"]
    assert got["requests"] == expected["requests"]
    assert got["rationales"] == expected["rationales"]
    assert got["metrics"] == expected["metrics"]
