"""Paired tests between runs, rounds and arms of seeds, read from the runs' histories.

A run's outcome is, per evaluated round, which test questions it got right (greedy evaluation in the
run's first eval mode, the mode of its `test accuracy`). Two runs are paired when they were graded on
the same test questions (same ids and texts) in the same mode; otherwise they are not compared.
An arm is a set of runs that differ only in `run.seed` (and in keys that cannot change results, such
as names and Ray placement): found from the stored configs, or named by the user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tutorloop.loop.core.config import RESUME_SAFE_KEYS, config_from_dict
from tutorloop.loop.core.config_meta import changed_keys
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.paired_stats import (
    SIGNIFICANCE,
    PairedComparison,
    compare_paired,
    discordant,
    mcnemar_exact,
    seed_paired_t,
    seed_shares,
)
from tutorloop.store.query import multi_query, run_names

# Keys in which the runs of one arm may differ (run.rounds too: arms are compared round by round).
ARM_FREE_KEYS = (*RESUME_SAFE_KEYS, "run.seed", "run.name")
_EVAL_SQL = """
SELECT run, round, mode, example_id, bool_and(correct) AS correct FROM attempts
WHERE phase = 'eval' AND split = 'test' GROUP BY run, round, mode, example_id
"""


@dataclass
class RunOutcome:
    name: str
    config: dict[str, Any]
    mode: str
    questions: dict[str, str]  # test example id -> question text: what pairing compares
    correct: dict[int, dict[str, bool]]  # round -> example id -> right

    @property
    def seed(self) -> Any:
        return self.config.get("run", {}).get("seed")

    def rounds(self) -> list[int]:
        """Rounds evaluated on every test question (a round still being evaluated is left out)."""
        return [r for r, flags in sorted(self.correct.items()) if self.questions and set(self.questions) <= set(flags)]

    def accuracy(self, round_: int) -> float:
        """Share of the test questions right in `round_` (one of `rounds()`)."""
        return sum(self.correct[round_][q] for q in self.questions) / len(self.questions)


@dataclass
class Arm:
    name: str
    runs: list[RunOutcome]
    notes: list[str] = field(default_factory=list)


def load_outcomes(run_dirs: Sequence[str | Path]) -> list[RunOutcome]:
    """Each run's test outcomes per round, in the order given."""
    names = run_names(run_dirs)
    runs = multi_query(run_dirs, "SELECT run, config FROM runs").to_pylist()
    configs = {r["run"]: json.loads(r["config"]) for r in runs}
    questions: dict[str, dict[str, str]] = {name: {} for name in names}
    for row in multi_query(run_dirs, "SELECT run, example_id, question FROM examples WHERE split = 'test'").to_pylist():
        questions[row["run"]][row["example_id"]] = row["question"]
    outcomes = []
    rows = multi_query(run_dirs, _EVAL_SQL).to_pylist()
    for name in names:
        config = configs.get(name, {})
        mode = (config.get("student", {}).get("eval_modes") or ["explain"])[0]
        correct: dict[int, dict[str, bool]] = {}
        for row in rows:
            if row["run"] == name and row["mode"] == mode:
                correct.setdefault(row["round"], {})[row["example_id"]] = bool(row["correct"])
        outcomes.append(RunOutcome(name, config, mode, questions[name], correct))
    return outcomes


def pairing_problem(a: RunOutcome, b: RunOutcome) -> str | None:
    """Why two runs cannot be paired, or None when they can."""
    if a.questions != b.questions:
        same = len(set(a.questions.items()) & set(b.questions.items()))
        return f"not paired: other test questions ({len(a.questions)} vs {len(b.questions)}, {same} shared)"
    if a.mode != b.mode:
        return f"not paired: graded in other modes ({a.mode}, {b.mode})"
    return None


def round_tests(run: RunOutcome) -> dict[int, tuple[PairedComparison | None, PairedComparison | None]]:
    """Per evaluated round k: (k against round 0, k against the previous evaluated round), paired on questions."""
    rounds = run.rounds()
    tests = {}
    for index, round_ in enumerate(rounds):
        first = compare_paired(run.correct[0], run.correct[round_]) if round_ > 0 and 0 in rounds else None
        previous = compare_paired(run.correct[rounds[index - 1]], run.correct[round_]) if index else None
        tests[round_] = (first, previous)
    return tests


def _dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _free(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in ARM_FREE_KEYS)


