"""What each arm's rounds taught, over seeds: the experiment report's descriptive section beside its tests.

Per arm and round after the shared prefix, the mean over seeds of the teacher calls the run sent (answers from
the experiment's cache aside), the accepted rationales (arms matched in accepted rationales should agree here)
and the test accuracy; and where the round rechecked its pool mistakes (student.recheck_mistakes), the
mechanism: the share of the mistakes the round taught that the student now gets right against the share of the
mistakes of the same exam it did not teach, with the paired t over seeds of that difference. None of it is in the declared family: it describes, it does not decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tutorloop.loop.experiment import Experiment, PlannedRun
from tutorloop.loop.formatting import markdown_table
from tutorloop.loop.paired_stats import paired_t_over_seeds
from tutorloop.loop.takeaway import round_mechanism
from tutorloop.store.query import HISTORY_FILE, fetch_rows


@dataclass
class ArmRound:
    """One arm's round over the seeds that finished it."""

    arm: str
    round: int
    calls: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    taught_right: list[float] = field(default_factory=list)  # per seed with taught and untaught rechecked
    untaught_right: list[float] = field(default_factory=list)


def arm_rounds(experiment: Experiment) -> list[ArmRound]:
    """Every arm's rounds after the prefix, each with the seeds whose run has that round's summary."""
    rounds = range(experiment.spec.prefix_rounds + 1, experiment.config["run"]["rounds"] + 1)
    found = []
    for arm in experiment.spec.arms:
        for round_ in rounds:
            entry = ArmRound(arm, round_)
            for seed in experiment.spec.seeds:
                _add_seed(entry, experiment.run_dir(PlannedRun(seed, arm)), round_)
            found.append(entry)
    return found


def _add_seed(entry: ArmRound, run_dir, round_: int) -> None:
    if not (run_dir / HISTORY_FILE).exists():
        return
    rows = fetch_rows(
        run_dir,
        "SELECT teacher_calls, rationales_accepted, test_accuracy FROM round_summary "
        "WHERE round = ? AND status = 'done'",
        [round_],
    )
    if not rows or rows[0]["test_accuracy"] is None:
        return
    entry.calls.append(int(rows[0]["teacher_calls"] or 0))
    entry.accepted.append(int(rows[0]["rationales_accepted"] or 0))
    entry.accuracy.append(float(rows[0]["test_accuracy"]))
    mechanism = round_mechanism(run_dir, round_)
    if mechanism is not None and mechanism.taught and mechanism.untaught:
        entry.taught_right.append(mechanism.taught_right / mechanism.taught)
        entry.untaught_right.append(mechanism.untaught_right / mechanism.untaught)


def _mean(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    return "-" if not values else f"{scale * float(np.mean(values)):.{digits}f}"


def arm_rounds_section(experiment: Experiment) -> list[str]:
    """The report's section: one row per arm and round, means over the seeds that finished it."""
    rows = []
    for entry in arm_rounds(experiment):
        p_value = paired_t_over_seeds(entry.untaught_right, entry.taught_right)
        rows.append(
            [
                entry.arm,
                entry.round,
                len(entry.accuracy),
                _mean(entry.calls),
                _mean(entry.accepted),
                f"{_mean(entry.accuracy, 100)}%" if entry.accuracy else "-",
                f"{_mean(entry.taught_right, 100)}% / {_mean(entry.untaught_right, 100)}% ({len(entry.taught_right)})"
                if entry.taught_right
                else "-",
                "-" if p_value is None else f"{p_value:.3g}",
            ]
        )
    headers = [
        "arm",
        "round",
        "seeds",
        "teacher calls sent (not from the cache)",
        "accepted rationales",
        "test accuracy",
        "pool mistakes now right: taught / not taught (seeds)",
        "paired t over seeds, taught - not taught",
    ]
    return [
        "## What each round taught (descriptive, not in the declared family)",
        "",
        "Means over the seeds that finished the round. Where a round rechecked its pool mistakes after training "
        "(student.recheck_mistakes): of the mistakes it taught (an accepted rationale), the share now right, "
        "against the share of the same exam's mistakes it did not teach.",
        "",
        markdown_table(headers, rows),
        "",
    ]
