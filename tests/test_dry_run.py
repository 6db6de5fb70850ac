"""`tutorloop run CONFIG --dry-run`: the plan and worst-case cost, nothing started, sent or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_engine_plan import config, new_run

from tutorloop.loop.cli import main
from tutorloop.loop.dry_run import plan_run, read_stored
from tutorloop.store.query import HISTORY_FILE, fetch_rows

REPO = Path(__file__).resolve().parents[1]
PRICED = [
    "data.task=multiarith",
    "data.pool_size=20",
    "data.test_size=10",
    "run.rounds=2",
    "teacher.teachers.0.backend=replay",
    "teacher.teachers.0.name=paid",
    "teacher.teachers.0.price.input_per_mtok=2.0",
    "teacher.teachers.0.price.output_per_mtok=10.0",
    "teacher.strategies=[zero_shot_cot]",
    "teacher.max_tokens=100",
    "training.max_mistakes=5",
]


def dry(capsys: pytest.CaptureFixture, run_dir: Path, *overrides: str) -> str:
    assert (
        main(
            [
                "run",
                str(REPO / "configs" / "quick.yaml"),
                "--dry-run",
                "--run-dir",
                str(run_dir),
                *[f"--set={o}" for o in overrides],
            ]
        )
        == 0
    )
    return capsys.readouterr().out


def test_the_plan_and_worst_case_cost_of_a_priced_teacher(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "new"
    out = dry(capsys, run_dir, *PRICED, "teacher.max_cost_usd=0.01")
    assert not run_dir.exists()  # no run directory, no history
    rounds = {r.round: r for r in plan_run(config(*PRICED), None)}
    assert [rounds[r].kind for r in (-1, 0, 1, 2)] == ["baseline", "core", "tailored", "tailored"]
    assert [rounds[r].eval_questions for r in rounds] == [10] * 4
    core, tailored = rounds[0], rounds[1]
    # zero-shot CoT: two requests per question, the second reads off the answer in at most 32 tokens
    assert (core.teach_questions, core.teacher_requests, core.max_tokens_out) == (20, 40, 20 * (100 + 32))
    assert core.max_cost_usd == pytest.approx((core.tokens_in * 2.0 + core.max_tokens_out * 10.0) / 1e6)
    assert core.tokens_in > 20 * 2 * 10  # the questions and the triggers, twice
    # a tailored round at its worst: every pool question wrong, cut to training.max_mistakes
    assert (tailored.exam_questions, tailored.teach_questions, tailored.teacher_requests) == (20, 5, 10)
    total = sum(r.max_cost_usd for r in rounds.values())
    assert f"${total:.4f} for the rounds still to run" in out
    assert "paid (replay) $2 in / $10 out" in out
    assert "budget teacher.max_cost_usd $0.0100: $0.0000 spent" in out and "may be reached" in out
    assert "(new)" in out and "(4 rows)" in out


def test_an_existing_run_shows_what_is_stored_and_stays_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = config()
    engine, _ = new_run(cfg, tmp_path)
    assert engine.run() == 0
    run_dir = engine.run_dir
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    history = (run_dir / HISTORY_FILE).read_bytes()
    out = dry(
        capsys,
        run_dir,
        "run.report=false",
        "run.rounds=2",
        "data.synthetic.train_size=12",
        "data.synthetic.test_size=6",
    )
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    assert (run_dir / HISTORY_FILE).read_bytes() == history
    stored = read_stored(run_dir)
    answers = fetch_rows(run_dir, "SELECT count(*) AS n FROM teacher_calls")[0]["n"]
    assert stored.done_rounds == {-1, 0, 1} and stored.answers == answers > 0
    assert f"stored: rounds done -1, 0, 1; {answers} teacher answers cached" in out
    rounds = plan_run(config("run.rounds=2"), stored)
    assert [r.status for r in rounds] == ["done", "done", "done", "planned"]
    # every round-0 request of the program teacher (one stage) was answered before
    assert rounds[1].cached == rounds[1].teacher_requests == 12
    assert "(existing)" in out


def test_a_bad_recording_stops_the_dry_run_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recording = tmp_path / "paid.jsonl"
    recording.write_text(json.dumps({"question": "q", "rationale": "r"}) + "\n{oops\n")
    code = main(
        [
            "run",
            str(REPO / "configs" / "quick.yaml"),
            "--dry-run",
            "--run-dir",
            str(tmp_path / "r"),
            *[f"--set={o}" for o in PRICED],
            f"--set=teacher.teachers.0.recording={recording}",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert f"{recording}: line 2: bad JSON" in err
