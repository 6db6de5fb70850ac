"""`tutorloop experiment status|report`: the experiment's runs, and its declared analysis with seeds as the unit.

Each declared comparison (B against A at a round) is judged over seeds: the paired t-test of the arms'
accuracies (scipy.stats.ttest_rel) with its Student-t 95% interval of the mean difference (the interval of
that test), and a two-level bootstrap interval (resample seeds, then questions within each drawn seed), which
carries question noise as well as retraining noise but, with a handful of seeds, is narrower than the t
interval. Holm's correction runs over the declared family. The question-level tests
(per-seed McNemar, the sign test on per-question seed shares) are secondary and labelled so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np

from tutorloop.loop.experiment import FINISHED, Experiment, PlannedRun, open_experiment
from tutorloop.loop.experiment_html import write_experiment_html
from tutorloop.loop.experiment_rounds import arm_rounds_section
from tutorloop.loop.experiment_spec import Comparison
from tutorloop.loop.forking_paths import count_forking_paths
from tutorloop.loop.formatting import markdown_table
from tutorloop.loop.paired_stats import (
    compare_paired,
    discordant,
    mcnemar_exact,
    paired_t_over_seeds,
    seed_interval,
    seed_shares,
)
from tutorloop.store.experiment_store import ExperimentStore
from tutorloop.store.query import HISTORY_FILE, fetch_rows
from tutorloop.store.teacher_cache import cache_counts

BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0  # fixed: the same stores give the same report
REPORT_FILE = "report.md"
SPLIT_NOTES = {
    "test": "the held-out test split, not for tuning",
    "val": "the validation split (data.val_size questions carved from the pool, never taught), the one tuning "
    "may look at",
}


def two_level_bootstrap(
    differences: Sequence[Sequence[float]], seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """95% percentile interval of the mean over seeds of accuracy(B) - accuracy(A).

    `differences[s][q]` is B's minus A's correctness (1, 0, -1) on question q of seed s. Each resample
    draws seeds with replacement, then, for each drawn seed independently, its questions with replacement."""
    rng = np.random.default_rng(seed)
    per_seed = [np.asarray(d, dtype=np.float64) for d in differences]
    count = len(per_seed)
    chosen = rng.integers(count, size=(resamples, count))  # which seed fills each slot of each resample
    total = np.zeros(resamples)
    for slot in range(count):
        # every seed's question resample for this slot; the slot then takes the one of its chosen seed
        means = np.stack([d[rng.integers(d.size, size=(resamples, d.size))].mean(axis=1) for d in per_seed])
        total += means[chosen[:, slot], np.arange(resamples)]
    low, high = np.percentile(total / count, [2.5, 97.5])
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the given order: the k-th smallest times (m - k + 1), kept monotone, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass
class SeedComparison:
    comparison: Comparison
    accuracy_a: dict[int, float] = field(default_factory=dict)  # seed -> accuracy at the round
    accuracy_b: dict[int, float] = field(default_factory=dict)
    mcnemar: dict[int, float] = field(default_factory=dict)  # seed -> exact McNemar p (question level)
    missing: list[str] = field(default_factory=list)  # runs not (fully) evaluated at the round
    mean_difference: float | None = None
    interval: tuple[float, float] | None = None  # two-level bootstrap
    t_interval: tuple[float, float] | None = None  # Student-t over seeds, the declared test's; two seeds at least
    p_value: float | None = None
    holm_p: float | None = None
    sign_test_p: float | None = None


def round_correct(run_dir: Path, round_: int, split: str, metric: str) -> dict[str, bool] | None:
    """Question id -> right, at `round_` on `split` in the metric's mode; None unless every question was graded."""
    if not (run_dir / HISTORY_FILE).exists():
        return None
    config = json.loads(fetch_rows(run_dir, "SELECT config FROM runs")[0]["config"])
    mode = metric.removeprefix("accuracy_") if metric != "accuracy" else config["student"]["eval_modes"][0]
    rows = fetch_rows(
        run_dir,
        "SELECT example_id, bool_and(correct) AS correct FROM attempts WHERE phase = "
        "'eval' AND round = ? AND split = ? AND mode = ? GROUP BY example_id",
        [round_, split, mode],
    )
    questions = fetch_rows(run_dir, "SELECT count(*) AS n FROM examples WHERE split = ?", [split])[0]["n"]
    return {r["example_id"]: bool(r["correct"]) for r in rows} if rows and len(rows) == questions else None


