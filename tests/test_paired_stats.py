"""Paired statistics against values computed by hand."""

from __future__ import annotations

import math
import statistics

import pytest

from tutorloop.loop.paired_stats import (
    bootstrap_difference,
    compare_paired,
    discordant,
    mcnemar_exact,
    seed_interval,
    seed_paired_t,
    seed_shares,
    student_t_two_sided,
    verdict,
)


@pytest.mark.parametrize(
    "b, c, expected",
    [
        (0, 0, 1.0),  # no discordant question: no evidence either way
        (0, 5, 2 / 32),  # 2 * (1/2)^5
        (1, 9, 2 * (1 + 10) / 1024),  # 2 * (C(10,0) + C(10,1)) / 2^10
        (12, 2, 2 * (1 + 14 + 91) / 2**14),
        (5, 5, 1.0),  # a tie is capped at 1
    ],
)
def test_mcnemar_exact_matches_the_binomial_by_hand(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, abs=1e-12)
    assert mcnemar_exact(c, b) == pytest.approx(expected, abs=1e-12)  # two-sided: symmetric


def test_compare_paired_counts_discordant_questions_on_shared_ids_only() -> None:
    a = {"q1": False, "q2": False, "q3": True, "q4": True, "q5": False, "only_a": True}
    b = {"q1": True, "q2": True, "q3": True, "q4": False, "q5": False, "only_b": False}
    result = compare_paired(a, b)
    assert result.questions == 5
    assert (result.wrong_to_right, result.right_to_wrong) == (2, 1)
    assert result.accuracy_a == pytest.approx(2 / 5) and result.accuracy_b == pytest.approx(3 / 5)
    assert result.difference == pytest.approx(1 / 5)
    assert result.p_value == pytest.approx(1.0)  # 2 * (1 + 3) / 8 = 1
    assert result.ci_low <= result.difference <= result.ci_high
    assert not result.significant


def test_bootstrap_interval_degenerate_and_width() -> None:
    assert bootstrap_difference([True] * 20, [True] * 20) == (0.0, 0.0)
    assert bootstrap_difference([False] * 20, [True] * 20) == (1.0, 1.0)
    # 60 of 200 questions flip wrong->right, none the other way: diff 0.3, se = sqrt(.3*.7/200) ~ 0.0324.
    a = [False] * 200
    b = [True] * 60 + [False] * 140
    low, high = bootstrap_difference(a, b, seed=1)
    se = math.sqrt(0.3 * 0.7 / 200)
    assert low == pytest.approx(0.3 - 1.96 * se, abs=0.012)
    assert high == pytest.approx(0.3 + 1.96 * se, abs=0.012)
    assert bootstrap_difference(a, b, seed=1) == (low, high)  # seeded: reproducible


def test_strong_paired_effect_is_significant() -> None:
    a = {f"q{i}": i < 10 for i in range(100)}
    b = {f"q{i}": i < 30 for i in range(100)}
    result = compare_paired(a, b)
    assert (result.wrong_to_right, result.right_to_wrong) == (20, 0)
    assert result.p_value == pytest.approx(2 / 2**20)
    assert result.significant and result.ci_low > 0


def test_seed_interval_is_the_t_interval() -> None:
    mean, low, high = seed_interval([0.5, 0.6, 0.7])
    half = 4.303 * 0.1 / math.sqrt(3)
    # 4.303 is the printed table's quantile, rounded to 3 decimals: within 0.0005 * 0.1 / sqrt(3) of the exact one
    assert (mean, low, high) == pytest.approx((0.6, 0.6 - half, 0.6 + half), abs=3e-5)
    assert seed_interval([0.42]) == (0.42, 0.42, 0.42)


