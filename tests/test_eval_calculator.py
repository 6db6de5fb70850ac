"""scripts/eval_calculator.py on the shared quick run: every round evaluated again with the calculator,
paired against the run's own stored eval."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from shared_run import REPO, shared_quick_run

from tutorloop.loop.core.calculator import calculator_result
from tutorloop.store.query import fetch_rows

EQUATION = re.compile(r"(\d+) ([-+*x]) (\d+) = (-?\d+)")


def test_rounds_are_evaluated_again_with_exact_arithmetic(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    run_dir = shared_quick_run(tmp_path_factory)
    dump = tmp_path / "outputs.jsonl"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/eval_calculator.py"), "--run", str(run_dir), "--dump", str(dump)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    stored = fetch_rows(
        run_dir,
        "SELECT round, example_id, output, correct FROM attempts WHERE phase = 'eval' "
        "AND mode = 'explain' AND round >= 0",
    )
    rounds = sorted({r["round"] for r in stored})
    assert rounds == [0, 1, 2] and len(rows) == len(stored)
    # The baseline column is the run's own eval, question by question.
    by_key = {(r["round"], r["example_id"]): r for r in stored}
    assert all(by_key[(r["round"], r["example_id"])]["output"] == r["plain"] for r in rows)

    # With the calculator every equation the student writes is exact; an answer whose arithmetic was already
    # exact (here: most of them, the quick student writes few equations) is decoded again exactly as stored.
    # tests/test_exam.py shows the calculator at work on a student that slips.
    def exact(text: str) -> bool:
        return all(calculator_result(f"{a} {op} {b} =") == f" {c}" for a, op, b, c in EQUATION.findall(text))

    assert all(exact(r["calculator"]) for r in rows)
    assert all(r["calculator"] == r["plain"] for r in rows if exact(r["plain"]))
    # The printed table: one line per round with the stored accuracy, then each round against the first.
    for round_ in rounds:
        questions = sum(r["round"] == round_ for r in stored)
        right = sum(r["correct"] for r in stored if r["round"] == round_)
        with_calculator = sum(r["calculator_correct"] for r in rows if r["round"] == round_)
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"| {round_} |"))
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1] == f"{right / questions:.1%}" and cells[2] == f"{with_calculator / questions:.1%}"
    assert "| round 2 |" in result.stdout
    missing = subprocess.run(
        [sys.executable, str(REPO / "scripts/eval_calculator.py"), "--run", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and missing.stderr.strip().splitlines() == [
        f"{tmp_path}: not a finished run directory (no config.yaml)"
    ]
