"""`tutorloop compare` with paired statistics, through the real CLI on real run histories.

The runs are forks of the shared quick run (loop/fork.py copies its history and adapters); a fork's
seed and its round-2 test outcomes are then set through the store, so every count, p-value and mean
below is known by hand. The shared run itself is never changed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from shared_run import cli, shared_quick_run
from test_history import build_history

from tutorloop.loop.fork import fork_run
from tutorloop.store.history import RunHistory
from tutorloop.store.query import fetch_rows

SEEDS = (0, 1, 2)


def branch(parent: Path, target: Path, *overrides: str, seed: int | None = None) -> Path:
    """A finished copy of `parent` (all its rounds), with overrides and, where given, another run.seed."""
    fork_run(parent, target, after_round=2, overrides=list(overrides))
    history = RunHistory(target)
    if seed is not None:  # a fork keeps the parent's seed; a sibling seed run differs only there
        config = json.loads(fetch_rows(target, "SELECT config FROM runs")[0]["config"])
        config["run"]["seed"] = seed
        history.set_config(config)
    history.set_status("finished")
    return target


def set_right(run_dir: Path, round_: int, right: set[int]) -> None:
    """Round `round_`'s explain-mode test outcomes: right exactly on the questions at these sorted positions."""
    ids = [
        r["example_id"]
        for r in fetch_rows(run_dir, "SELECT example_id FROM examples WHERE split = 'test' ORDER BY example_id")
    ]
    history = RunHistory(run_dir)
    history.writer.sql(
        "UPDATE attempts SET correct = list_contains(?, example_id) WHERE phase = 'eval' "
        "AND split = 'test' AND mode = 'explain' AND round = ?",
        [[ids[i] for i in right], round_],
    )
    history.writer.sql(
        "UPDATE metrics SET value = ? WHERE round = ? AND split = 'test' AND name IN ('accuracy', 'accuracy_explain')",
        [len(right) / len(ids), round_],
    )


