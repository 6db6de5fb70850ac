"""Insert N attempts rows with the StoreWriter (Arrow, one transaction per batch) and with
row-by-row `executemany` on the same rows; print rows/s of each and their ratio. Each path first
writes 1000 other rows untimed: the first conversion and connection of a process cost about half a
second once (printed as `writer_warm_up_s`), which is not throughput.

For reference it also times a raw Arrow insert: the same rows converted beforehand, through one
connection held open, which is the ceiling the writer's conversion and per-batch open approach.
The writer and the raw insert take about a second and vary by a third from one try to the next (the
file's checkpoint writes), so each is the median of `--repeats` tries, each into a fresh file;
executemany takes half a minute and is timed once.
Last line: one JSON object {"rows", "rows_per_s", "baseline_rows_per_s", "ratio", "raw_arrow_rows_per_s",
"writer_s_min", "writer_s_max", "repeats"}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from tutorloop.store.writer import StoreWriter


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "round": i // 50_000,
            "phase": "exam",
            "split": "train",
            "example_id": f"synthetic/train/{i}",
            "mode": "explain",
            "sample_index": 0,
            "output": "Add 4: 3 + 4 = 7.\nTherefore, the answer is 7.",
            "extracted": str(rng.randint(0, 99)),
            "correct": rng.random() < 0.5,
            "prompt_tokens": 30,
            "output_tokens": 20,
            "batch": i // 256,
        }
        for i in range(n)
    ]


def time_writer(path: Path, rows: list[dict], batch: int) -> float:
    writer = StoreWriter(path)
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        writer.insert("attempts", rows[i : i + batch])
    return time.perf_counter() - started


def time_raw_arrow(path: Path, rows: list[dict], batch: int) -> float:
    StoreWriter(path)  # same schema
    tables = [pa.Table.from_pylist(rows[i : i + batch]) for i in range(0, len(rows), batch)]
    con = duckdb.connect(str(path))
    started = time.perf_counter()
    for batch_table in tables:  # noqa: B007 (the SQL below reads it by name)
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO attempts BY NAME SELECT * FROM batch_table")
        con.execute("COMMIT")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def time_executemany(path: Path, rows: list[dict]) -> float:
    StoreWriter(path)  # same schema
    con = duckdb.connect(str(path))
    columns = list(rows[0])
    sql = f"INSERT INTO attempts ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    values = [[r[c] for c in columns] for r in rows]
    started = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    con.executemany(sql, values)
    con.execute("COMMIT")
    elapsed = time.perf_counter() - started
    count = con.execute("SELECT count(*) FROM attempts").fetchone()[0]
    con.close()
    assert count == len(rows)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50_000, help="rows per writer transaction")
    parser.add_argument("--repeats", type=int, default=5, help="tries of the writer and the raw insert (median)")
    args = parser.parse_args()
    rows = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        # Steady-state throughput: the first conversion and connection of a process pay one-time costs
        # (pyarrow's lazy imports, DuckDB's start-up) that a run pays once, not per batch.
        warm = make_rows(1000, seed=1)
        warm_s = time_writer(Path(tmp) / "warm-writer.duckdb", warm, len(warm))
        time_raw_arrow(Path(tmp) / "warm-raw.duckdb", warm, len(warm))
        time_executemany(Path(tmp) / "warm-baseline.duckdb", warm)
        writer_tries = [time_writer(Path(tmp) / f"writer-{i}.duckdb", rows, args.batch) for i in range(args.repeats)]
        raw_s = statistics.median(
            time_raw_arrow(Path(tmp) / f"raw-{i}.duckdb", rows, args.batch) for i in range(args.repeats)
        )
        baseline_s = time_executemany(Path(tmp) / "baseline.duckdb", rows)
    writer_s = statistics.median(writer_tries)
    result = {
        "rows": len(rows),
        "rows_per_s": round(len(rows) / writer_s),
        "baseline_rows_per_s": round(len(rows) / baseline_s),
        "ratio": round(baseline_s / writer_s, 1),
        "raw_arrow_rows_per_s": round(len(rows) / raw_s),
        "writer_warm_up_s": round(warm_s, 2),
        "writer_s_min": round(min(writer_tries), 2),
        "writer_s_max": round(max(writer_tries), 2),
        "repeats": args.repeats,
    }
    print(f"one-time warm-up of the writer (first conversion and connection, 1000 rows): {warm_s:.2f} s")
    print(
        f"StoreWriter (Arrow, {args.batch} rows/transaction): {writer_s:.2f} s (median of {args.repeats}, "
        f"{min(writer_tries):.2f}-{max(writer_tries):.2f}), {result['rows_per_s']} rows/s"
    )
    print(
        f"raw Arrow insert (converted beforehand, one connection): {raw_s:.2f} s (median), "
        f"{result['raw_arrow_rows_per_s']} rows/s"
    )
    print(f"executemany (one transaction): {baseline_s:.2f} s, {result['baseline_rows_per_s']} rows/s")
    print(f"ratio: {result['ratio']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