def test_seed_interval_past_thirty_seeds_keeps_students_t() -> None:
    # 41 seeds: 40 degrees of freedom, whose 97.5% quantile in printed t tables is 2.021 (the normal's 1.96 is too narrow).
    accuracies = [0.40 + 0.005 * i for i in range(41)]
    mean, low, high = seed_interval(accuracies)
    standard_error = statistics.stdev(accuracies) / math.sqrt(41)
    assert mean == pytest.approx(0.5)
    assert (high - mean) / standard_error == pytest.approx(2.021, abs=5e-4)
    assert (mean - low) / standard_error == pytest.approx(2.021, abs=5e-4)


def test_seed_shares_and_the_sign_test_between_arms() -> None:
    # Three seeds per arm on q1..q4 (q5 missing in one run: left out).
    arm_a = [
        {"q1": True, "q2": True, "q3": False, "q4": False, "q5": True},
        {"q1": True, "q2": False, "q3": False, "q4": False},
        {"q1": True, "q2": True, "q3": False, "q4": True},
    ]
    arm_b = [
        {"q1": True, "q2": False, "q3": True, "q4": True},
        {"q1": True, "q2": False, "q3": True, "q4": False},
        {"q1": False, "q2": False, "q3": True, "q4": True},
    ]
    shares_a, shares_b = seed_shares(arm_a), seed_shares(arm_b)
    assert shares_a == pytest.approx({"q1": 1.0, "q2": 2 / 3, "q3": 0.0, "q4": 1 / 3})
    assert shares_b == pytest.approx({"q1": 2 / 3, "q2": 0.0, "q3": 1.0, "q4": 2 / 3})
    assert discordant(shares_a, shares_b) == (2, 2)  # B better on q3, q4; A better on q1, q2
    result = compare_paired(shares_a, shares_b)
    assert result.accuracy_a == pytest.approx(0.5) and result.accuracy_b == pytest.approx(7 / 12)
    assert result.difference == pytest.approx(1 / 12)
    assert result.p_value == 1.0
    # One seed per arm: the sign test is McNemar's test.
    single = compare_paired(seed_shares(arm_a[:1]), seed_shares(arm_b[:1]))
    assert (single.wrong_to_right, single.right_to_wrong) == (2, 1)
    assert seed_shares([]) == {}


def test_verdict_in_plain_words() -> None:
    assert verdict(2 * (1 + 10) / 1024) == "significant at 0.05 (p=0.0215)"
    assert verdict(0.41) == "not significant (p=0.41): the difference is within noise"
    assert verdict(0.05).startswith("not significant")  # the threshold itself is not below 0.05


@pytest.mark.parametrize(
    "t, df, expected",
    [
        (1.0, 1, 0.5),  # Cauchy: 1 - 2 atan(1) / pi
        (3.0, 1, 1 - 2 * math.atan(3.0) / math.pi),
        (2.474, 2, 1 - 2.474 / math.sqrt(2 + 2.474**2)),  # df 2: 1 - |t| / sqrt(2 + t^2)
        (-2.474, 2, 1 - 2.474 / math.sqrt(2 + 2.474**2)),
        (0.0, 7, 1.0),
        (4.303, 2, 0.05),
        (2.776, 4, 0.05),
        (2.228, 10, 0.05),
        (2.042, 30, 0.05),  # the 97.5% quantile table
    ],
)
def test_student_t_two_sided_p_by_hand(t: float, df: int, expected: float) -> None:
    assert student_t_two_sided(t, df) == pytest.approx(expected, abs=2e-4)


def test_seed_paired_t() -> None:
    # differences +1.0, +6.5, +7.5 points: mean 5, sd 3.5, t = 5 / (3.5 / sqrt(3)) with 2 degrees of freedom
    t = 5 / (3.5 / math.sqrt(3))
    assert seed_paired_t([0.010, 0.065, 0.075]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert seed_paired_t([0.05]) is None  # one seed: no test
    assert seed_paired_t([0.0, 0.0, 0.0]) == 1.0  # the same outcome every seed
    assert seed_paired_t([0.02, 0.02]) == 0.0  # the same nonzero difference every seed
