"""The one writer of a run's history (the driver process); actors never open the file.

Rows go in as Arrow tables (hundreds of thousands of rows per second, unlike row-by-row
`executemany`), one transaction per batch. The connection is opened for each transaction and
closed after it, unless the driver `hold()`s it through a burst of writes, so readers such as
`tutorloop status` get the file between batches.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import pyarrow as pa

from .arrow_batch import json_ready, rows_to_arrow
from .connect import connect
from .schema import TABLES, migrate


def _column_types(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    """table -> column -> DuckDB type, read once: the schema is fixed once migrated."""
    types: dict[str, dict[str, str]] = {table: {} for table in TABLES}
    for table, column, data_type in con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main'"
    ).fetchall():
        if table in types:
            types[table][column] = data_type
    return types


class Transaction:
    """Writes inside one open transaction; see StoreWriter.transaction()."""

    def __init__(self, con: duckdb.DuckDBPyConnection, column_types: dict[str, dict[str, str]]) -> None:
        self.con = con
        self.column_types = column_types

    def insert(self, table: str, rows: Sequence[dict] | pa.Table, *, ignore_duplicates: bool = False) -> int:
        """Insert records by column name; `ignore_duplicates` skips rows whose primary key exists."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        batch = rows_to_arrow(rows, self.column_types[table])
        if batch.num_rows == 0:
            return 0
        # Re-registering the name replaces an earlier batch, also one left by a failed transaction.
        self.con.register("_tutorloop_batch", batch)
        verb = "INSERT OR IGNORE" if ignore_duplicates else "INSERT"
        self.con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM _tutorloop_batch")
        self.con.unregister("_tutorloop_batch")
        return batch.num_rows

    def sql(self, sql: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyConnection:
        """One statement; dict and list parameters go in as JSON text."""
        return self.con.execute(sql, [json_ready(p) for p in params] if params else None)


class StoreWriter:
    """Owns writes to `history.duckdb`; creates and migrates the schema on first open."""

    def __init__(self, path: str | Path, *, lock_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened_at = 0.0
        self._holding = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as con:
            migrate(con, str(self.path))
            self.column_types = _column_types(con)

    def hold(self) -> None:
        """Keep the connection open across transactions until `release()`.

        Opening the file costs ~25 ms; the driver holds it through its bookkeeping and releases it
        whenever it waits on models or the teacher, which is when readers get their turn.
        """
        self._holding = True

    def release(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def release_if_held(self, longer_than_s: float) -> None:
        """Let readers in when the held connection has been open that long (a busy writer that never
        waits would otherwise keep `tutorloop status` out)."""
        if self._con is not None and time.monotonic() - self._opened_at > longer_than_s:
            self.release()

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._con is None and self._holding:
            self._con = connect(self.path, read_only=False, timeout_s=self.lock_timeout_s)
            self._opened_at = time.monotonic()
        if self._con is not None:
            yield self._con
            return
        con = connect(self.path, read_only=False, timeout_s=self.lock_timeout_s)
        # Closing checkpoints the file anyway; a commit that checkpoints at once skips writing the
        # same rows to the WAL first (half the bytes written per batch).
        con.execute("SET checkpoint_threshold = '0b'")
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """All writes inside commit together or not at all."""
        with self._connection() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield Transaction(con, self.column_types)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def insert(self, table: str, rows: Sequence[dict] | pa.Table, *, ignore_duplicates: bool = False) -> int:
        """One batch in its own transaction."""
        with self.transaction() as tx:
            return tx.insert(table, rows, ignore_duplicates=ignore_duplicates)

    def sql(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """One statement in its own transaction."""
        with self.transaction() as tx:
            tx.sql(sql, params)

    def fetch(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        """Read through the writer's own connection (the driver needs this while it holds the file)."""
        with self._connection() as con:
            return con.execute(sql, params).fetchall()
