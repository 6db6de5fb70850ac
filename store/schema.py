"""The history's DuckDB schema: versioned, with forward migrations applied on open.

Table and column names are a contract: `tutorloop sql`, the views and users' own queries name them.
Add columns through a new migration, never by editing an old one, so files written by older versions
still open.
"""

from __future__ import annotations

from importlib import resources

import duckdb

from tutorloop.loop.core.errors import StoreError

SCHEMA_VERSION = 4


_V1_TABLES = """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,              -- running | finished | stopped | failed
    config JSON NOT NULL,                 -- resolved config, secrets never included
    config_hash VARCHAR NOT NULL,         -- fingerprint without the resume-safe keys
    versions JSON NOT NULL,               -- python/package versions the run started with
    message VARCHAR
);
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY,            -- -1 = zero-shot baseline, 0 = multi-task core, >=1 tailored
    kind VARCHAR NOT NULL,                -- baseline | core | tailored
    status VARCHAR NOT NULL,              -- running | done
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    summary JSON
);
CREATE TABLE phases (
    round INTEGER NOT NULL,
    name VARCHAR NOT NULL,                -- exam | teach | train | eval
    status VARCHAR NOT NULL,              -- running | done | stopped
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    progress INTEGER DEFAULT 0,
    total INTEGER DEFAULT 0,
    seconds DOUBLE,
    info JSON,
    PRIMARY KEY (round, name)
);
CREATE TABLE examples (
    example_id VARCHAR PRIMARY KEY,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    question VARCHAR NOT NULL,
    gold VARCHAR NOT NULL,
    answer_type VARCHAR NOT NULL,
    rationale VARCHAR
);
CREATE TABLE attempts (
    round INTEGER NOT NULL,
    phase VARCHAR NOT NULL,               -- exam (training pool) | eval (test split)
    split VARCHAR NOT NULL,
    example_id VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,                -- answer | explain
    sample_index INTEGER NOT NULL,
    output VARCHAR,
    extracted VARCHAR,
    correct BOOLEAN NOT NULL,
    prompt_tokens INTEGER,
    output_tokens INTEGER,
    batch INTEGER NOT NULL,               -- exam batch number: resume skips stored batches
    PRIMARY KEY (round, phase, example_id, mode, sample_index)
);
CREATE TABLE teacher_calls (
    request_hash VARCHAR PRIMARY KEY,
    teacher VARCHAR NOT NULL,
    backend VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    strategy VARCHAR,
    example_id VARCHAR,
    round INTEGER,
    stage VARCHAR,
    sample_index INTEGER,
    request JSON,                         -- messages or prompt and sampling parameters, never a key
    response VARCHAR,
    finish_reason VARCHAR,
    tokens_in INTEGER,
    tokens_out INTEGER,
    cost_usd DOUBLE,
    latency_s DOUBLE,
    attempts INTEGER,
    status VARCHAR NOT NULL,              -- ok | miss | failed | unusable
    error VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE rationales (
    round INTEGER NOT NULL,
    teacher VARCHAR NOT NULL,
    strategy VARCHAR NOT NULL,
    example_id VARCHAR NOT NULL,
    sample_index INTEGER NOT NULL,
    rationale VARCHAR,
    extracted VARCHAR,
    accepted BOOLEAN NOT NULL,
    reject_reason VARCHAR,
    feedback VARCHAR,                     -- tailored: the teacher's statement of what was wrong
    request_hash VARCHAR,
    task VARCHAR
);
CREATE TABLE samples (
    round INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    task VARCHAR NOT NULL,                -- answer | explain | rationalize | a teacher's task tag
    source VARCHAR NOT NULL,              -- where the target came from: teacher name, gold, replay of round k
    input VARCHAR NOT NULL,
    target VARCHAR NOT NULL,
    weight DOUBLE NOT NULL
);
CREATE TABLE contrast_pairs (
    round INTEGER NOT NULL,
    example_id VARCHAR NOT NULL,
    input VARCHAR NOT NULL,
    anchor VARCHAR NOT NULL,
    positive VARCHAR NOT NULL,
    negative VARCHAR NOT NULL
);
CREATE TABLE train_steps (
    round INTEGER NOT NULL,
    step INTEGER NOT NULL,
    epoch DOUBLE,
    lr DOUBLE,
    loss DOUBLE,
    task_losses JSON,                     -- {task: mean loss of that task in the step}
    contrast_loss DOUBLE,
    tokens INTEGER,
    pad_fraction DOUBLE,
    elapsed_s DOUBLE,
    PRIMARY KEY (round, step)
);
CREATE TABLE metrics (
    round INTEGER NOT NULL,
    split VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    value DOUBLE,
    PRIMARY KEY (round, split, name)
);
CREATE TABLE checkpoints (
    round INTEGER NOT NULL,
    kind VARCHAR NOT NULL,                -- adapter | merged
    path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (round, kind)
);
"""

# Version 2: a forked run names the run and round it continues from (`tutorloop fork`).
_V2_RUN_PARENT = "ALTER TABLE runs ADD COLUMN parent VARCHAR;"

# Version 3: attempts, the largest table, without its primary key. Maintaining the key's index was 40% of
# a bulk insert (scripts/bench_store.py); the engine stores each exam chunk once, in the transaction that
# counts it in its phase's progress, and resume skips counted chunks, so no duplicate can arise.
_V3_ATTEMPTS_WITHOUT_KEY = """
CREATE TABLE attempts_without_key AS SELECT * FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_without_key RENAME TO attempts;
""" + "".join(
    f"ALTER TABLE attempts ALTER COLUMN {column} SET NOT NULL;\n"
    for column in ("round", "phase", "split", "example_id", "mode", "sample_index", "correct", "batch")
)

# Version 4: answers other runs of the same experiment paid for (store/teacher_cache.py), apart from
# teacher_calls so they never count as this run's calls or spend; `used` marks those that answered here.
_V4_SHARED_CALLS = """
CREATE TABLE shared_calls AS SELECT *, CAST(NULL AS VARCHAR) AS paid_by, false AS used FROM teacher_calls LIMIT 0;
"""

# Each entry upgrades the file from version i to i + 1. Version 0 is an empty file.
MIGRATIONS: list[str] = [_V1_TABLES, _V2_RUN_PARENT, _V3_ATTEMPTS_WITHOUT_KEY, _V4_SHARED_CALLS]

TABLES = (
    "runs",
    "rounds",
    "phases",
    "examples",
    "attempts",
    "teacher_calls",
    "rationales",
    "samples",
    "contrast_pairs",
    "train_steps",
    "metrics",
    "checkpoints",
)


def views_sql() -> str:
    return resources.files("tutorloop.store").joinpath("views.sql").read_text()


def file_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()[0]
    if not exists:
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(con: duckdb.DuckDBPyConnection, path: str = "") -> int:
    """Bring the file up to SCHEMA_VERSION inside one transaction; returns the version it had."""
    found = file_version(con)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: written by a newer tutorloop (schema version {found}, this one reads up to "
            f"{SCHEMA_VERSION}); upgrade tutorloop to open it"
        )
    if found == SCHEMA_VERSION:
        return found
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)")
        for version in range(found, SCHEMA_VERSION):
            con.execute(MIGRATIONS[version])
            con.execute("INSERT INTO schema_version VALUES (?, current_timestamp)", [version + 1])
        # Views are recreated on every migration so they always match the newest tables.
        con.execute(views_sql())
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return found
