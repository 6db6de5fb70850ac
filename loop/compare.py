"""`tutorloop compare RUN_A RUN_B ...`: runs side by side, then paired tests between them.

The side-by-side table: what each run was (student, teacher, task), its test accuracy per round, the
final and best accuracy, and what it cost (teacher calls, dollars, seconds). Read through one multi-run
query, so the numbers are exactly those `tutorloop sql runs/a runs/b "SELECT * FROM round_summary"` shows.
Then (loop/compare_stats.py) per pair of runs and round the paired difference and McNemar test; for
arms of seeds, each arm's mean with its interval and the paired test between arms.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

from tutorloop.loop.compare_stats import (
    Arm,
    RunOutcome,
    arm_problem,
    arm_rounds,
    arm_tests,
    detect_arms,
    load_outcomes,
    named_arms,
    pairing_problem,
    seeds_disagree,
)
from tutorloop.loop.core.errors import EXIT_USAGE, TutorloopError
from tutorloop.loop.formatting import percent
from tutorloop.loop.paired_stats import (
    BOOTSTRAP_RESAMPLES,
    SIGNIFICANCE,
    PairedComparison,
    compare_paired,
    seed_interval,
    verdict,
)
from tutorloop.store.query import multi_query, run_names

_PAIRED_NOTE = (
    f"Paired on the same test questions, each run graded in its first eval mode (the mode of its test "
    f"accuracy). difference = B - A in accuracy points; 95% interval: {BOOTSTRAP_RESAMPLES:,} bootstrap "
    f"resamples of the questions (seed 0); p: exact McNemar test on the questions that changed (wrong -> "
    f"right against right -> wrong); the verdict follows p (near 0.05 the interval may just exclude 0 "
    f"while the exact test does not). Each p is for its own row, not corrected for the number of rows."
)
_ARMS_NOTE = (
    "Arms are runs that differ only in run.seed ({how}): the mean test accuracy over seeds with a "
    "Student-t 95% interval (none with one seed)."
)
_ARM_TESTS_NOTE = (
    f"Questions are the unit: each question scores the share of an arm's seeds that got it right. "
    f"difference = B - A; 95% interval: {BOOTSTRAP_RESAMPLES:,} bootstrap resamples of the questions "
    f"(seed 0); p: exact sign test over the questions whose shares differ (McNemar when each arm has "
    f"one seed), so a question several seeds agree on counts once. per seed: the difference and "
    f"McNemar p between the arms' runs with the same run.seed. p (seeds, paired t): the accuracy "
    f"differences of the seeds both arms ran, against 0 (two seeds at least): whether retraining "
    f"would give the same difference, which the question-level p does not say. The verdict follows "
    f"the question-level p, adds the seed-level one and says where seeds are significant in opposite "
    f"directions. Not corrected for the number of rows."
)


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
    add(
        "teacher",
        lambda n: (
            ", ".join(f"{t['name']} ({t['model']})" for t in config(n).get("teacher", {}).get("teachers", [])) or "-"
        ),
    )
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


@dataclass
class Section:
    title: str  # empty for the first (side-by-side) table
    note: str
    table: pa.Table
    shown: bool  # printed by the text formats when no --table is asked for


def parse_groups(specs: Sequence[str]) -> dict[str, list[str]]:
    """`--group NAME=RUN_DIR,RUN_DIR` options -> {name: run dirs}."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, _, runs = spec.partition("=")
        dirs = [d for d in runs.split(",") if d]
        if not name or not dirs:
            raise TutorloopError(f"compare: --group {spec!r}: expected NAME=RUN_DIR,RUN_DIR,...", EXIT_USAGE)
        if name in groups:
            raise TutorloopError(f"compare: --group {name!r} is given twice", EXIT_USAGE)
        groups[name] = dirs
    return groups


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> pa.Table:
    return pa.table({c: pa.array([row[i] for row in rows], pa.string()) for i, c in enumerate(columns)})


def _points(value: float) -> str:
    return f"{100 * value:+.1f} pts"


def difference_cells(c: PairedComparison, name_a: str = "A", name_b: str = "B") -> list[str]:
    """difference, interval and the verdict (naming the side that did better where it is significant)."""
    said = verdict(c.p_value)
    if c.significant:
        said += f": {name_b if c.wrong_to_right > c.right_to_wrong else name_a} does better"
    return [_points(c.difference), f"[{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}] pts", said]


def pairs_table(outcomes: Sequence[RunOutcome]) -> pa.Table:
    """Per pair of runs and shared round: accuracies, paired difference, interval, McNemar."""
    head = [
        "round",
        "run A",
        "run B",
        "questions",
        "accuracy A",
        "accuracy B",
        "difference",
        "95% interval",
        "wrong -> right",
        "right -> wrong",
        "p (McNemar)",
        "verdict",
    ]
    rows = []
    for i, a in enumerate(outcomes):
        for b in outcomes[i + 1 :]:
            problem = pairing_problem(a, b)
            if problem:
                rows.append(["-", a.name, b.name, "-", "-", "-", "-", "-", "-", "-", "-", problem])
                continue
            for round_ in sorted(set(a.rounds()) & set(b.rounds())):
                c = compare_paired(a.correct[round_], b.correct[round_])
                diff, interval, said = difference_cells(c)
                rows.append(
                    [
                        str(round_),
                        a.name,
                        b.name,
                        str(c.questions),
                        percent(c.accuracy_a),
                        percent(c.accuracy_b),
                        diff,
                        interval,
                        str(c.wrong_to_right),
                        str(c.right_to_wrong),
                        f"{c.p_value:.3g}",
                        said,
                    ]
                )
    return _table(head, rows)


