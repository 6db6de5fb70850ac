"""The experiment report as one self-contained HTML file (DIR/report.html) beside report.md.

It holds the markdown report's text (headings, bullets and tables turned into HTML) and, above it, the
plots as PNG data URIs, so the file opens anywhere with nothing fetched: per declared comparison, each
seed's accuracy in arm A joined to its accuracy in arm B, and the differences over seeds with the
two-level bootstrap interval of their mean, the primary comparison first.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from tutorloop.loop.report_charts import DPI, figure_png  # noqa: E402

if TYPE_CHECKING:
    from tutorloop.loop.experiment_report import SeedComparison

HTML_FILE = "report.html"
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
"""
_CELL_SPLIT = re.compile(r"(?<!\\)\|")  # markdown_table escapes a pipe inside a cell as \|


def plot_arms_per_seed(result: SeedComparison, title: str) -> bytes:
    """Each seed's accuracy in arm A and arm B, joined by a line: the pairing the paired t-test uses."""
    c = result.comparison
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=DPI)
    for seed in result.accuracy_a:
        pair = [100 * result.accuracy_a[seed], 100 * result.accuracy_b[seed]]
        ax.plot([0, 1], pair, marker="o", alpha=0.8, label=f"seed {seed}")
    ax.set_xticks([0, 1])
    ax.set_xticklabels([c.a_label, c.b])
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylabel(f"{c.split} {c.metric} at round {c.round} (%)")
    ax.set_title(f"{title}: {c.b} vs {c.a_label}, {c.split} split, per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return figure_png(fig)


def plot_differences(results: list[SeedComparison]) -> bytes:
    """Per comparison: each seed's difference (dots) and the mean over seeds with its 95% two-level bootstrap
    interval (bar); the primary comparison on top."""
    shown = [r for r in results if r.mean_difference is not None]
    fig, ax = plt.subplots(figsize=(9.0, 1.6 + 0.7 * max(len(shown), 1)), dpi=DPI)
    for row, result in enumerate(shown):
        y = -row
        diffs = [100 * (result.accuracy_b[s] - result.accuracy_a[s]) for s in result.accuracy_a]
        ax.scatter(diffs, [y + 0.15] * len(diffs), s=18, color="grey", label="one seed" if row == 0 else None)
        low, high = result.interval or (result.mean_difference, result.mean_difference)
        mean = 100 * result.mean_difference
        ax.errorbar(
            mean,
            y,
            xerr=[[mean - 100 * low], [100 * high - mean]],
            fmt="o",
            color="C0" if row else "C3",
            capsize=4,
            label="mean over seeds, 95% interval" if row == 0 else None,
        )
    labels = [("primary: " if i == 0 else "") + r.comparison.label() for i, r in enumerate(shown)]
    ax.set_yticks([-i for i in range(len(shown))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("B - A (percentage points); interval: two-level bootstrap (seeds, then questions)")
    ax.set_ylim(-len(shown) + 0.5, 0.6)
    ax.set_title("Differences over seeds")
    ax.grid(alpha=0.3, axis="x")
    if shown:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point
    return figure_png(fig)


def _table_html(rows: list[str]) -> str:
    cells = [[c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(row.strip())[1:-1]] for row in rows]
    head, body = cells[0], cells[2:]  # cells[1] is the |---| separator
    head_html = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head_html}</tr></thead><tbody>{body_html}</tbody></table>"


def markdown_to_html(text: str) -> str:
    """The report's markdown (headings, '- ' bullets, pipe tables, paragraphs) as HTML, every text escaped."""
    parts, table, bullets = [], [], []
    for line in [*text.splitlines(), ""]:
        if table and not line.startswith("|"):
            parts.append(_table_html(table))
            table = []
        if bullets and not line.startswith("- "):
            parts.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in bullets) + "</ul>")
            bullets = []
        if line.startswith("|"):
            table.append(line)
        elif line.startswith("- "):
            bullets.append(line[2:])
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(parts)


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def render_experiment_html(name: str, markdown: str, results: list[SeedComparison]) -> str:
    """The whole page: the plots of the compared arms, then the markdown report's text."""
    plots = []
    for index, result in enumerate(results):
        if result.accuracy_a:
            title = "Primary" if index == 0 else f"Secondary {index}"
            plots.append(_img(plot_arms_per_seed(result, title), f"{title}: accuracy per seed in each arm"))
    if any(r.mean_difference is not None for r in results):
        plots.append(_img(plot_differences(results), "differences over seeds with their intervals"))
    lines = markdown.splitlines()
    title = lines[:1] if lines and lines[0].startswith("# ") else []  # the plots go right below the title
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>tutorloop experiment: "
        f"{html.escape(name)}</title><style>{_CSS}</style></head><body>\n"
        + markdown_to_html("\n".join(title))
        + (f"\n<h2>Plots</h2>\n{''.join(plots)}\n" if plots else "\n<p>No comparison has graded seeds yet.</p>\n")
        + markdown_to_html("\n".join(lines[len(title) :]))
        + "\n</body></html>\n"
    )


def write_experiment_html(directory: Path, name: str, markdown: str, results: list[SeedComparison]) -> Path:
    path = Path(directory) / HTML_FILE
    path.write_text(render_experiment_html(name, markdown, results))
    return path