def compare_json(*args: str) -> list[dict]:
    out = cli("compare", *args, "--format", "json", timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def mcnemar_by_hand(b: int, c: int) -> float:
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Arm 'tailored' (t0, t1, t2) and arm 'random' (r0, r1, r2: training.selection=random), seeds 0-2,
    plus a and b, two runs of other configs, and a history on other test questions."""
    base = shared_quick_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("compare")
    made = {f"t{s}": branch(base, root / f"t{s}", seed=s) for s in SEEDS}
    made |= {f"r{s}": branch(base, root / f"r{s}", "training.selection=random", seed=s) for s in SEEDS}
    # Round 2, 24 questions: the tailored seeds are right on questions 0-9; random seed 0 and 2 only on 10,
    # seed 1 on 0 and 10. Shares: 10 questions better in tailored, 1 (question 10) better in random.
    for s in SEEDS:
        set_right(made[f"t{s}"], 2, set(range(10)))
        set_right(made[f"r{s}"], 2, {0, 10} if s == 1 else {10})
    made["a"] = branch(base, root / "a", "training.reflection=none")
    made["b"] = branch(base, root / "b", "training.alpha=0.3")
    set_right(made["a"], 2, set(range(12)))  # 12 right
    set_right(made["b"], 2, set(range(1, 21)))  # 0 lost, 12-20 gained: 9 wrong->right, 1 right->wrong
    made["synthetic"] = build_history(root / "synthetic")
    return made


def test_pair_of_runs_against_hand_computed_values(runs: dict[str, Path]) -> None:
    rows = compare_json(str(runs["a"]), str(runs["b"]), "--table", "pairs")
    by_round = {r["round"]: r for r in rows}
    assert set(by_round) == {"-1", "0", "1", "2"}
    two = by_round["2"]
    assert (two["run A"], two["run B"], two["questions"]) == ("a", "b", "24")
    assert (two["accuracy A"], two["accuracy B"], two["difference"]) == ("50.0%", "83.3%", "+33.3 pts")
    assert (two["wrong -> right"], two["right -> wrong"]) == ("9", "1")
    assert mcnemar_by_hand(9, 1) == pytest.approx(0.021484375)  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert two["p (McNemar)"] == "0.0215"
    assert two["verdict"] == "significant at 0.05 (p=0.0215): B does better"
    low, high = map(float, re.fullmatch(r"\[([-+][\d.]+), ([-+][\d.]+)\] pts", two["95% interval"]).groups())
    assert 0 < low < 33.3 < high <= 100
    # Rounds -1 to 1 are the same copied outcomes: nothing changed, no evidence either way.
    for round_ in ("-1", "0", "1"):
        same = by_round[round_]
        assert (same["wrong -> right"], same["right -> wrong"], same["difference"]) == ("0", "0", "+0.0 pts")
        assert same["verdict"] == "not significant (p=1): the difference is within noise"


def test_text_output_shows_the_paired_tests_after_the_side_by_side_table(runs: dict[str, Path]) -> None:
    out = cli("compare", str(runs["a"]), str(runs["b"]), timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["measure", "a", "b"]
    assert "Paired tests between runs" in lines and "Arms of seeds" not in lines
    assert "exact McNemar" in out.stdout
    assert any(line.startswith("2 ") and "significant at 0.05 (p=0.0215)" in line for line in lines)
    markdown = cli("compare", str(runs["a"]), str(runs["b"]), "--format", "markdown", timeout=300)
    assert "## Paired tests between runs" in markdown.stdout
    assert "| 2 | a | b | 24 | 50.0% | 83.3% | +33.3 pts |" in markdown.stdout


def test_seed_arms_found_from_the_stored_configs(runs: dict[str, Path]) -> None:
    seeded = [str(runs[f"{arm}{s}"]) for arm in "tr" for s in SEEDS]
    arms = {(r["arm"], r["round"]): r for r in compare_json(*seeded, "--table", "arms")}
    tailored, random = "training.selection=mistakes", "training.selection=random"
    assert {arm for arm, _ in arms} == {tailored, random}
    top = arms[(tailored, "2")]
    assert (top["runs"], top["seeds"]) == ("t0, t1, t2", "0, 1, 2")
    assert (top["mean accuracy"], top["95% interval (seeds)"], top["per seed"]) == (
        "41.7%",
        "[41.7%, 41.7%]",
        "41.7%, 41.7%, 41.7%",
    )
    low = arms[(random, "2")]
    values = [1 / 24, 2 / 24, 1 / 24]
    mean = sum(values) / 3
    half = 4.303 * math.sqrt(sum((v - mean) ** 2 for v in values) / 2) / math.sqrt(3)  # t(2) = 4.303
    assert low["mean accuracy"] == f"{mean:.1%}" == "5.6%"
    assert mean - half < 0  # shown clipped to the possible range
    assert low["95% interval (seeds)"] == f"[0.0%, {mean + half:.1%}]"

    tests = {r["round"]: r for r in compare_json(*seeded, "--table", "arm-tests")}
    two = tests["2"]
    assert (two["arm A"], two["arm B"], two["seeds A / B"]) == (tailored, random, "3 / 3")
    assert (two["mean A"], two["mean B"], two["difference"]) == ("41.7%", "5.6%", "-36.1 pts")
    assert (two["questions better in B"], two["questions better in A"]) == ("1", "10")
    assert mcnemar_by_hand(1, 10) == pytest.approx(2 * 12 / 2**11)
    assert two["p (sign test)"] == f"{2 * 12 / 2**11:.3g}" == "0.0117"
    # per seed: seeds 0 and 2 are 1 against 10, seed 1 is 1 against 9
    assert two["per seed (B - A, McNemar p)"] == (
        "seed 0: -37.5 pts, p=0.0117; seed 1: -33.3 pts, p=0.0215; seed 2: -37.5 pts, p=0.0117"
    )
    # over seeds: accuracy differences -9/24, -8/24, -9/24; t with 2 degrees of freedom, whose two-sided
    # p is 1 - |t| / sqrt(2 + t^2)
    diffs = [-9 / 24, -8 / 24, -9 / 24]
    mean = sum(diffs) / 3
    t = mean / (math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3))
    seed_p = 1 - abs(t) / math.sqrt(2 + t * t)
    assert two["p (seeds, paired t)"] == f"{seed_p:.3g}" == "0.00148"
    assert two["verdict"] == "significant at 0.05 (p=0.0117): A does better; over seeds also significant (p=0.00148)"
    assert tests["1"]["verdict"] == ("not significant (p=1): the difference is within noise; over seeds not (p=1)")

    text = cli("compare", *seeded, timeout=300).stdout
    assert "Arms of seeds" in text and "Paired tests between arms" in text and "found from the stored configs" in text
    assert "Paired tests between runs" not in text  # 15 run pairs would bury the two arms


def test_seeds_significant_in_opposite_directions_are_named(runs: dict[str, Path]) -> None:
    # Round 2: seed 0 pairs t0 (10 right) with r0 (1 right), seed 1 pairs r1 (2 right) with t1 (10 right), so
    # A is ahead on seed 0 (10 vs 1 discordant) and B on seed 1 (9 vs 1); pooled, the arms nearly tie.
    x, y = f"x={runs['t0']},{runs['r1']}", f"y={runs['r0']},{runs['t1']}"
    two = {r["round"]: r for r in compare_json("--group", x, "--group", y, "--table", "arm-tests")}["2"]
    assert two["per seed (B - A, McNemar p)"] == "seed 0: -37.5 pts, p=0.0117; seed 1: +33.3 pts, p=0.0215"
    assert two["verdict"].endswith("; seeds disagree: A significantly better on seed 0, B on seed 1")
    assert (
        "seeds disagree"
        not in {
            r["round"]: r
            for r in compare_json(
                "--group",
                f"t={runs['t0']},{runs['t1']}",
                "--group",
                f"r={runs['r0']},{runs['r1']}",
                "--table",
                "arm-tests",
            )
        }["2"]["verdict"]
    )


def test_named_groups_say_where_an_arm_mixes_configs(runs: dict[str, Path]) -> None:
    t = ",".join(str(runs[f"t{s}"]) for s in (0, 1))
    mixed = ",".join(str(runs[n]) for n in ("r0", "r1", "t2"))
    out = cli("compare", "--group", f"tailored={t}", "--group", f"mixed={mixed}", timeout=300)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "as named with --group" in text
    assert "arm mixed: its runs differ in more than run.seed (training.selection)" in text
    rows = compare_json("--group", f"tailored={t}", "--group", f"mixed={mixed}", "--table", "arms")
    assert {(r["arm"], r["runs"]) for r in rows} == {("tailored", "t0, t1"), ("mixed", "r0, r1, t2")}


def test_runs_on_other_test_questions_are_not_paired(runs: dict[str, Path]) -> None:
    rows = compare_json(str(runs["a"]), str(runs["synthetic"]), "--table", "pairs")
    assert rows == [
        {
            "round": "-",
            "run A": "a",
            "run B": "synthetic",
            "questions": "-",
            "accuracy A": "-",
            "accuracy B": "-",
            "difference": "-",
            "95% interval": "-",
            "wrong -> right": "-",
            "right -> wrong": "-",
            "p (McNemar)": "-",
            "verdict": "not paired: other test questions (24 vs 4, 0 shared)",
        }
    ]
    arms = compare_json(
        "--group", f"one={runs['t0']},{runs['t1']}", "--group", f"other={runs['synthetic']}", "--table", "arm-tests"
    )
    assert [r["verdict"] for r in arms] == ["not paired: other test questions (24 vs 4, 0 shared)"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--group", "nameonly"], "compare: --group 'nameonly': expected NAME=RUN_DIR,RUN_DIR,..."),
        (["--group", "x={a}", "--group", "x={b}"], "compare: --group 'x' is given twice"),
        (["--group", "x={a}", "--group", "y={a},{b}"], "compare: a run is in more than one --group"),
        ([], "compare: give run directories, or arms as --group NAME=RUN_DIR,RUN_DIR"),
        (["{a}", "--table", "nope"], "compare: argument --table: invalid choice: 'nope'"),
    ],
)
def test_bad_groups_are_one_line(runs: dict[str, Path], args: list[str], message: str) -> None:
    out = cli("compare", *[a.format(a=runs["a"], b=runs["b"]) for a in args], timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
