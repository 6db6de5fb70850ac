"""What `tutorloop report` shows, read from a run's history (the views of store/views.sql), read-only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tutorloop.loop.compare_stats import load_outcomes, round_tests
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.paired_stats import PairedComparison
from tutorloop.loop.takeaway import Mechanism, round_mechanism, takeaway
from tutorloop.store.query import fetch_rows, history_path

PHASES = ("exam", "teach", "train", "eval")
EXAMPLES_SHOWN = 6

_FEEDBACK_SQL = """
WITH exam AS (
    SELECT round, example_id, sample_index, output, extracted, correct,
           row_number() OVER (PARTITION BY round, example_id ORDER BY correct, sample_index) AS k,
           avg(CAST(correct AS INTEGER)) OVER (PARTITION BY round, example_id) AS share,
           count(*) OVER (PARTITION BY round, example_id) AS n
    FROM attempts WHERE phase = 'exam'
)
SELECT r.round, r.example_id, r.teacher, e.question, e.gold,
       w.output AS wrong_output, w.extracted AS wrong_answer,
       r.feedback, r.rationale AS correction, r.extracted AS teacher_answer,
       a.round AS after_round, a.output AS after_output, a.extracted AS after_answer,
       a.share AS after_share, a.n AS after_samples
FROM rationales r
JOIN examples e ON e.example_id = r.example_id
LEFT JOIN exam w ON w.round = r.round AND w.example_id = r.example_id AND w.k = 1 AND NOT w.correct
LEFT JOIN exam a ON a.round = r.round + 1 AND a.example_id = r.example_id AND a.k = a.n
WHERE r.strategy = 'tailored' AND r.accepted
ORDER BY r.round, r.example_id, r.teacher, r.sample_index
"""
# In `a`, k = n picks the attempt ordered last by (correct, sample_index): a right one when any sample is.


@dataclass
class ReportData:
    run_dir: Path
    run: dict[str, Any]
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    transitions: list[dict[str, Any]]
    yield_rows: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    modes: list[str] = field(default_factory=list)
    # round -> (against round 0, against the previous evaluated round), paired on the test questions
    round_tests: dict[int, tuple[PairedComparison | None, PairedComparison | None]] = field(default_factory=dict)
    test_counts: dict[int, tuple[int, int]] = field(default_factory=dict)  # round -> (right, questions), first mode
    mechanisms: list[Mechanism] = field(default_factory=list)  # tailored rounds that rechecked their mistakes
    takeaway: str = ""  # what the console ended the run with (loop/takeaway.py)


def load_report_data(run_dir: str | Path, examples: int = EXAMPLES_SHOWN) -> ReportData:
    """Everything the report shows, read from the run's history."""
    run_dir = Path(run_dir)
    path = history_path(run_dir)
    runs = fetch_rows(path, "SELECT name, status, message, created_at, config, versions FROM runs")
    if not runs:
        raise RunError(f"{run_dir}: the history holds no run")
    run = runs[0]
    config = json.loads(run["config"])
    modes = list(config.get("student", {}).get("eval_modes") or ["explain"])
    feedback = fetch_rows(path, _FEEDBACK_SQL)
    outcome = load_outcomes([path])[0]
    evaluated = outcome.rounds()
    mechanisms = [round_mechanism(run_dir, r) for r in evaluated if r > 0]
    return ReportData(
        run_dir=run_dir,
        run=run,
        config=config,
        rounds=fetch_rows(path, "SELECT * FROM round_summary ORDER BY round"),
        transitions=fetch_rows(path, "SELECT * FROM transitions ORDER BY from_round, mode"),
        yield_rows=fetch_rows(path, "SELECT * FROM teacher_yield ORDER BY round, teacher, strategy"),
        curves=fetch_rows(
            path,
            "SELECT round, step, term, value FROM training_curves WHERE value IS NOT NULL ORDER BY round, term, step",
        ),
        examples=pick_examples(feedback, examples),
        modes=modes,
        round_tests=round_tests(outcome),
        test_counts={
            r: (sum(outcome.correct[r][q] for q in outcome.questions), len(outcome.questions)) for r in evaluated
        },
        mechanisms=[m for m in mechanisms if m is not None],
        takeaway=takeaway(run_dir),
    )


def pick_examples(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` tailored corrections, one per question: half that the student got right after
    training, the rest that it still got wrong, then ones not examined again (the last round's)."""
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["example_id"] not in seen:
            seen.add(row["example_id"])
            unique.append(row)
    fixed = [r for r in unique if r["after_round"] is not None and r["after_share"] > 0]
    still = [r for r in unique if r["after_round"] is not None and r["after_share"] == 0]
    later = [r for r in unique if r["after_round"] is None]
    half = (limit + 1) // 2
    chosen = fixed[:half]
    chosen += still[: limit - len(chosen)]
    chosen += fixed[half:][: limit - len(chosen)]  # too few still wrong: more of the fixed ones
    chosen += later[: limit - len(chosen)]
    return sorted(chosen, key=lambda r: (r["round"], r["example_id"]))


def round_label(round_: int) -> str:
    return {-1: "-1 baseline", 0: "0 core"}.get(round_, str(round_))


def accuracy_column(mode: str) -> str:
    """The round_summary column of the test accuracy in one evaluation mode."""
    return f"test_accuracy_{mode}"
