"""Read-only access to a run's history, safe while a run is writing (bounded lock wait)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from .connect import connect

HISTORY_FILE = "history.duckdb"

_WRITE_WORDS = re.compile(
    r"^\s*(INSERT|UPDATE|DELETE|DROP|CREATE|ALTER|ATTACH|DETACH|COPY|EXPORT|IMPORT|INSTALL|LOAD|"
    r"PRAGMA|SET|CALL|CHECKPOINT|VACUUM|TRUNCATE|MERGE|UPSERT|REPLACE|BEGIN|COMMIT|ROLLBACK)\b",
    re.IGNORECASE,
)


class ReadOnlyQueryError(ValueError):
    """A query tried to change the history; `tutorloop sql` only reads."""


def history_path(run_or_file: str | Path) -> Path:
    """A run directory or the history file itself -> the history file (which must exist)."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_or_file}: no run history here (expected {path})")
    return path


def check_read_only(sql: str) -> None:
    for statement in filter(str.strip, sql.split(";")):
        match = _WRITE_WORDS.match(statement)
        if match:
            raise ReadOnlyQueryError(
                f"refused: {match.group(1).upper()} changes the history; tutorloop sql only reads"
            )


def query(run_or_file: str | Path, sql: str, params: Sequence[Any] | None = None,
          *, timeout_s: float = 10.0) -> pa.Table:
    """Run one read-only query and return its rows as an Arrow table."""
    check_read_only(sql)
    con = connect(history_path(run_or_file), read_only=True, timeout_s=timeout_s)
    try:
        return con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()


def fetch_rows(run_or_file: str | Path, sql: str, params: Sequence[Any] | None = None,
               *, timeout_s: float = 10.0) -> list[dict]:
    return query(run_or_file, sql, params, timeout_s=timeout_s).to_pylist()
