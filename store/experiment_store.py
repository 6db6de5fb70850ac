"""An experiment's own DuckDB file: its frozen plan, the amendments to it, and the index of its runs.

The plan (the spec's canonical JSON and its content hash) is written once, before the first run
starts, so the file itself shows that the analysis was declared before any result existed. A later
change is kept only as an amendment (what changed, why, when); the runs stay ordinary run
directories under the experiment's folder, indexed here by (seed, arm).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .connect import connect

EXPERIMENT_FILE = "experiment.duckdb"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS plan (
    spec_hash VARCHAR NOT NULL, spec JSON NOT NULL, spec_path VARCHAR, frozen_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS amendments (
    amended_at TIMESTAMP NOT NULL, previous_hash VARCHAR NOT NULL, spec_hash VARCHAR NOT NULL,
    spec JSON NOT NULL, changed VARCHAR[] NOT NULL, reason VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    seed INTEGER NOT NULL, arm VARCHAR NOT NULL, run_dir VARCHAR NOT NULL, status VARCHAR NOT NULL,
    started_at TIMESTAMP, finished_at TIMESTAMP, PRIMARY KEY (seed, arm));
"""


class ExperimentStore:
    """Reads and writes DIR/experiment.duckdb; every call opens and closes the file (no lock held)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / EXPERIMENT_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict]:
        con = connect(self.path, read_only=True)
        try:
            result = con.execute(sql, params or [])
            names = [d[0] for d in result.description]
            return [dict(zip(names, row)) for row in result.fetchall()]
        finally:
            con.close()

    def _write(self, sql: str, params: list[Any]) -> None:
        con = connect(self.path, read_only=False)
        try:
            con.execute(sql, params)
        finally:
            con.close()

    def freeze(self, spec_hash: str, spec: dict, spec_path: str) -> datetime:
        """Create the file with the plan; returns the frozen time."""
        self.directory.mkdir(parents=True, exist_ok=True)
        frozen_at = datetime.now()
        con = connect(self.path, read_only=False)
        try:
            con.execute(_SCHEMA)
            con.execute("INSERT INTO plan VALUES (?, ?, ?, ?)", [spec_hash, json.dumps(spec), spec_path, frozen_at])
        finally:
            con.close()
        return frozen_at

    def plan(self) -> dict | None:
        """The frozen plan: spec_hash, spec (dict), spec_path, frozen_at; None before freezing."""
        rows = self._rows("SELECT * FROM plan")
        return {**rows[0], "spec": json.loads(rows[0]["spec"])} if rows else None

    def amend(self, previous_hash: str, spec_hash: str, spec: dict, changed: list[str], reason: str) -> None:
        self._write(
            "INSERT INTO amendments VALUES (?, ?, ?, ?, ?, ?)",
            [datetime.now(), previous_hash, spec_hash, json.dumps(spec), changed, reason],
        )

    def amendments(self) -> list[dict]:
        rows = self._rows("SELECT * FROM amendments ORDER BY amended_at")
        return [{**row, "spec": json.loads(row["spec"])} for row in rows]

    def current_spec(self) -> tuple[str, dict]:
        """(hash, spec) in force: the last amendment's, or the frozen plan's."""
        amendments = self.amendments()
        if amendments:
            return amendments[-1]["spec_hash"], amendments[-1]["spec"]
        plan = self.plan()
        if plan is None:
            raise FileNotFoundError(self.path)
        return plan["spec_hash"], plan["spec"]

    def start_run(self, seed: int, arm: str, run_dir: str) -> None:
        """Mark (seed, arm) running; a resumed run keeps its first start (the one compared with the plan)."""
        self._write(
            "INSERT INTO runs VALUES (?, ?, ?, 'running', ?, NULL) ON CONFLICT (seed, arm) "
            "DO UPDATE SET status = 'running', finished_at = NULL",
            [seed, arm, run_dir, datetime.now()],
        )

    def finish_run(self, seed: int, arm: str, status: str) -> None:
        self._write(
            "UPDATE runs SET status = ?, finished_at = ? WHERE seed = ? AND arm = ?",
            [status, datetime.now(), seed, arm],
        )

    def runs(self) -> list[dict]:
        """The index: seed, arm, run_dir (relative to the experiment folder), status, started_at, finished_at."""
        return self._rows("SELECT * FROM runs ORDER BY seed, arm = 'prefix' DESC, arm")
