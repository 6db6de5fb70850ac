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


def calculator_result(text: str) -> str | None:
    """What follows `text` if it ends with "<arithmetic> =": the exact result (with a leading space when
    the text has none, and a "$" when the operands had one); None when there is nothing to compute."""
    match = _EXPRESSION_BEFORE_EQUALS.search(text)
    if match is None:
        return None
    expression = match.group(1)
    source = re.sub(r"[x×]", "*", expression).replace("÷", "/").replace("$", "").replace(",", "")
    try:
        value = _evaluate(ast.parse(source, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
    result = ("$" if "$" in expression else "") + format_result(value)
    return result if text.endswith((" ", "\t")) else " " + result
