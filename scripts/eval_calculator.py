#!/usr/bin/env python3
"""How much of a run's test error is arithmetic: its rounds evaluated again with the decoding calculator.

Each round's adapter answers the run's test questions greedily in its first eval mode, as the run's
own eval did, but with `student.generation.calculator` on: after every "<arithmetic> =" the student
writes, decoding writes the exact result (loop/core/calculator.py). The run's stored eval (without the
calculator, unless the run had it on when that round was evaluated) is the paired baseline, read
from history.duckdb (read-only; the run may be live). Prints one markdown table: per round, accuracy
without and with the calculator, the paired difference with its 95% bootstrap interval and exact
McNemar p, and how many outputs the calculator changed; then each round against the first with the
calculator on. `--dump FILE` writes every output as JSON lines.

    .venv/bin/python scripts/eval_calculator.py --run runs/live-ma-pool-prompt2-s0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import duckdb

from tutorloop.actors.exam import Examiner
from tutorloop.actors.models import adapter_to_bytes, set_torch_threads
from tutorloop.loop.core.config import load_config
from tutorloop.loop.core.datasets import answer_type_of, load_examples
from tutorloop.loop.paired_stats import compare_paired


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory with adapters/round-N folders")
    parser.add_argument("--rounds", type=int, nargs="*", help="default: every round with an adapter")
    parser.add_argument("--dump", help="write every output (both ways) as JSON lines here")
    return parser.parse_args()


def stored_eval(run_dir: Path, round_: int, mode: str) -> dict[str, dict]:
    """The run's own greedy test answers of that round, by question id."""
    with duckdb.connect(str(run_dir / "history.duckdb"), read_only=True) as db:
        rows = db.execute(
            "SELECT example_id, output, correct FROM attempts WHERE round = ? AND phase = 'eval' "
            "AND mode = ? AND sample_index = 0",
            [round_, mode],
        ).fetchall()
    return {i: {"output": output, "correct": bool(correct)} for i, output, correct in rows}


def main() -> None:
    args = parse_args()
    run_dir = Path(args.run)
    for needed in ("config.yaml", "history.duckdb", "adapters"):
        if not (run_dir / needed).exists():
            raise SystemExit(f"{run_dir}: not a finished run directory (no {needed})")
    config = load_config(run_dir / "config.yaml")
    config.student.generation.calculator = True
    mode = config.student.eval_modes[0]
    rounds = (
        args.rounds
        if args.rounds
        else sorted(int(p.name.split("-")[1]) for p in (run_dir / "adapters").glob("round-*"))
    )
    test = load_examples(config.data, "test")
    set_torch_threads(0)
    examiner = Examiner(config.student, answer_type_of(config.data), seed=config.run.seed)
    with_calculator: dict[int, dict[str, bool]] = {}
    lines = [
        "| round | stored eval | with calculator | difference [95% CI] | wrong -> right | "
        "right -> wrong | McNemar p | outputs changed | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    dump = open(args.dump, "w") if args.dump else None
    for round_ in rounds:
        plain = stored_eval(run_dir, round_, mode)
        if len(plain) != len(test):
            raise SystemExit(
                f"{run_dir}: round {round_} has {len(plain)} stored {mode} eval answers, expected {len(test)}"
            )
        start = time.perf_counter()
        examiner.set_adapter(adapter_to_bytes(run_dir / "adapters" / f"round-{round_}"))
        records = {r["example_id"]: r for r in examiner.run(test, mode)}
        seconds = time.perf_counter() - start
        with_calculator[round_] = {i: r["correct"] for i, r in records.items()}
        paired = compare_paired({i: p["correct"] for i, p in plain.items()}, with_calculator[round_])
        changed = sum(records[i]["output"] != plain[i]["output"] for i in plain)
        lines.append(
            f"| {round_} | {paired.accuracy_a:.1%} | {paired.accuracy_b:.1%} | "
            f"{paired.difference * 100:+.1f} [{paired.ci_low * 100:+.1f}, {paired.ci_high * 100:+.1f}] | "
            f"{paired.wrong_to_right} | {paired.right_to_wrong} | {paired.p_value:.3g} | {changed} | "
            f"{seconds:.0f} |"
        )
        for i, r in records.items():
            if dump:
                dump.write(
                    json.dumps(
                        {
                            "round": round_,
                            "example_id": i,
                            "plain": plain[i]["output"],
                            "plain_correct": plain[i]["correct"],
                            "calculator": r["output"],
                            "calculator_correct": r["correct"],
                        }
                    )
                    + "\n"
                )
    if dump:
        dump.close()
    first = rounds[0]
    if len(rounds) > 1:
        lines += [
            "",
            f"| with the calculator | against round {first} [95% CI] | wrong -> right | right -> wrong | McNemar p |",
            "|---|---|---|---|---|",
        ]
        for round_ in rounds[1:]:
            paired = compare_paired(with_calculator[first], with_calculator[round_])
            lines.append(
                f"| round {round_} | {paired.difference * 100:+.1f} [{paired.ci_low * 100:+.1f}, "
                f"{paired.ci_high * 100:+.1f}] | {paired.wrong_to_right} | {paired.right_to_wrong} | "
                f"{paired.p_value:.3g} |"
            )
    print(f"{run_dir} ({config.data.task}, {len(test)} test questions, mode {mode})")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
