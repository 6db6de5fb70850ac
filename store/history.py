"""A run's history as the round engine sees it: every read and write the driver makes, by meaning.

`RunHistory` speaks in phases, attempts, teacher calls, samples, adapters, metrics and spend; the SQL
lives here, so the engine holds none. A phase's outputs are committed together with its `done` mark
in one transaction (`finish_phase`), and work inside a phase (exam chunks, teacher calls) is stored
as it finishes, which is what makes a run resumable at any point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tutorloop.loop.core.errors import RunError
from tutorloop.loop.core.records import (
    AttemptRecord,
    ContrastPairRecord,
    EarlierSample,
    RationaleRecord,
    SampleRecord,
    TeacherCallRecord,
    TrainStepRecord,
    columns,
)

from .connect import connect
from .journal import TeacherJournal
from .query import HISTORY_FILE, fetch_rows, sql_literal
from .writer import StoreWriter, Transaction

# Tables whose rows belong to a round; a fork drops the rows of the rounds after its start.
ROUND_TABLES = (
    "rounds",
    "phases",
    "attempts",
    "teacher_calls",
    "rationales",
    "samples",
    "contrast_pairs",
    "train_steps",
    "metrics",
    "checkpoints",
)
ATTEMPT_KEYS = columns(AttemptRecord)
SAMPLE_KEYS = columns(SampleRecord)
PAIR_KEYS = columns(ContrastPairRecord)
EARLIER_SAMPLE_KEYS = columns(EarlierSample)


def in_round(rows: Sequence[Mapping[str, Any]], round_: int, **more: Any) -> list[dict[str, Any]]:
    """Records as rows of `round_` (and `more` columns): the one place a record gets its round."""
    return [{**row, "round": round_, **more} for row in rows]


@dataclass
class PhaseOutputs:
    """What a phase commits with its done mark: rows per table, metrics per split, and for training
    its step records (replacing the round's) and its adapter (relative path, sha256)."""

    rows: dict[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)  # records, without their round
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    train_steps: list[TrainStepRecord] | None = None
    adapter: tuple[str, str] | None = None


def read_run(run_dir: Path) -> dict | None:
    """The run's row (config, config_hash, status) read-only: also safe on a run another process writes."""
    rows = fetch_rows(run_dir / HISTORY_FILE, "SELECT config, config_hash, status FROM runs")
    return rows[0] if rows else None


def copy_rounds(source: Path, target: Path, after_round: int) -> None:
    """A new history at `target` holding `source`'s rounds up to `after_round` (which must be done).

    The source is attached read-only (a consistent snapshot, also while its run writes between
    batches) and never modified."""
    con = connect(target, read_only=False)
    try:
        con.execute(f"ATTACH {sql_literal(str(source))} AS parent (READ_ONLY)")
        done = {r[0] for r in con.execute("SELECT round FROM parent.rounds WHERE status = 'done'").fetchall()}
        if after_round not in done:
            finished = ", ".join(str(r) for r in sorted(done)) or "none"
            raise RunError(f"{source.parent}: round {after_round} is not finished there (finished rounds: {finished})")
        catalog = con.execute("SELECT current_database()").fetchone()[0]
        con.execute(f"COPY FROM DATABASE parent TO {catalog}")
        con.execute("DETACH parent")
        con.execute("BEGIN TRANSACTION")
        for table in ROUND_TABLES:
            con.execute(f"DELETE FROM {table} WHERE round > ?", [after_round])
        con.execute("COMMIT")
    finally:
        con.close()


class RunHistory:
    """The history file of one run directory, through its one writer."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / HISTORY_FILE
        self.writer = StoreWriter(self.path)

    # ----- the connection ------------------------------------------------------------------------
    def hold(self) -> None:
        """Keep the file open between writes; `release()` before every wait lets readers in."""
        self.writer.hold()

    def release(self) -> None:
        self.writer.release()

    def release_if_held(self, longer_than_s: float) -> None:
        self.writer.release_if_held(longer_than_s)

    def _one(self, sql: str, params: list | None = None) -> Any:
        rows = self.writer.fetch(sql, params)
        return rows[0][0] if rows else None

    # ----- the run -------------------------------------------------------------------------------
    def create(self, run: dict, examples: list[dict]) -> None:
        with self.writer.transaction() as tx:
            tx.insert("runs", [run])
            tx.insert("examples", examples)

    def set_config(self, config: dict) -> None:
        self.writer.sql("UPDATE runs SET config = ?", [config])

    def become_fork(self, run_id: str, name: str, config: dict, config_hash: str, parent: str) -> None:
        """The copied run row turned into the fork's own: a new id, name and config, and its parent."""
        self.writer.sql(
            "UPDATE runs SET run_id = ?, name = ?, created_at = current_timestamp, status = 'created', "
            "message = NULL, config = ?, config_hash = ?, parent = ?",
            [run_id, name, config, config_hash, parent],
        )

    def set_status(self, status: str, message: str | None = None) -> None:
        self.writer.sql("UPDATE runs SET status = ?, message = ?", [status, message])

    def end(self, status: str, message: str) -> None:
        """A run ending without finishing (`stopped`, `failed`): its running phases end with it."""
        with self.writer.transaction() as tx:
            tx.sql("UPDATE phases SET status = ? WHERE status = 'running'", [status])
            tx.sql("UPDATE runs SET status = ?, message = ?", [status, message])

    # ----- rounds and phases ---------------------------------------------------------------------
    def done_rounds(self) -> set[int]:
        return {r[0] for r in self.writer.fetch("SELECT round FROM rounds WHERE status = 'done'")}

    def round_done(self, round_: int) -> bool:
        return self._one("SELECT status FROM rounds WHERE round = ?", [round_]) == "done"

    def close_round(self, round_: int, summary: dict) -> None:
        self.writer.sql(
            "UPDATE rounds SET status = 'done', finished_at = current_timestamp, summary = ? WHERE round = ?",
            [summary, round_],
        )

    def phase_done(self, round_: int, name: str) -> bool:
        return self._one("SELECT status FROM phases WHERE round = ? AND name = ?", [round_, name]) == "done"

    def begin_phase(self, round_: int, kind: str, name: str, total: int | None) -> None:
        """The round and phase marked running; a resumed phase keeps the progress and seconds it had,
        and its stored total when `total` is None (not known yet)."""
        with self.writer.transaction() as tx:
            tx.sql(
                "INSERT OR IGNORE INTO rounds (round, kind, status, started_at) "
                "VALUES (?, ?, 'running', current_timestamp)",
                [round_, kind],
            )
            earlier = "(SELECT {} FROM phases WHERE round = $1 AND name = $2)"
            tx.sql(
                "INSERT OR REPLACE INTO phases (round, name, status, started_at, progress, total, seconds) "
                f"VALUES ($1, $2, 'running', current_timestamp, coalesce({earlier.format('progress')}, 0), "
                f"coalesce($3, {earlier.format('total')}, 0), {earlier.format('seconds')})",
                [round_, name, total],
            )

    def set_progress(self, round_: int, name: str, done: int, total: int | None = None) -> None:
        """The running phase's units done (and its total, once known): never below what is stored (a
        resumed phase counts again from 0) nor above the total."""
        self.writer.sql(
            "UPDATE phases SET total = coalesce($2, total), "
            "progress = least(greatest(progress, $1), coalesce($2, total)) "
            "WHERE round = $3 AND name = $4",
            [done, total, round_, name],
        )

    def add_phase_seconds(self, round_: int, name: str, seconds: float) -> None:
        """An attempt of a phase that ended without finishing: its seconds count toward the phase's."""
        self.writer.sql(
            "UPDATE phases SET seconds = coalesce(seconds, 0) + ? WHERE round = ? AND name = ?", [seconds, round_, name]
        )

    def finish_phase(self, round_: int, name: str, seconds: float, outputs: PhaseOutputs) -> None:
        """The phase's outputs and its done mark, in one transaction."""
        with self.writer.transaction() as tx:
            for table, rows in outputs.rows.items():
                # replaces what a stopped try of the phase left (keep_graded_rationales)
                tx.sql(f"DELETE FROM {table} WHERE round = ?", [round_])
                tx.insert(table, in_round(rows, round_))
            if outputs.train_steps is not None:
                tx.sql("DELETE FROM train_steps WHERE round = ?", [round_])
                tx.insert("train_steps", in_round(outputs.train_steps, round_))
            if outputs.adapter is not None:
                tx.sql(
                    "INSERT OR REPLACE INTO checkpoints (round, kind, path, sha256) VALUES (?, 'adapter', ?, ?)",
                    [round_, *outputs.adapter],
                )
            for split, values in outputs.metrics.items():
                self._metrics(tx, round_, split, values)
            tx.sql(
                "UPDATE phases SET status = 'done', finished_at = current_timestamp, progress = total, "
                "seconds = coalesce(seconds, 0) + ?, info = ? WHERE round = ? AND name = ?",
                [seconds, outputs.info, round_, name],
            )

    @staticmethod
    def _metrics(tx: Transaction, round_: int, split: str, values: dict[str, float | None]) -> None:
        tx.insert(
            "metrics",
            [
                {"round": round_, "split": split, "name": k, "value": float(v)}
                for k, v in values.items()
                if v is not None
            ],
        )

    def metric(self, round_: int, split: str, name: str) -> float | None:
        return self._one("SELECT value FROM metrics WHERE round = ? AND split = ? AND name = ?", [round_, split, name])

    # ----- exams ---------------------------------------------------------------------------------
    def exam_progress(self, round_: int, phase: str, mode: str) -> tuple[set[str], int]:
        """Questions of an exam already answered, and the number its next stored chunk gets."""
        rows = self.writer.fetch(
            "SELECT DISTINCT example_id, batch FROM attempts WHERE round = ? AND phase = ? AND mode = ?",
            [round_, phase, mode],
        )
        return {r[0] for r in rows}, max((r[1] for r in rows), default=-1) + 1

    def store_attempts(
        self,
        round_: int,
        phase: str,
        attempts: list[AttemptRecord],
        questions: int,
        *,
        split: str,
        batch: int,
        counted_in: str | None = None,
    ) -> None:
        """An exam chunk's attempts (stored as its `batch`), counted in the progress of the phase that runs the
        exam (`counted_in`, where that is not the attempts' own phase name, as for a tailored round's recheck)."""
        with self.writer.transaction() as tx:
            tx.insert("attempts", in_round(attempts, round_, phase=phase, split=split, batch=batch))
            tx.sql(
                "UPDATE phases SET progress = progress + ? WHERE round = ? AND name = ?",
                [questions, round_, counted_in or phase],
            )

    def attempts(self, round_: int, phase: str, mode: str) -> list[AttemptRecord]:
        rows = self.writer.fetch(
            f"SELECT {', '.join(ATTEMPT_KEYS)} FROM attempts WHERE round = ? AND phase = ? AND mode = ?",
            [round_, phase, mode],
        )
        return [dict(zip(ATTEMPT_KEYS, r)) for r in rows]

    # ----- the teacher ---------------------------------------------------------------------------
    def stored_calls(self, hashes: list[str], table: str = "teacher_calls") -> dict[str, TeacherCallRecord]:
        """Stored teacher_calls rows by request hash (the teacher's cache); `table` "shared_calls": the
        answers other runs of the experiment paid for (store/teacher_cache.py)."""
        if not hashes:
            return {}
        rows = self.writer.fetch(f"SELECT * FROM {table} WHERE request_hash IN (SELECT unnest(?))", [hashes])
        columns = [
            r[0]
            for r in self.writer.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            )
        ]
        return {row[0]: dict(zip(columns, row)) for row in rows}

    def reuse_shared_calls(self, hashes: list[str]) -> dict[str, TeacherCallRecord]:
        """Answers another run of the experiment paid for, marked `used` here (the experiment counts them
        reused); as teacher_calls rows, without the shared table's own columns."""
        found = self.stored_calls(hashes, "shared_calls")
        if found:
            self.writer.sql(
                "UPDATE shared_calls SET used = true WHERE request_hash IN (SELECT unnest(?::JSON::VARCHAR[]))",
                [list(found)],
            )
        return {key: {k: v for k, v in row.items() if k not in ("paid_by", "used")} for key, row in found.items()}

    def keep_graded_rationales(self, round_: int, rationales: Sequence[RationaleRecord]) -> None:
        """The graded rationales of a teach phase that stops without its commit, so teacher_yield shows
        why; they replace the round's earlier ones and the phase stays undone (its commit replaces them)."""
        with self.writer.transaction() as tx:
            tx.sql("DELETE FROM rationales WHERE round = ?", [round_])
            tx.insert("rationales", in_round(rationales, round_))

    def persist_calls(self, records: list[TeacherCallRecord]) -> None:
        """Teacher answers stored as they arrive (the teach phase counts jobs, not calls: `set_progress`)."""
        self.writer.insert("teacher_calls", records, ignore_duplicates=True)

    def recover_answers(self, journal: TeacherJournal) -> tuple[int, int]:
        """After a kill: the journal's answers that missed the history stored; returns how many, and how
        many requests were in flight (those are sent again)."""
        recovered = journal.recover()
        stored = self.stored_calls([a["request_hash"] for a in recovered.answers])
        missing = [a for a in recovered.answers if a["request_hash"] not in stored]
        if missing:
            self.persist_calls(missing)
        return len(missing), len(recovered.in_flight)

    def rekey_calls(self, new_keys: dict[str, str]) -> None:
        """Stored teacher answers moved to new request hashes, with the rationales that point at them."""
        with self.writer.transaction() as tx:
            tx.sql(
                "CREATE TEMP TABLE rekey AS SELECT unnest(?::VARCHAR[]) AS old, unnest(?::VARCHAR[]) AS new",
                [list(new_keys), list(new_keys.values())],
            )
            for table in ("teacher_calls", "rationales"):
                tx.sql(f"UPDATE {table} SET request_hash = rekey.new FROM rekey WHERE {table}.request_hash = rekey.old")
            tx.sql("DROP TABLE rekey")

    def spent_usd(self) -> float:
        return float(self._one("SELECT coalesce(sum(cost_usd), 0) FROM teacher_calls"))

    def budget_exhausted(self) -> bool:
        """Whether a teach phase stopped sending because the budget ran out."""
        return bool(self._one("SELECT count(*) FROM metrics WHERE name = 'budget_exhausted' AND value > 0"))

    # ----- what the student learns ---------------------------------------------------------------
    def earlier_rationales(self, round_: int) -> dict[str, list[str]]:
        """Accepted rationales of the rounds before, by question."""
        rows = self.writer.fetch(
            "SELECT example_id, rationale FROM rationales WHERE accepted AND round < ? "
            "ORDER BY round, sample_index, strategy, teacher, rationale",
            [round_],
        )
        found: dict[str, list[str]] = {}
        for example_id, text in rows:
            found.setdefault(example_id, []).append(text)
        return found

    def earlier_samples(self, round_: int) -> list[EarlierSample]:
        """The rounds before's own samples (not their replays), for replay."""
        rows = self.writer.fetch(
            f"SELECT {', '.join(EARLIER_SAMPLE_KEYS)} FROM samples "
            "WHERE round < ? AND source NOT LIKE 'replay:%' "
            "ORDER BY round, example_id, task, source, target, input",
            [round_],
        )
        return [dict(zip(EARLIER_SAMPLE_KEYS, r)) for r in rows]

    def round_samples(self, round_: int) -> list[SampleRecord]:
        rows = self.writer.fetch(
            f"SELECT {', '.join(SAMPLE_KEYS)} FROM samples WHERE round = ? "
            "ORDER BY example_id, task, source, target, input",
            [round_],
        )
        return [dict(zip(SAMPLE_KEYS, r)) for r in rows]

    def round_pairs(self, round_: int) -> list[ContrastPairRecord]:
        rows = self.writer.fetch(
            f"SELECT {', '.join(PAIR_KEYS)} FROM contrast_pairs WHERE round = ? "
            "ORDER BY example_id, anchor, positive, negative",
            [round_],
        )
        return [dict(zip(PAIR_KEYS, r)) for r in rows]

    # ----- adapters ------------------------------------------------------------------------------
    def adapter_paths(self) -> list[str]:
        """Every stored adapter folder, relative to the run directory."""
        return [r[0] for r in self.writer.fetch("SELECT path FROM checkpoints WHERE kind = 'adapter'")]

    def adapter_dir(self, round_: int) -> Path:
        """The folder of the adapter trained in `round_`."""
        path = self._one("SELECT path FROM checkpoints WHERE round = ? AND kind = 'adapter'", [round_])
        if path is None:
            raise RunError(f"{self.run_dir}: round {round_} has no stored adapter")
        return self.run_dir / path
