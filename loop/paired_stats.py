"""Paired statistics for runs graded on the same test questions.

Two runs (or two rounds) answer the same questions, so their difference is judged question by
question: a paired bootstrap interval of the accuracy difference, and the exact McNemar test on the
discordant questions (wrong in A and right in B, against right in A and wrong in B). For arms that
differ only in seed, the mean accuracy over seeds with a Student-t 95% interval, the same paired
test with each question's share of an arm's seeds in place of right/wrong (`seed_shares`), and a
paired t-test over seeds (`seed_paired_t`): questions as the unit say how sure we are on these test
questions, seeds say whether retraining would give the same difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class PairedComparison:
    questions: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a
    ci_low: float
    ci_high: float
    wrong_to_right: int  # wrong in A, right in B (with seed shares: right in more of B's seeds)
    right_to_wrong: int  # right in A, wrong in B (with seed shares: right in more of A's seeds)
    p_value: float  # exact two-sided McNemar (with seed shares: the sign test over questions)

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE


def mcnemar_exact(wrong_to_right: int, right_to_wrong: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test of the discordant counts against p = 1/2."""
    n = wrong_to_right + right_to_wrong
    if n == 0:  # binomtest needs at least one trial; no discordant question is no evidence either way
        return 1.0
    return float(stats.binomtest(wrong_to_right, n, 0.5).pvalue)


def bootstrap_difference(
    correct_a: Sequence[float], correct_b: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """95% percentile interval of accuracy(B) - accuracy(A), resampling questions with their pair intact.

    Values are right (1) / wrong (0), or a question's share of seeds that got it right."""
    diff = np.asarray(correct_b, dtype=np.float64) - np.asarray(correct_a, dtype=np.float64)
    if diff.size < 2:  # scipy needs two observations; every resample of one question is that question
        value = float(diff[0]) if diff.size else 0.0
        return value, value
    # batch keeps memory flat on large test sets; percentile, as BCa gives NaN when every question agrees
    interval = stats.bootstrap(
        (diff,),
        np.mean,
        n_resamples=resamples,
        batch=1000,
        vectorized=True,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(interval.low), float(interval.high)


def discordant(correct_a: Mapping[str, float], correct_b: Mapping[str, float]) -> tuple[int, int]:
    """(questions B did better on, questions A did better on), over the questions both answered."""
    shared = set(correct_a) & set(correct_b)
    return (
        sum(1 for q in shared if float(correct_b[q]) > float(correct_a[q])),
        sum(1 for q in shared if float(correct_a[q]) > float(correct_b[q])),
    )


def compare_paired(correct_a: Mapping[str, float], correct_b: Mapping[str, float], seed: int = 0) -> PairedComparison:
    """A against B on the questions both answered (keyed by question id).

    Values are right/wrong (McNemar), or shares of seeds from `seed_shares`: then a question counts
    once, for the arm that got it right in more seeds (the sign test, McNemar's exact test generalized)."""
    shared = sorted(set(correct_a) & set(correct_b))
    a = [float(correct_a[q]) for q in shared]
    b = [float(correct_b[q]) for q in shared]
    wrong_to_right, right_to_wrong = discordant(correct_a, correct_b)
    low, high = bootstrap_difference(a, b, seed)
    n = max(len(shared), 1)
    return PairedComparison(
        questions=len(shared),
        accuracy_a=sum(a) / n,
        accuracy_b=sum(b) / n,
        difference=(sum(b) - sum(a)) / n,
        ci_low=low,
        ci_high=high,
        wrong_to_right=wrong_to_right,
        right_to_wrong=right_to_wrong,
        p_value=mcnemar_exact(wrong_to_right, right_to_wrong),
    )


def seed_interval(accuracies: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds with a Student-t 95% interval (one seed: no interval)."""
    values = np.asarray(accuracies, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, values.size - 1)) * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def student_t_two_sided(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    return float(2 * stats.t.sf(abs(t), df))


def seed_paired_t(differences: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test over seeds: `differences` holds accuracy(B) - accuracy(A) for
    each seed both arms ran. None with fewer than two seeds; seeds that all agree exactly give 1 (no
    difference) or 0 (the same nonzero difference every time)."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size < 2:
        return None
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    if sd < 1e-12:
        return 1.0 if abs(mean) < 1e-12 else 0.0
    return student_t_two_sided(mean / (sd / math.sqrt(values.size)), values.size - 1)


def seed_shares(runs: Sequence[Mapping[str, bool]]) -> dict[str, float]:
    """Per question (those every run answered): the share of the runs (an arm's seeds) that got it right."""
    if not runs:
        return {}
    shared = set(runs[0]).intersection(*runs[1:])
    return {q: sum(bool(run[q]) for run in runs) / len(runs) for q in sorted(shared)}


def verdict(p_value: float) -> str:
    """A p-value in plain words."""
    if p_value < SIGNIFICANCE:
        return f"significant at 0.05 (p={p_value:.3g})"
    return f"not significant (p={p_value:.3g}): the difference is within noise"


def paired_t_over_seeds(accuracy_a: Sequence[float], accuracy_b: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test of B against A over seeds (scipy.stats.ttest_rel); None under two
    seeds. Seeds whose differences agree exactly leave t undefined: 1 for no difference, 0 otherwise."""
    if len(accuracy_a) < 2:
        return None
    differences = np.asarray(accuracy_b, dtype=np.float64) - np.asarray(accuracy_a, dtype=np.float64)
    if float(differences.std(ddof=1)) < 1e-12:
        return seed_paired_t(differences)
    return float(stats.ttest_rel(accuracy_b, accuracy_a).pvalue)
