"""The shipped demo on several seeds: run each (or reuse a finished one) and print what each showed.

    python scripts/demo_seeds.py --seeds 0 1 2 3 4 [--config configs/demo.yaml] [--run-dir runs/demo-seeds]

Per seed (`--set run.seed=N`): round 0 against the untrained student, the tailored round against round 0
(paired on the test questions: difference, 95% interval, exact McNemar p) and the mechanism line (the
round's pool mistakes examined again: taught against not taught, Fisher p), as a markdown table; then
whether round 0 beat the baseline with McNemar p < 0.001 on every seed. A finished seed is not run again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tutorloop.loop.compare_stats import load_outcomes
from tutorloop.loop.formatting import markdown_table
from tutorloop.loop.paired_stats import compare_paired, seed_interval, seed_paired_t
from tutorloop.loop.takeaway import round_mechanism
from tutorloop.store.history import read_run

REPO = Path(__file__).resolve().parents[1]

THRESHOLD = 0.001  # issue 42: round 0 beats the baseline with McNemar p below this on every seed


def run_seed(config: str, run_dir: Path, seed: int) -> float | None:
    """Runs one seed to its end (resuming a stopped one); its wall seconds, None where it had finished."""
    run = read_run(run_dir) if (run_dir / "history.duckdb").exists() else None
    if run and run.get("status") == "finished":
        return None
    started = time.monotonic()
    command = ["tutorloop", "resume", str(run_dir)] if run else ["tutorloop", "run", config, "--run-dir", str(run_dir)]
    command += ["--set", f"run.seed={seed}"] if not run else []
    subprocess.run([sys.executable, "-m", "tutorloop.loop.cli", *command[1:]], cwd=REPO, check=True)
    return time.monotonic() - started


def _pp(value: float) -> str:
    return f"{value * 100:+.1f}"


@dataclass
class SeedResult:
    core_p: float
    core_gain: float  # round 0 - untrained, test accuracy
    tailored_gain: float | None  # last tailored round - round 0
    mechanism_gap: float | None  # share of taught mistakes now right - share of untaught ones


def over_seeds(label: str, values: list[float]) -> str:
    """The mean over seeds with its Student-t 95% interval and the paired t-test's p (seeds as the unit)."""
    if len(values) < 2:
        return f"{label}: one seed, no test over seeds"
    mean, low, high = seed_interval(values)
    p_value = seed_paired_t(values)
    return (
        f"{label}: mean {_pp(mean)} points over {len(values)} seeds, 95% t interval [{_pp(low)}, {_pp(high)}], "
        f"paired t p = {p_value:.2g}"
    )


def seed_row(seed: int, run_dir: Path, seconds: float | None) -> tuple[list[str], SeedResult]:
    (outcome,) = load_outcomes([run_dir])
    core = compare_paired(outcome.correct[-1], outcome.correct[0])
    last = max(r for r in outcome.rounds())
    tailored = compare_paired(outcome.correct[0], outcome.correct[last]) if last > 0 else None
    mechanism = round_mechanism(run_dir, last) if last > 0 else None
    row = [
        str(seed),
        f"{core.accuracy_a:.1%} -> {core.accuracy_b:.1%}",
        f"{_pp(core.difference)} [{_pp(core.ci_low)}, {_pp(core.ci_high)}]",
        f"{core.wrong_to_right}/{core.right_to_wrong}, p = {core.p_value:.2g}",
        f"{tailored.accuracy_b:.1%}, {_pp(tailored.difference)} [{_pp(tailored.ci_low)}, {_pp(tailored.ci_high)}], "
        f"p = {tailored.p_value:.2g}"
        if tailored
        else "-",
        f"taught {mechanism.taught_right}/{mechanism.taught}, not taught {mechanism.untaught_right}/"
        f"{mechanism.untaught}, p = {mechanism.p_value:.2g}"
        if mechanism
        else "no recheck",
        f"{seconds:.0f}" if seconds is not None else "earlier",
    ]
    gap = None
    if mechanism and mechanism.taught and mechanism.untaught:
        gap = mechanism.taught_right / mechanism.taught - mechanism.untaught_right / mechanism.untaught
    return row, SeedResult(core.p_value, core.difference, tailored.difference if tailored else None, gap)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--run-dir", default="runs/demo-seeds", help="seed N runs in RUN_DIR/seed-N")
    args = parser.parse_args()
    rows, results = [], []
    for seed in args.seeds:
        run_dir = Path(args.run_dir) / f"seed-{seed}"
        seconds = run_seed(args.config, run_dir, seed)
        row, result = seed_row(seed, run_dir, seconds)
        rows.append(row)
        results.append(result)
    head = ["seed", "test: untrained -> round 0", "round 0 gain, points [95%]", "McNemar w->r/r->w", "round 1 vs 0"]
    print(markdown_table([*head, "mechanism (pool mistakes now right)", "run (s)"], rows))
    print(over_seeds("round 0 vs the untrained student", [r.core_gain for r in results]))
    print(over_seeds("tailored round vs round 0", [r.tailored_gain for r in results if r.tailored_gain is not None]))
    gaps = [r.mechanism_gap for r in results if r.mechanism_gap is not None]
    print(over_seeds("taught minus untaught mistakes now right", gaps))
    met = all(r.core_p < THRESHOLD for r in results)
    print(f"round 0 beats the untrained student with McNemar p < {THRESHOLD} on {'every' if met else 'not every'} seed")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
