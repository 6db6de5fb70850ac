"""The decoding calculator: when the student writes an arithmetic expression and "=", the exact result.

The GSM8K calculator (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems") overrides
the model's digits after each annotated equation while sampling; here the trigger is the plain text
the student already writes ("12 + 44 =", "3 x $4 ="), so no special training format is needed.
Only + - * / (x, ×, ÷ as well) and parentheses over plain numbers are evaluated; anything else
(words, a variable, a divide by zero) leaves the student to write its own result.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

_NUMBER = r"\$?\d+(?:,\d{3})*(?:\.\d+)?"
_OPERAND = rf"(?:\(\s*)*{_NUMBER}(?:\s*\))*"
_OPERATOR = r"\s*[-+*/x×÷]\s*"
# Operands joined by at least one operator, then "=" and nothing but spaces: the leftmost such run wins, so
# "1,000 + 5 =" reads a thousand and "so 12, 3 + 4 =" reads 3 + 4.
_EXPRESSION_BEFORE_EQUALS = re.compile(rf"({_OPERAND}(?:{_OPERATOR}{_OPERAND})+)\s*=[ \t]*$")
# The number written after "=": signed, with a "$", thousands separators and decimals as the operands have;
# not a result where more arithmetic, a variable or a percent follows ("= 24+40 = 64", "= 12 + 2x", "= 5%").
_WRITTEN_RESULT = re.compile(rf"[ \t]*(-?{_NUMBER})(?![A-Za-z%\d]|[.,]\d|{_OPERATOR}[\d($])")
# A result this close to the value is float noise written out ("0.8333333333333334"), not a false equation
_FLOAT_NOISE = Fraction(1, 10**9)
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("not plain arithmetic")


def format_result(value: Fraction) -> str:
    """An integer as is; otherwise at most two decimals, trailing zeros dropped."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.2f}".rstrip("0").rstrip(".")


def _expression_before_equals(text: str) -> tuple[str, Fraction] | None:
    """The arithmetic `text` ends with ("<arithmetic> =") and its exact value; None when there is none."""
    match = _EXPRESSION_BEFORE_EQUALS.search(text)
    if match is None:
        return None
    expression = match.group(1)
    source = re.sub(r"[x×]", "*", expression).replace("÷", "/").replace("$", "").replace(",", "")
    try:
        return expression, _evaluate(ast.parse(source, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def calculator_result(text: str) -> str | None:
    """What follows `text` if it ends with "<arithmetic> =": the exact result (with a leading space when
    the text has none, and a "$" when the operands had one); None when there is nothing to compute."""
    parsed = _expression_before_equals(text)
    if parsed is None:
        return None
    expression, value = parsed
    result = ("$" if "$" in expression else "") + format_result(value)
    return result if text.endswith((" ", "\t")) else " " + result


def false_equations(text: str) -> list[str]:
    """The equations "<arithmetic> = c" written in `text` whose c is not the exact value, each as written.

    A result counts as true when it is the value rounded or cut off at its last written digit
    ("100 / 3 = 33.33", "2 / 3 = 0.67" or "0.66", "17 / 5 = 3" full boxes); a "=" not followed by a
    number, or not preceded by arithmetic, is not checked."""
    false = []
    for equals in re.finditer("=", text):
        parsed = _expression_before_equals(text[: equals.end()])
        written = _WRITTEN_RESULT.match(text, equals.end())
        if parsed is None or written is None:
            continue
        expression, value = parsed
        digits = written.group(1).replace("$", "").replace(",", "")
        unit = Fraction(1, 10 ** (len(digits.split(".", 1)[1]) if "." in digits else 0))
        result = Fraction(digits)
        rounded = abs(value - result) * 2 <= unit or abs(value - result) <= abs(value) * _FLOAT_NOISE
        cut_off = int(value / unit) * unit == result  # int() truncates toward zero
        if not (rounded or cut_off):
            false.append(f"{expression.strip()} = {written.group(1)}")
    return false
