"""`tutorloop compare RUN_A RUN_B ...`: runs side by side, one column per run.

Rows: what each run was (student, teacher, task), its test accuracy per round, the final and best
accuracy, and what it cost (teacher calls, dollars, seconds). Read through one multi-run query, so the
numbers are exactly those `tutorloop sql runs/a runs/b "SELECT * FROM round_summary"` shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from tutorloop.loop.formatting import percent
from tutorloop.store.query import multi_query, run_names


def strategies_by_round(rows: Sequence[dict]) -> str:
    """'round 0: cote; rounds 1-2: tailored' from rows with round and strategy (teacher_yield, rationales)."""
    by_round: dict[int, set[str]] = {}
    for row in rows:
        if row["strategy"]:
            by_round.setdefault(row["round"], set()).add(row["strategy"])
    spans: list[list] = []  # [first round, last round, strategies], consecutive rounds merged
    for round_ in sorted(by_round):
        names = ", ".join(sorted(by_round[round_]))
        if spans and spans[-1][2] == names and spans[-1][1] == round_ - 1:
            spans[-1][1] = round_
        else:
            spans.append([round_, round_, names])
    return "; ".join(f"round {a}: {n}" if a == b else f"rounds {a}-{b}: {n}" for a, b, n in spans)


def compare_runs(run_dirs: Sequence[str | Path]) -> pa.Table:
    """One row per measure, one column per run (named as in the `run` column of multi-run SQL)."""
    names = run_names(run_dirs)
    summary = multi_query(run_dirs, "SELECT * FROM round_summary ORDER BY run, round").to_pylist()
    runs = {r["run"]: r for r in multi_query(run_dirs, "SELECT run, status, config FROM runs").to_pylist()}
    strategies = multi_query(run_dirs, "SELECT DISTINCT run, round, strategy FROM rationales").to_pylist()
    by_run = {name: [r for r in summary if r["run"] == name] for name in names}
    all_rounds = sorted({r["round"] for r in summary})
    measures: list[tuple[str, dict[str, str]]] = []

    def add(label: str, value_of) -> None:
        measures.append((label, {name: value_of(name) for name in names}))

    def config(name: str) -> dict:
        return json.loads(runs[name]["config"]) if name in runs else {}

    add("status", lambda n: runs[n]["status"] if n in runs else "-")
    add("student", lambda n: str(config(n).get("student", {}).get("model", "-")))
    add("teacher", lambda n: ", ".join(f"{t['name']} ({t['model']})"
                                      for t in config(n).get("teacher", {}).get("teachers", [])) or "-")
    add("task", lambda n: str(config(n).get("data", {}).get("task", "-")))
    add("teaching strategies", lambda n: strategies_by_round([r for r in strategies if r["run"] == n]) or "-")
    add("rounds done", lambda n: str(sum(1 for r in by_run[n] if r["status"] == "done" and r["round"] >= 0)))
    for round_ in all_rounds:
        label = "baseline test accuracy" if round_ < 0 else f"round {round_} test accuracy"
        add(label, lambda n, k=round_: percent(next((r["test_accuracy"] for r in by_run[n] if r["round"] == k), None)))

    def trained(name: str) -> list[dict]:
        return [r for r in by_run[name] if r["round"] >= 0 and r["test_accuracy"] is not None]

    add("final test accuracy", lambda n: percent(trained(n)[-1]["test_accuracy"]) if trained(n) else "-")

    def best(name: str) -> str:
        rows = trained(name)
        if not rows:
            return "-"
        top = max(rows, key=lambda r: (r["test_accuracy"], r["round"]))
        return f"{percent(top['test_accuracy'])} (round {top['round']})"

    add("best test accuracy", best)
    add("teacher calls", lambda n: str(sum(r["teacher_calls"] or 0 for r in by_run[n])))
    add("cache hits", lambda n: str(sum(r["cache_hits"] or 0 for r in by_run[n])))
    add("teacher cost (USD)", lambda n: f"{sum(r['teacher_cost_usd'] or 0 for r in by_run[n]):.4f}")
    add("time in rounds (s)", lambda n: f"{sum(r['round_s'] or 0 for r in by_run[n]):.0f}")
    for phase in ("exam", "teach", "train", "eval"):
        add(f"  of which {phase} (s)", lambda n, p=phase: f"{sum(r[f'{p}_s'] or 0 for r in by_run[n]):.0f}")
    columns = {"measure": [label for label, _ in measures]}
    for name in names:
        columns[name] = [values[name] for _, values in measures]
    return pa.table(columns)