def compare_over_seeds(experiment: Experiment, comparison: Comparison) -> SeedComparison:
    """The comparison on every seed where both arms were graded at its round."""
    result = SeedComparison(comparison)
    differences, shares = [], ([], [])
    for seed in experiment.spec.seeds:
        runs = [experiment.run_dir(PlannedRun(seed, arm)) for arm in (comparison.a, comparison.b)]
        correct = [
            round_correct(d, round_, comparison.split, comparison.metric) for d, round_ in zip(runs, comparison.rounds)
        ]
        if correct[0] is None or correct[1] is None or set(correct[0]) != set(correct[1]):
            result.missing += [f"seed-{seed}/{arm}" for arm, c in zip((comparison.a, comparison.b), correct) if not c]
            continue
        questions = sorted(correct[0])
        result.accuracy_a[seed] = sum(correct[0].values()) / len(questions)
        result.accuracy_b[seed] = sum(correct[1].values()) / len(questions)
        result.mcnemar[seed] = mcnemar_exact(*discordant(correct[0], correct[1]))
        differences.append([int(correct[1][q]) - int(correct[0][q]) for q in questions])
        shares[0].append(correct[0])
        shares[1].append(correct[1])
    if differences:
        seeds = list(result.accuracy_a)
        result.mean_difference, low, high = seed_interval([result.accuracy_b[s] - result.accuracy_a[s] for s in seeds])
        result.t_interval = (low, high) if len(seeds) > 1 else None
        result.interval = two_level_bootstrap(differences)
        result.p_value = paired_t_over_seeds(
            [result.accuracy_a[s] for s in seeds], [result.accuracy_b[s] for s in seeds]
        )
        result.sign_test_p = compare_paired(seed_shares(shares[0]), seed_shares(shares[1])).p_value
    return result


def analyse(experiment: Experiment) -> list[SeedComparison]:
    """Every declared comparison, primary first, with Holm over the seed-level p-values of the family."""
    results = [compare_over_seeds(experiment, c) for _, c in experiment.spec.comparisons()]
    tested = [r for r in results if r.p_value is not None]
    for result, adjusted in zip(tested, holm([r.p_value for r in tested])):
        result.holm_p = adjusted
    return results


def _pp(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} pp"


def _p(value: float | None) -> str:
    return "- (needs two seeds)" if value is None else f"{value:.3g}"


