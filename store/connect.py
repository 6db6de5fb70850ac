"""Opening the history file with a bounded wait on another process's lock.

DuckDB allows one read-write process or many read-only ones at a time; the writer closes its
connection between batches, so a reader (or the writer) that finds the file locked retries briefly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, TypeVar

import duckdb

from tutorloop.loop.core.errors import StoreError

T = TypeVar("T")


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def retry_on_lock(open_file: Callable[[], T], path: str | Path, *, read_only: bool, timeout_s: float) -> T:
    """Call `open_file`, retrying a lock conflict on `path` for up to `timeout_s` seconds, then StoreError.

    Any other failure to open the file is a StoreError at once."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            return open_file()
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc):  # not a history at all (another file, a torn copy)
                raise StoreError(f"{path}: cannot open the history ({str(exc).splitlines()[0]})") from None
            if time.monotonic() >= deadline:
                who = "a run is writing to it" if read_only else "another process holds it"
                raise StoreError(
                    f"{path}: the history is locked ({who}); waited {timeout_s:.0f} s, try again"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def connect(path: str | Path, *, read_only: bool, timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """Open `path`, retrying a lock conflict for up to `timeout_s` seconds, then StoreError."""
    return retry_on_lock(
        lambda: duckdb.connect(str(path), read_only=read_only), path, read_only=read_only, timeout_s=timeout_s
    )
