"""Opening the history file with a bounded wait on another process's lock.

DuckDB allows one read-write process or many read-only ones at a time; the writer closes its
connection between batches, so a reader (or the writer) that finds the file locked retries briefly.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb


class StoreBusyError(RuntimeError):
    """The file stayed locked by another process for longer than the allowed wait."""


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def connect(path: str | Path, *, read_only: bool, timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """Open `path`, retrying a lock conflict for up to `timeout_s` seconds, then StoreBusyError."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc):
                raise
            if time.monotonic() >= deadline:
                who = "a run is writing to it" if read_only else "another process holds it"
                raise StoreBusyError(
                    f"{path}: the history is locked ({who}); waited {timeout_s:.0f} s, try again"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