def _time(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def comparison_section(result: SeedComparison, title: str, alpha: float) -> list[str]:
    c = result.comparison
    seeds = list(result.accuracy_a)
    lines = [f"## {title}: {c.label()}", ""]
    if not seeds:
        return lines + [f"No seed has both arms graded at round {c.round} yet ({', '.join(result.missing)}).", ""]
    rows = [
        [
            s,
            f"{100 * result.accuracy_a[s]:.1f}%",
            f"{100 * result.accuracy_b[s]:.1f}%",
            _pp(result.accuracy_b[s] - result.accuracy_a[s]),
            f"{result.mcnemar[s]:.3g}",
        ]
        for s in seeds
    ]
    lines += [
        markdown_table(
            ["seed", f"{c.a_label} ({c.split})", f"{c.b} ({c.split})", f"{c.b} - {c.a_label}", "McNemar p (secondary)"],
            rows,
        ),
        "",
    ]
    low, high = result.interval or (0.0, 0.0)
    t_interval = "-" if result.t_interval is None else f"[{_pp(result.t_interval[0])}, {_pp(result.t_interval[1])}]"
    significant = result.holm_p is not None and result.holm_p < alpha
    lines += [
        f"- every number in this section is on the {c.split} split: {SPLIT_NOTES[c.split]}",
        f"- {title} test, seeds as the unit (n = {len(seeds)} seeds, {c.split} split): "
        f"mean difference over seeds {_pp(result.mean_difference)}, 95% two-level bootstrap interval "
        f"[{_pp(low)}, {_pp(high)}] (seeds, then questions within them); 95% t interval over seeds "
        f"{t_interval} (the paired t's)",
        f"- {title} paired t over seeds: p = {_p(result.p_value)}; Holm-adjusted over the declared family: "
        f"p = {_p(result.holm_p)} ({'significant' if significant else 'not significant'} at alpha {alpha})",
        f"- secondary, question level: sign test on per-question seed shares p = {_p(result.sign_test_p)}; "
        f"per-seed McNemar in the table (not in the Holm family)",
    ]
    if result.missing:
        lines.append(f"- left out (not graded at round {c.round}): {', '.join(result.missing)}")
    return lines + [""]


def runs_table(experiment: Experiment, store: ExperimentStore, frozen_at: datetime) -> str:
    """The planned runs with their index rows: status, start and end, whether each started after the freeze,
    and its teacher calls sent and answers reused from the experiment's cache."""
    index = {(r["seed"], r["arm"]): r for r in store.runs()}
    calls = cache_counts(store.path)
    rows = []
    for run in experiment.planned_runs():
        row = index.get((run.seed, run.arm), {})
        started = row.get("started_at")
        after = "-" if started is None else ("yes" if started > frozen_at else "NO")
        sent, reused = calls.get(run.relative_dir, ("-", "-"))
        rows.append(
            [
                run.seed,
                run.arm,
                run.relative_dir,
                row.get("status", "pending"),
                _time(started),
                _time(row.get("finished_at")),
                after,
                sent,
                reused,
            ]
        )
    headers = ["seed", "arm", "run dir", "status", "started", "finished", "started after plan frozen"]
    return markdown_table([*headers, "teacher calls sent", "reused from cache"], rows)


def teacher_calls_line(store: ExperimentStore) -> str:
    """The experiment's teacher calls: sent (each request once, by the run that paid it) and reused."""
    counts = cache_counts(store.path).values()
    sent, reused = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return (
        f"Teacher calls: {sent} sent, {reused} reused from the experiment's cache "
        f"(answers one run paid for, answering a request in another)."
    )


def experiment_markdown(directory: str | Path, results: list[SeedComparison] | None = None) -> str:
    """The report's markdown; `results` of `analyse` where the caller has them already."""
    experiment, store = open_experiment(directory)
    plan = store.plan()
    spec = experiment.spec
    lines = [
        f"# Experiment {spec.name}",
        "",
        f"Plan frozen at {_time(plan['frozen_at'])} (spec {plan['spec_path']}, sha256 {plan['spec_hash'][:12]}); "
        f"arms {', '.join(spec.arms)} forked after round {spec.prefix_rounds}; seeds "
        f"{', '.join(map(str, spec.seeds))}; alpha {spec.analysis.alpha}.",
        "",
        count_forking_paths(experiment.directory.resolve().parent, experiment.config["data"]).line(),
        "",
    ]
    amendments = store.amendments()
    if amendments:
        lines += [
            "## Amendments to the plan",
            "",
            markdown_table(
                ["amended at", "changed", "why"],
                [[_time(a["amended_at"]), ", ".join(a["changed"]), a["reason"]] for a in amendments],
            ),
            "",
        ]
    results = analyse(experiment) if results is None else results
    for index, result in enumerate(results):
        lines += comparison_section(result, "Primary" if index == 0 else f"Secondary {index}", spec.analysis.alpha)
    lines += arm_rounds_section(experiment)
    lines += ["## Runs", "", teacher_calls_line(store), "", runs_table(experiment, store, plan["frozen_at"]), ""]
    return "\n".join(lines)


def write_experiment_report(directory: str | Path) -> tuple[str, Path]:
    """`tutorloop experiment report`: the markdown, also written to DIR/report.md, and DIR/report.html."""
    experiment, _ = open_experiment(directory)
    results = analyse(experiment)  # once, for the markdown and the plots alike
    text = experiment_markdown(directory, results)
    path = Path(directory) / REPORT_FILE
    path.write_text(text + "\n")
    write_experiment_html(Path(directory), experiment.spec.name, text, results)
    return text, path


def experiment_status(directory: str | Path) -> str:
    """`tutorloop experiment status`: the plan, and where each planned run stands."""
    experiment, store = open_experiment(directory)
    plan = store.plan()
    finished = sum(r["status"] == FINISHED for r in store.runs())
    return "\n".join(
        [
            f"experiment {experiment.spec.name} in {directory}: {finished} of "
            f"{len(experiment.planned_runs())} runs finished; plan frozen at {_time(plan['frozen_at'])}, "
            f"{len(store.amendments())} amendment(s)",
            teacher_calls_line(store),
            runs_table(experiment, store, plan["frozen_at"]),
        ]
    )
