"""What a finished run shows, in plain words and numbers from its own paired tests (the end of `tutorloop run`).

Three results, each on questions the run answered before and after: round 0 against the untrained student
and the last tailored round against round 0 (the same test questions: bootstrap interval and exact
McNemar), and the mechanism of tailoring: of the pool mistakes a tailored round taught, how many the
student gets right once it has trained, against the mistakes of the same exam it did not teach (the
round's recheck, student.recheck_mistakes; Fisher's exact test, as the two groups are different questions).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from tutorloop.loop.compare_stats import load_outcomes
from tutorloop.loop.formatting import percent
from tutorloop.loop.paired_stats import SIGNIFICANCE, PairedComparison, compare_paired
from tutorloop.loop.round_plan import RECHECK
from tutorloop.store.query import fetch_rows, history_path


@dataclass(frozen=True)
class Mechanism:
    """A tailored round's recheck: its pool mistakes split by whether the round taught them."""

    round: int
    taught: int
    taught_right: int
    untaught: int
    untaught_right: int
    p_value: float  # Fisher's exact test, two-sided, of right/wrong against taught/untaught


def mechanism_counts(recheck: dict[str, bool], taught_ids: set[str]) -> tuple[int, int, int, int]:
    """(taught, right among them, untaught, right among them) over the rechecked mistakes."""
    taught = [right for example_id, right in recheck.items() if example_id in taught_ids]
    untaught = [right for example_id, right in recheck.items() if example_id not in taught_ids]
    return len(taught), sum(taught), len(untaught), sum(untaught)


def fisher_p(taught: int, taught_right: int, untaught: int, untaught_right: int) -> float:
    if not taught or not untaught:
        return 1.0
    table = [[taught_right, taught - taught_right], [untaught_right, untaught - untaught_right]]
    return float(stats.fisher_exact(table).pvalue)


def round_mechanism(run_dir: Path, round_: int) -> Mechanism | None:
    """The round's recheck split by taught (an accepted teacher rationale this round) and not; None without one."""
    path = history_path(run_dir)
    rows = fetch_rows(
        path,
        f"SELECT example_id, bool_and(correct) AS right FROM attempts WHERE round = {int(round_)} "
        f"AND phase = '{RECHECK}' GROUP BY example_id",
    )
    if not rows:
        return None
    taught_ids = {
        r["example_id"]
        for r in fetch_rows(
            path, f"SELECT DISTINCT example_id FROM rationales WHERE round = {int(round_)} AND accepted"
        )
    }
    counts = mechanism_counts({r["example_id"]: bool(r["right"]) for r in rows}, taught_ids)
    return Mechanism(round_, *counts, p_value=fisher_p(*counts))


ONE_ANSWER_SHARE = 0.8  # a round that gives one answer this often is mostly answering a prior, not the question


def one_answer_note(round_: int, answers: list[str], golds: list[str]) -> str | None:
    """A line where a round gave one answer to most questions: its accuracy is then close to that answer's
    share of the gold answers, and always answering the commonest gold answer is the bar to beat."""
    if not answers:
        return None
    answer, count = Counter(answers).most_common(1)[0]
    if count < ONE_ANSWER_SHARE * len(answers):
        return None
    common, common_count = Counter(golds).most_common(1)[0]
    return (
        f"    note: round {round_} answered '{answer}' to {count} of {len(answers)} questions; always answering "
        f"'{common}' (the commonest gold answer) scores {percent(common_count / len(golds))} here"
    )


def round_answer_notes(run_dir: Path, rounds: list[int], mode: str) -> dict[int, str]:
    """`one_answer_note` of each of `rounds` (eval answers in `mode`), where it has one."""
    rows = fetch_rows(
        history_path(run_dir),
        "SELECT a.round, a.extracted, e.gold FROM attempts a JOIN examples e USING (example_id) "
        f"WHERE a.phase = 'eval' AND a.mode = '{mode}' AND a.sample_index = 0",
    )
    notes = {}
    for round_ in rounds:
        mine = [r for r in rows if r["round"] == round_]
        note = one_answer_note(round_, [str(r["extracted"]) for r in mine], [str(r["gold"]) for r in mine])
        if note:
            notes[round_] = note
    return notes


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _verdict(p_value: float) -> str:
    return "significant" if p_value < SIGNIFICANCE else "within noise (not significant)"


def paired_lines(label: str, result: PairedComparison) -> list[str]:
    return [
        f"  {label}: {percent(result.accuracy_a)} -> {percent(result.accuracy_b)} "
        f"({result.difference * 100:+.1f} points, 95% interval [{result.ci_low * 100:+.1f}, {result.ci_high * 100:+.1f}]);",
        f"    {result.wrong_to_right} questions wrong -> right, {result.right_to_wrong} right -> wrong: "
        f"McNemar p = {_p(result.p_value)}, {_verdict(result.p_value)}",
    ]


def mechanism_lines(m: Mechanism) -> list[str]:
    def share(right: int, n: int) -> str:
        return f"{right} now right ({percent(right / n)})" if n else "none"

    return [
        f"  what tailoring did in round {m.round} (its pool mistakes, examined again after training):",
        f"    taught {m.taught}: {share(m.taught_right, m.taught)}; not taught {m.untaught}: "
        f"{share(m.untaught_right, m.untaught)}; Fisher p = {_p(m.p_value)}, {_verdict(m.p_value)}",
    ]


def takeaway(run_dir: Path) -> str:
    """The lines the console ends a run with; empty where the run has no round to compare."""
    (run,) = load_outcomes([run_dir])
    rounds = run.rounds()
    lines: list[str] = []
    tailored = [r for r in rounds if r > 0]
    notes = round_answer_notes(run_dir, [r for r in (0, *tailored[-1:]) if r in rounds], run.mode)
    if -1 in rounds and 0 in rounds:
        lines += paired_lines("round 0 vs the untrained student", compare_paired(run.correct[-1], run.correct[0]))
        lines += [notes[0]] if 0 in notes else []
    if tailored and 0 in rounds:
        lines += paired_lines(
            f"tailored round {tailored[-1]} vs round 0", compare_paired(run.correct[0], run.correct[tailored[-1]])
        )
        lines += [notes[tailored[-1]]] if tailored[-1] in notes else []
    for round_ in tailored:
        mechanism = round_mechanism(run_dir, round_)
        if mechanism:
            lines += mechanism_lines(mechanism)
    if not lines:
        return ""
    header = f"What this run shows ({run.mode} mode, the same {len(run.questions)} test questions in every round):"
    return "\n".join([header, *lines])
