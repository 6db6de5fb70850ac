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
from pathlib import Path

from tutorloop.loop.compare_stats import load_outcomes
from tutorloop.loop.formatting import markdown_table
from tutorloop.loop.paired_stats import compare_paired
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


def seed_row(seed: int, run_dir: Path, seconds: float | None) -> tuple[list[str], float]:
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
    return row, core.p_value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--run-dir", default="runs/demo-seeds", help="seed N runs in RUN_DIR/seed-N")
    args = parser.parse_args()
    rows, p_values = [], []
    for seed in args.seeds:
        run_dir = Path(args.run_dir) / f"seed-{seed}"
        seconds = run_seed(args.config, run_dir, seed)
        row, p_value = seed_row(seed, run_dir, seconds)
        rows.append(row)
        p_values.append(p_value)
    head = ["seed", "test: untrained -> round 0", "round 0 gain, points [95%]", "McNemar w->r/r->w", "round 1 vs 0"]
    print(markdown_table([*head, "mechanism (pool mistakes now right)", "run (s)"], rows))
    met = all(p < THRESHOLD for p in p_values)
    print(f"round 0 beats the untrained student with McNemar p < {THRESHOLD} on {'every' if met else 'not every'} seed")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