def arms_table(arms: Sequence[Arm]) -> pa.Table:
    """Per arm and round every run of it evaluated: mean over seeds and its t interval."""
    head = ["arm", "runs", "seeds", "round", "mean accuracy", "95% interval (seeds)", "per seed"]
    rows = []
    for arm in arms:
        for round_ in arm_rounds([arm]):
            values = [r.accuracy(round_) for r in arm.runs]
            mean, low, high = seed_interval(values)
            # An accuracy lies in [0, 1]; the t interval of a few seeds near either end can pass it.
            interval = f"[{percent(max(low, 0.0))}, {percent(min(high, 1.0))}]" if len(values) > 1 else "- (one seed)"
            rows.append(
                [
                    arm.name,
                    ", ".join(r.name for r in arm.runs),
                    ", ".join(str(r.seed) for r in arm.runs),
                    str(round_),
                    percent(mean),
                    interval,
                    ", ".join(percent(v) for v in values),
                ]
            )
    return _table(head, rows)


def arm_tests_table(arms: Sequence[Arm]) -> pa.Table:
    """Per pair of arms and shared round: the paired test with questions as the unit."""
    head = [
        "round",
        "arm A",
        "arm B",
        "seeds A / B",
        "mean A",
        "mean B",
        "difference",
        "95% interval",
        "questions better in B",
        "questions better in A",
        "p (sign test)",
        "per seed (B - A, McNemar p)",
        "p (seeds, paired t)",
        "verdict",
    ]
    rows = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            seeds = f"{len(a.runs)} / {len(b.runs)}"
            problem = arm_problem(a, b)
            if problem:
                rows.append(["-", a.name, b.name, seeds] + ["-"] * 9 + [problem])
                continue
            for test in arm_tests(a, b):
                c = test.comparison
                diff, interval, said = difference_cells(c)
                per_seed = (
                    "; ".join(f"seed {s}: {d * 100:+.1f} pts, p={p:.3g}" for s, (d, p) in test.per_seed.items()) or "-"
                )
                seed_p = "-" if test.seed_p is None else f"{test.seed_p:.3g}"
                if test.seed_p is not None:
                    said += (
                        f"; over seeds {'also significant' if test.seed_p < SIGNIFICANCE else 'not'} "
                        f"(p={test.seed_p:.3g})"
                    )
                disagreement = seeds_disagree(test)
                if disagreement:
                    said += f"; {disagreement}"
                rows.append(
                    [
                        str(test.round),
                        a.name,
                        b.name,
                        seeds,
                        percent(c.accuracy_a),
                        percent(c.accuracy_b),
                        diff,
                        interval,
                        str(c.wrong_to_right),
                        str(c.right_to_wrong),
                        f"{c.p_value:.3g}",
                        per_seed,
                        seed_p,
                        said,
                    ]
                )
    return _table(head, rows)


def _unique_dirs(dirs: Sequence[str]) -> list[str]:
    seen: dict[Path, str] = {}
    for d in dirs:
        seen.setdefault(Path(d).resolve(), d)
    return list(seen.values())


def compare_sections(
    run_dirs: Sequence[str], groups: dict[str, list[str]], only: str | None = None
) -> dict[str, Section]:
    """The compare output: 'runs' (side by side), 'pairs', 'arms', 'arm-tests'; `only` builds just that one."""
    dirs = _unique_dirs([*run_dirs, *(d for members in groups.values() for d in members)])
    if not dirs:
        raise TutorloopError("compare: give run directories, or arms as --group NAME=RUN_DIR,RUN_DIR", EXIT_USAGE)
    outcomes = load_outcomes(dirs)
    index = {Path(d).resolve(): i for i, d in enumerate(dirs)}
    members: dict[str, list[int]] = {}
    for name, member_dirs in groups.items():
        members[name] = [index[Path(d).resolve()] for d in member_dirs]
    taken = [i for indexes in members.values() for i in indexes]
    if len(taken) != len(set(taken)):
        raise TutorloopError("compare: a run is in more than one --group", EXIT_USAGE)
    arms = named_arms(outcomes, members) if groups else detect_arms(outcomes)
    seeded = any(len(arm.runs) > 1 for arm in arms)
    how = "as named with --group" if groups else "found from the stored configs"
    notes = " ".join(note for arm in arms for note in arm.notes)
    builders: dict[str, tuple[str, str, Any, bool]] = {
        "runs": ("", "", lambda: compare_runs(dirs), True),
        "pairs": (
            "Paired tests between runs",
            _PAIRED_NOTE,
            lambda: pairs_table(outcomes),
            len(outcomes) > 1 and (not seeded or len(arms) == 1),
        ),
        "arms": ("Arms of seeds", (_ARMS_NOTE.format(how=how) + " " + notes).strip(), lambda: arms_table(arms), seeded),
        "arm-tests": (
            "Paired tests between arms",
            _ARM_TESTS_NOTE,
            lambda: arm_tests_table(arms),
            seeded and len(arms) > 1,
        ),
    }
    return {
        key: Section(title, note, build(), shown)
        for key, (title, note, build, shown) in builders.items()
        if (key == only if only else shown)
    }


def render_sections(sections: dict[str, Section], markdown: bool, format_table: Callable[[pa.Table], str]) -> str:
    """The shown sections as one text: each a title, its note (what was tested, and how) and its table."""
    parts = []
    for section in sections.values():
        lines = []
        if section.title:
            lines.append(("## " if markdown else "") + section.title)
        if section.note:
            lines.append(section.note if markdown else textwrap.fill(section.note, 110))
        parts.append("\n".join([*lines, format_table(section.table)]))
    return "\n\n".join(parts)
