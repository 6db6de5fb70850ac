"""A replay recording whose lines hold question and rationale only (`answer` is optional): each rationale
is graded by its own final answer, and a round 0 that accepts none of them stops with one line while
the history keeps the rejected rationales where that line points (teacher_yield)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from test_replay_recordings import teach_with_calls

from tutorloop.loop.core.datasets import Example
from tutorloop.store.query import fetch_rows

REPO = Path(__file__).resolve().parents[1]
# Word problems whose rationales name other numbers before their final one, as worked solutions do.
PROBLEMS = [
    (
        "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "7",
        "Tom starts with 3 apples. He buys 4 more, so he has 3 + 4 = 7 apples.",
    ),
    (
        "A box holds 10 pens and 6 are taken out. How many pens are left?",
        "4",
        "There were 10 pens and 6 were taken, which leaves 10 - 6 = 4 pens.",
    ),
    (
        "Each of 5 bags holds 2 oranges. How many oranges are there?",
        "10",
        "There are 5 bags with 2 oranges each: 5 * 2 = 10 oranges.",
    ),
    (
        "Sam reads 12 pages a day for 3 days. How many pages does he read?",
        "36",
        "12 pages a day for 3 days is 12 * 3 = 36 pages.",
    ),
]
TEST_PROBLEMS = [
    ("Ann has 8 cards and gives away 5. How many are left?", "3"),
    ("A shelf has 2 rows of 9 books. How many books?", "18"),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_rationale_without_a_recorded_answer_is_graded_by_its_own_final_answer(tmp_path: Path) -> None:
    examples = [Example(f"mine/train/{i}", "mine", "train", q, a) for i, (q, a, _) in enumerate(PROBLEMS)]
    rows = [{"question": q, "rationale": r} for q, _, r in PROBLEMS[:2]]
    rows.append({"question": PROBLEMS[2][0], "rationale": "There are 5 bags with 2 oranges each: 5 + 2 = 7."})
    rows.append({"question": PROBLEMS[3][0], "rationale": "He reads the same number of pages every day."})
    rationales, stored = teach_with_calls(write_jsonl(tmp_path / "paid.jsonl", rows), examples)
    by_id = {r["example_id"]: r for r in rationales}
    assert [by_id[f"mine/train/{i}"]["accepted"] for i in range(2)] == [True, True]
    assert [by_id[f"mine/train/{i}"]["extracted"] for i in range(2)] == ["7", "4"]
    assert by_id["mine/train/2"]["reject_reason"] == "wrong_answer" and by_id["mine/train/2"]["extracted"] == "7"
    assert by_id["mine/train/3"]["reject_reason"] == "no_answer"
    # The stored answer call says which answer was graded, not the rationale a second time.
    answered = stored[by_id["mine/train/0"]["request_hash"]]
    assert answered["stage"] == "answer" and answered["response"].strip() == "7"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tutorloop.loop.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )


def error_lines(stderr: str) -> list[str]:
    """The CLI's error lines (Ray may add its own lines to stderr as it shuts down)."""
    return [line for line in stderr.splitlines() if line.startswith("tutorloop: error:")]


def test_a_round_0_without_an_accepted_rationale_leaves_its_rejections_in_teacher_yield(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": q, "answer": a} for q, a, _ in PROBLEMS])
    test = write_jsonl(tmp_path / "test.jsonl", [{"question": q, "answer": a} for q, a in TEST_PROBLEMS])
    # Every rationale ends on a wrong number (one more than gold).
    recording = write_jsonl(
        tmp_path / "wrong.jsonl",
        [{"question": q, "rationale": f"{r.rsplit(' = ', 1)[0]} = {int(a) + 1}."} for q, a, r in PROBLEMS],
    )
    cfg = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())
    cfg["run"].update(baseline=False, rounds=0, report=False)
    cfg["data"] = {"task": "jsonl", "train_path": str(train), "test_path": str(test)}
    cfg["teacher"] = {
        "teachers": [{"name": "paid", "backend": "replay", "recording": str(recording)}],
        "strategies": ["zero_shot_cot"],
    }
    config = tmp_path / "replay.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"

    first = run_cli("run", str(config), "--run-dir", str(run_dir))
    assert first.returncode != 0, first.stderr[-3000:]
    [message] = error_lines(first.stderr)
    assert "round 0 got no accepted teacher rationale" in message and "teacher_yield" in message
    assert f"(wrong_answer {len(PROBLEMS)})" in message
    history = run_dir / "history.duckdb"
    [row] = fetch_rows(history, "SELECT * FROM teacher_yield")
    assert (row["round"], row["teacher"], row["calls"]) == (0, "paid", 2 * len(PROBLEMS))
    assert (row["rationales"], row["accepted"]) == (len(PROBLEMS), 0)
    assert dict(row["rejections"]) == {"wrong_answer": len(PROBLEMS)}
    [phase] = fetch_rows(history, "SELECT status FROM phases WHERE round = 0 AND name = 'teach'")
    assert phase["status"] != "done"

    # Resuming redoes the phase from the stored answers: nothing is asked again, nothing counted twice.
    again = run_cli("resume", str(run_dir))
    assert again.returncode != 0 and [message] == error_lines(again.stderr)
    [row] = fetch_rows(history, "SELECT * FROM teacher_yield")
    assert (row["calls"], row["rationales"], row["accepted"]) == (2 * len(PROBLEMS), len(PROBLEMS), 0)
    journal = (run_dir / "teacher_journal.jsonl").read_text().splitlines()
    assert sum(1 for line in journal if line.startswith('{"sent"')) == 2 * len(PROBLEMS)  # sent by the first try only
