"""Read-only access to a run's history, safe while a run is writing (bounded lock wait).

One run: its file opened read-only (`HistoryReader` reads it by meaning). Several runs: an in-memory
DuckDB that ATTACHes each history READ_ONLY and exposes every table and view under its usual name as
the union of the runs, with a `run` column in front, so one query compares runs (the views are this
version's views.sql, rebuilt over each run's tables). Every query opens and closes its files, so a
reader never holds a lock the run needs for longer than that query. A write is refused
(ReadOnlyQueryError); any other query DuckDB cannot run is a one-line StoreError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import duckdb
import pyarrow as pa

from tutorloop.loop.core.errors import ReadOnlyQueryError, StoreError

from .connect import connect, retry_on_lock
from .schema import TABLES, views_sql

HISTORY_FILE = "history.duckdb"
VIEWS = ("round_summary", "question_history", "transitions", "teacher_yield", "training_curves")
# Statement kinds a reader may run (DESCRIBE, SHOW and SUMMARIZE parse as SELECT).
_READ_STATEMENTS = {"SELECT", "EXPLAIN"}


def history_path(run_or_file: str | Path) -> Path:
    """A run directory or the history file itself -> the history file (which must exist)."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / HISTORY_FILE
    if not path.is_file():
        raise StoreError(f"{run_or_file}: no run history here (expected {path})")
    return path


def check_read_only(sql: str) -> None:
    """Refuse any statement that is not a read, naming its first keyword.

    DuckDB's own parser classifies the statements, so a `;` inside a string or a comment in front
    does not fool the check; text that does not parse is left for the query to report.
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error:
        return
    for statement in statements:
        # A PIVOT without an IN list parses as MULTI (DuckDB collects the column names first): a read.
        pivot = statement.type.name == "MULTI" and statement.query.lstrip().upper().startswith("PIVOT")
        if statement.type.name not in _READ_STATEMENTS and not pivot:
            words = statement.query.split()
            keyword = words[0].upper() if words else statement.type.name
            raise ReadOnlyQueryError(f"refused: {keyword} changes the history; tutorloop sql only reads")


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None) -> pa.Table:
    """The query's rows; a query DuckDB cannot run is a StoreError naming the first line of its error."""
    try:
        return con.sql(sql, params=params).to_arrow_table()
    except duckdb.Error as exc:
        first_line = str(exc).splitlines()[0]
        if "read-only" in str(exc):  # the connection's own guard, behind check_read_only
            raise ReadOnlyQueryError(f"refused: {first_line}; tutorloop sql only reads") from None
        raise StoreError(f"SQL: {first_line}") from None


def query(
    run_or_file: str | Path, sql: str, params: Sequence[Any] | None = None, *, timeout_s: float = 10.0
) -> pa.Table:
    """Run one read-only query and return its rows as an Arrow table."""
    check_read_only(sql)
    con = connect(history_path(run_or_file), read_only=True, timeout_s=timeout_s)
    try:
        return _run(con, sql, params)
    finally:
        con.close()


def fetch_rows(
    run_or_file: str | Path, sql: str, params: Sequence[Any] | None = None, *, timeout_s: float = 10.0
) -> list[dict]:
    return query(run_or_file, sql, params, timeout_s=timeout_s).to_pylist()


def run_names(runs: Sequence[str | Path]) -> list[str]:
    """The `run` column's values: each run directory's name, or the path as given where names repeat."""
    paths = [Path(r) for r in runs]
    names = [(p.parent.name if p.is_file() else p.name) or str(p) for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def multi_query(
    runs: Sequence[str | Path], sql: str, params: Sequence[Any] | None = None, *, timeout_s: float = 10.0
) -> pa.Table:
    """Query several runs at once: every table and view is the union of the runs plus a `run` column."""
    check_read_only(sql)
    paths = [history_path(r) for r in runs]
    names = run_names(runs)
    con = duckdb.connect(":memory:")
    try:
        _attach_runs(con, paths, names, timeout_s)
        return _run(con, sql, params)
    finally:
        con.close()


def _attach_runs(con: duckdb.DuckDBPyConnection, paths: list[Path], names: list[str], timeout_s: float) -> None:
    """Every table and view of `con`'s main schema as the union of the runs' own, with a `run` column."""
    try:
        for index, path in enumerate(paths):
            attach = f"ATTACH {sql_literal(str(path))} AS run{index} (READ_ONLY)"
            retry_on_lock(lambda: con.execute(attach), path, read_only=True, timeout_s=timeout_s)  # noqa: B023
            # Each run gets a schema of its own with its tables and the views rebuilt on them: a view
            # resolves its unqualified table names there, never in the unions below.
            con.execute(f"CREATE SCHEMA r{index}")
            for table in TABLES:
                con.execute(f"CREATE VIEW r{index}.{table} AS SELECT * FROM run{index}.main.{table}")
            con.execute(f"USE memory.r{index}")
            con.execute(views_sql())
        con.execute("USE memory.main")
        for relation in (*TABLES, *VIEWS):
            # BY NAME: files from different tutorloop versions may order or lack columns differently.
            parts = [f"SELECT {sql_literal(name)} AS run, * FROM r{i}.{relation}" for i, name in enumerate(names)]
            con.execute(f"CREATE VIEW {relation} AS " + " UNION ALL BY NAME ".join(parts))
    except duckdb.Error as exc:  # a file too old or too damaged for this version's views
        raise StoreError(
            f"{', '.join(map(str, paths))}: cannot read the histories together ({str(exc).splitlines()[0]})"
        ) from None


def query_runs(
    runs: Sequence[str | Path], sql: str, params: Sequence[Any] | None = None, *, timeout_s: float = 10.0
) -> pa.Table:
    """One run: its own tables. Several: the unions with a `run` column (multi_query)."""
    if len(runs) == 1:
        return query(runs[0], sql, params, timeout_s=timeout_s)
    return multi_query(runs, sql, params, timeout_s=timeout_s)


class HistoryReader:
    """One run's history, read-only, by meaning: what is done, stored and spent there. Each read opens
    and closes the file (as `query` does), so a reader never holds the lock a running run needs."""

    def __init__(self, run_dir: Path, *, timeout_s: float = 10.0) -> None:
        self.path = history_path(run_dir)
        self.timeout_s = timeout_s

    def _rows(self, sql: str) -> list[dict]:
        return fetch_rows(self.path, sql, timeout_s=self.timeout_s)

    def done_rounds(self) -> set[int]:
        return {r["round"] for r in self._rows("SELECT round FROM rounds WHERE status = 'done'")}

    def request_hashes(self) -> set[str]:
        """The request hashes of the stored teacher answers (the teacher's cache)."""
        return {r["request_hash"] for r in self._rows("SELECT request_hash FROM teacher_calls")}

    def spent_usd(self) -> float:
        return float(self._rows("SELECT coalesce(sum(cost_usd), 0) AS usd FROM teacher_calls")[0]["usd"])
