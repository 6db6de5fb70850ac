"""`tutorloop` on bad input: one line on stderr naming the problem, a non-zero exit code, no traceback.

Every case goes through `tutorloop.loop.cli.main` with real files (a synthetic history built by
tests/test_history.py, a YAML config on disk); none gets far enough to start Ray.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_history import build_history

from tutorloop.loop.cli import main


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_history(tmp_path_factory.mktemp("cli") / "alpha")


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert err.startswith("tutorloop: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return code, err


CASES = [
    # (arguments, with {run} the history's run directory and {tmp} a fresh folder; exit code; in the message)
    (["status", "{tmp}/missing"], 1, "no run history here"),
    (["report", "{tmp}/missing"], 1, "no run history here"),
    (["compare", "{run}", "{tmp}/missing"], 1, "no run history here"),
    (["export", "{tmp}/missing", "--out", "{tmp}/out"], 1, "no run history here"),
    (["resume", "{tmp}/missing"], 1, "no run history here"),
    (["sql", "{tmp}/missing", "SELECT 1"], 2, "not a run directory or history file"),
    (["sql", "{tmp}/garbage.duckdb", "SELECT 1"], 1, "cannot open the history"),
    (["sql", "{run}", "SELECT nope FROM metrics"], 1, "SQL: Binder Error"),
    (["sql", "{run}", "DELETE FROM metrics"], 2, "refused: DELETE changes the history"),
    (["sql", "{run}", "SELECT 1", "--format", "xml"], 2, "sql: argument --format: invalid choice: 'xml'"),
    (["sql", "{run}", "-f", "{tmp}/missing.sql"], 2, "-f {tmp}/missing.sql: cannot read (No such file"),
    (
        ["sql", "{run}", "SELECT 1", "--format", "csv", "--out", "{tmp}/no/such/dir.csv"],
        1,
        "--out {tmp}/no/such/dir.csv: cannot write",
    ),
    (["sql", "{run}", "SELECT 1", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["compare", "{run}", "--format", "yaml"], 2, "compare: argument --format: invalid choice: 'yaml'"),
    ([], 2, "the following arguments are required: COMMAND"),
    (["run", "{tmp}/missing.yaml"], 2, "{tmp}/missing.yaml: config file not found"),
    (["run", "{tmp}/config.yaml", "--set", "run.bogus=1"], 2, "unknown key 'run.bogus'"),
    (["run", "{tmp}/config.yaml", "--set", "run.rounds"], 2, "expected KEY=VALUE"),
]


@pytest.mark.parametrize("argv,code,expected", CASES, ids=[" ".join(c[0])[:60] or "no command" for c in CASES])
def test_bad_input_is_one_line(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], code: int, expected: str
) -> None:
    (tmp_path / "garbage.duckdb").write_text("not a database\n")
    (tmp_path / "config.yaml").write_text("run:\n  name: x\n")
    fill = {"run": str(history), "tmp": str(tmp_path)}
    got, err = one_line_error(capsys, [a.format(**fill) for a in argv])
    assert got == code, err
    assert expected.format(**fill) in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_interactive_sql_without_a_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = one_line_error(capsys, ["sql", str(tmp_path / "nothing")])
    assert code == 2 and "not a run directory" in err