def _arm_key(run: RunOutcome) -> str:
    """Runs with the same key differ only in ARM_FREE_KEYS; a config this version cannot read is its own arm."""
    try:
        return config_from_dict(run.config).fingerprint(ARM_FREE_KEYS)
    except ConfigError:
        return f"unreadable config: {run.name}"


def _differences(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in changed_keys(a, b) if not _free(k)}


def detect_arms(outcomes: Sequence[RunOutcome]) -> list[Arm]:
    """Arms from the stored configs, named by the keys in which they differ from the other arms."""
    groups: dict[str, list[RunOutcome]] = {}
    for run in outcomes:
        groups.setdefault(_arm_key(run), []).append(run)
    arms = [Arm("", runs) for runs in groups.values()]
    for arm in arms:
        keys = set().union(*(_differences(arm.runs[0].config, o.runs[0].config) for o in arms if o is not arm))
        if keys and len(keys) <= 3:
            arm.name = ", ".join(f"{k}={_text(_dotted(arm.runs[0].config, k))}" for k in sorted(keys))
        else:
            arm.name = "+".join(r.name for r in arm.runs)
    return _checked(arms)


def named_arms(outcomes: Sequence[RunOutcome], members: dict[str, list[int]]) -> list[Arm]:
    """Arms the user named (`--group NAME=RUN,...`, as indexes into outcomes); other runs are arms of one."""
    grouped = {i for indexes in members.values() for i in indexes}
    arms = [Arm(name, [outcomes[i] for i in indexes]) for name, indexes in members.items()]
    arms += [Arm(run.name, [run]) for i, run in enumerate(outcomes) if i not in grouped]
    return _checked(arms)


def _checked(arms: list[Arm]) -> list[Arm]:
    """Notes where an arm's runs differ in more than the seed, or repeat a seed."""
    for arm in arms:
        first = arm.runs[0].config
        keys = set().union(*(_differences(first, r.config) for r in arm.runs[1:]))
        if keys:
            arm.notes.append(f"arm {arm.name}: its runs differ in more than run.seed ({', '.join(sorted(keys))})")
        seeds = [r.seed for r in arm.runs]
        repeated = sorted({str(s) for s in seeds if seeds.count(s) > 1})
        if repeated:
            arm.notes.append(f"arm {arm.name}: seed {', '.join(repeated)} appears more than once")
    return arms


@dataclass
class ArmTest:
    round: int
    comparison: PairedComparison
    per_seed: dict[Any, tuple[float, float]]  # run.seed -> (B - A accuracy, McNemar p) of that seed's two runs
    seed_p: float | None  # paired t-test over the seeds both arms ran (None with fewer than two)


def arm_problem(a: Arm, b: Arm) -> str | None:
    """Why two arms cannot be paired (any of their runs on other questions or modes), or None."""
    first = a.runs[0]
    return next((p for p in (pairing_problem(first, r) for r in [*a.runs[1:], *b.runs]) if p), None)


def arm_rounds(arms: Sequence[Arm]) -> list[int]:
    """Rounds every run of these arms evaluated fully."""
    sets = [set(r.rounds()) for arm in arms for r in arm.runs]
    return sorted(set.intersection(*sets)) if sets else []


def seeds_disagree(test: ArmTest) -> str | None:
    """Where some seeds favour A and others B, each at p < 0.05: pooled over questions this can look like a
    result, though retraining decides the sign."""
    a = [str(s) for s, (d, p) in test.per_seed.items() if p < SIGNIFICANCE and d < 0]
    b = [str(s) for s, (d, p) in test.per_seed.items() if p < SIGNIFICANCE and d > 0]
    if not (a and b):
        return None
    return f"seeds disagree: A significantly better on seed {', '.join(a)}, B on seed {', '.join(b)}"


def arm_tests(a: Arm, b: Arm) -> list[ArmTest]:
    """A against B per shared round: questions are the unit, each scored by its share of an arm's seeds."""
    tests = []
    for round_ in arm_rounds([a, b]):
        shares = [seed_shares([r.correct[round_] for r in arm.runs]) for arm in (a, b)]
        per_seed, differences = {}, []
        for run_a in a.runs:
            run_b = next((r for r in b.runs if r.seed == run_a.seed), None)
            if run_b is not None and run_a.seed not in per_seed:
                difference = run_b.accuracy(round_) - run_a.accuracy(round_)
                p = mcnemar_exact(*discordant(run_a.correct[round_], run_b.correct[round_]))
                per_seed[run_a.seed] = (difference, p)
                differences.append(difference)
        tests.append(ArmTest(round_, compare_paired(*shares), per_seed, seed_paired_t(differences)))
    return tests
