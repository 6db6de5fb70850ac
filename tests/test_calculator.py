"""The decoding calculator's arithmetic: what it computes after "=", and what it leaves to the student."""

from __future__ import annotations

import pytest

from tutorloop.loop.core.calculator import calculator_result


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She had 8 songs and deleted 5, so 8 - 5 =", " 3"),
        ("12 + 44 = ", "56"),  # the space is already written
        ("3 x 4 =", " 12"),
        ("3 × 4 =", " 12"),
        ("12 ÷ 4 =", " 3"),
        ("7 / 2 =", " 3.5"),
        ("10 / 3 =", " 3.33"),
        ("2.5 * 4 =", " 10"),
        ("(3 + 4) * 2 =", " 14"),
        ("3 + 4 * 2 =", " 11"),  # precedence as written
        ("3 - 5 =", " -2"),
        ("1,000 + 5 =", " 1005"),
        ("so 12, 3 + 4 =", " 7"),  # "12," is not part of the expression
        ("Each costs $3, so 4 x $3 =", " $12"),
        ("He had 5. 3 + 4 =", " 7"),
        ("3 + 4 = 7, and 7 + 2 =", " 9"),  # a chain: the last expression
        ("20 - 4 - 6 =", " 10"),
    ],
)
def test_computes_the_expression_right_before_the_equals_sign(text: str, expected: str) -> None:
    assert calculator_result(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "There are 12 apples =",  # no operator
        "x = 3",  # no "=" at the end
        "12 + 44 = 56",  # already answered
        "apples + pears =",  # words, not numbers
        "5 / 0 =",  # nothing sensible to write
        "(3 + 4 =",  # unbalanced
        "3 + =",
        "",
    ],
)
def test_leaves_everything_else_to_the_student(text: str) -> None:
    assert calculator_result(text) is None
