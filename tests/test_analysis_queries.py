"""The SQL analyses shipped under scripts/, run through `tutorloop sql -f` on a real run history whose test
outputs are set by hand, so every count is known."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from shared_run import REPO, cli, shared_quick_run

from tutorloop.loop.fork import fork_run
from tutorloop.store.history import RunHistory
from tutorloop.store.query import fetch_rows

# Round 0's first three test answers; every other answer holds no equation.
OUTPUTS = [
    "He has 26 + 36 = 62 files. Then 62 - 48 = 14. Therefore, the answer is 14.",  # two true
    "Each box holds 1,200 / 4 = 300 pens, so 300 x 2 = 700. Therefore, the answer is 700.",  # comma; x false
    "She sold 7 * 3 = 20 cakes and 5 ÷ 0 = 1. Therefore, the answer is 20.",  # both false (one divides by 0)
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("analysis") / "run"
    fork_run(shared_quick_run(tmp_path_factory), target, after_round=0)
    ids = [
        r["example_id"]
        for r in fetch_rows(
            target,
            "SELECT DISTINCT example_id FROM attempts WHERE "
            "round = 0 AND phase = 'eval' AND split = 'test' "
            "ORDER BY example_id",
        )
    ]
    history = RunHistory(target)
    history.writer.sql("UPDATE attempts SET output = 'No numbers here.' WHERE round = 0 AND phase = 'eval'")
    for example_id, text in zip(ids, OUTPUTS):
        history.writer.sql(
            "UPDATE attempts SET output = ? WHERE round = 0 AND phase = 'eval' AND example_id = ?", [text, example_id]
        )
    return target


def test_equations_by_round_counts_and_checks_equations(run_dir: Path) -> None:
    out = cli("sql", str(run_dir), "-f", str(REPO / "scripts" / "equations_by_round.sql"), "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = {int(r["round"]): r for r in csv.DictReader(io.StringIO(out.stdout))}
    expected_right = fetch_rows(
        run_dir,
        "SELECT count(*) AS n FROM attempts WHERE round = 0 AND phase = 'eval' "
        "AND split = 'test' AND mode = 'explain' AND sample_index = 0 "
        "AND correct",
    )[0]["n"]
    answers = fetch_rows(
        run_dir,
        "SELECT count(DISTINCT example_id) AS n FROM attempts WHERE round = 0 AND phase = 'eval' AND split = 'test'",
    )[0]["n"]
    assert rows[0] == {
        "round": "0",
        "answers": str(answers),
        "right": str(expected_right),
        "equations": "6",
        "answers_with_one": "3",
        "false_equations": "3",
    }
