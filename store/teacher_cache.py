"""One teacher cache for a whole experiment: a request any of its runs paid for is answered in every other.

The experiment driver (loop/experiment.py) is the only writer. When a run ends (finished or stopped),
`harvest_calls` copies the teacher_calls rows it paid for and the cache lacks into DIR/experiment.duckdb's
`teacher_cache`, each request once, with the run that paid it. Before a run starts or resumes,
`seed_shared_calls` copies the cache rows its history lacks into the history's `shared_calls` table (never
into teacher_calls: they are neither this run's calls nor its spend, so budget, round_summary and
teacher_yield count only what the run sent); its teach phase asks teacher_calls first, then shared_calls,
and marks the shared rows that answered `used` (`RunHistory.reuse_shared_calls`). Rows the cache copies
keep teacher_calls' columns, which never hold a key.

Sharing happens only between runs: runs that run at the same time (a cluster) see only what was harvested
before they started, so both may pay for one request; the cache keeps the first harvested and counts it sent once.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from .connect import connect
from .query import sql_literal
from .schema import migrate

CACHE_TABLE = "teacher_cache"
_REUSE_TABLE = "cache_reuse"  # per run: how many shared answers answered a request there


def _has_table(con: duckdb.DuckDBPyConnection, database: str | None, table: str) -> bool:
    """Whether `database` (None: the one opened) holds `table`."""
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = coalesce(?, current_database()) AND table_name = ?",
        [database, table],
    ).fetchone()[0]
    return bool(found)


def seed_shared_calls(experiment_file: Path, history_file: Path, fresh: bool = False) -> int:
    """The cache's answers that the run's history lacks, into its shared_calls; returns how many.

    `fresh` (a new run) first drops the shared rows it holds: a fork's copy carries its prefix's rows and
    `used` marks, and only the fork's own reuse is its to count."""
    con = connect(history_file, read_only=False)
    try:
        migrate(con, str(history_file))  # a run from before shared_calls, resumed inside an experiment
        con.execute(f"ATTACH {sql_literal(str(experiment_file))} AS experiment (READ_ONLY)")
        con.execute("BEGIN TRANSACTION")
        if fresh:
            con.execute("DELETE FROM shared_calls")
        added = 0
        if _has_table(con, "experiment", CACHE_TABLE):
            added = con.execute(
                f"INSERT INTO shared_calls BY NAME SELECT *, false AS used FROM experiment.{CACHE_TABLE} "
                "WHERE request_hash NOT IN (SELECT request_hash FROM teacher_calls) "
                "AND request_hash NOT IN (SELECT request_hash FROM shared_calls)"
            ).fetchone()[0]
        con.execute("COMMIT")
        return int(added)
    finally:
        con.close()


def harvest_calls(experiment_file: Path, history_file: Path, run_dir: str) -> tuple[int, int]:
    """The run's paid answers that the cache lacks, into it as paid by `run_dir`; records how many shared
    answers the run reused. Returns (answers added, answers reused)."""
    con = connect(experiment_file, read_only=False)
    try:
        con.execute(f"ATTACH {sql_literal(str(history_file))} AS run (READ_ONLY)")
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {CACHE_TABLE} AS "
            "SELECT *, CAST(NULL AS VARCHAR) AS paid_by FROM run.teacher_calls LIMIT 0"
        )
        con.execute(f"CREATE TABLE IF NOT EXISTS {_REUSE_TABLE} (run_dir VARCHAR PRIMARY KEY, reused INTEGER NOT NULL)")
        con.execute("BEGIN TRANSACTION")
        added = con.execute(
            f"INSERT INTO {CACHE_TABLE} BY NAME SELECT *, ? AS paid_by FROM run.teacher_calls "
            f"WHERE request_hash NOT IN (SELECT request_hash FROM {CACHE_TABLE})",
            [run_dir],
        ).fetchone()[0]
        reused = 0
        if _has_table(con, "run", "shared_calls"):
            reused = con.execute("SELECT count(*) FROM run.shared_calls WHERE used").fetchone()[0]
        con.execute(f"INSERT OR REPLACE INTO {_REUSE_TABLE} VALUES (?, ?)", [run_dir, reused])
        con.execute("COMMIT")
        return int(added), int(reused)
    finally:
        con.close()


def cache_counts(experiment_file: Path) -> dict[str, tuple[int, int]]:
    """Per run folder (relative to the experiment): (teacher calls it sent, cached answers it reused)."""
    con = connect(experiment_file, read_only=True)
    try:
        if not _has_table(con, None, CACHE_TABLE):
            return {}
        rows = con.execute(
            f"SELECT coalesce(s.paid_by, r.run_dir), coalesce(s.sent, 0), coalesce(r.reused, 0) "
            f"FROM (SELECT paid_by, count(*) AS sent FROM {CACHE_TABLE} GROUP BY paid_by) s "
            f"FULL OUTER JOIN {_REUSE_TABLE} r ON r.run_dir = s.paid_by"
        ).fetchall()
        return {run_dir: (int(sent), int(reused)) for run_dir, sent, reused in rows}
    finally:
        con.close()
