"""Text formatting shared by the console, the report, compare and the exported model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def percent(value: float | None) -> str:
    """A share as '12.3%'; '-' where there is no value (a round not evaluated yet)."""
    return "-" if value is None else f"{value:.1%}"


def _markdown_cell(value: Any) -> str:
    text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    # A pipe would end the cell and a newline the row.
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A pipe table: None as an empty cell, floats to 4 significant digits, everything else as str()."""
    lines = ["| " + " | ".join(_markdown_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def next_steps(run_dir: Path) -> str:
    """Three queries worth running on a finished run."""
    queries = [
        "SELECT round, kind, test_accuracy, mistakes, teacher_calls, round_s FROM round_summary",
        "SELECT from_round, to_round, mode, wrong_to_right, right_to_wrong FROM transitions",
        "SELECT round, teacher, strategy, calls, accepted, rejections, cost_usd FROM teacher_yield",
    ]
    return "Try:\n" + "\n".join(f'  tutorloop sql {run_dir} "{q}"' for q in queries)
