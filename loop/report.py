"""`tutorloop report RUN_DIR`: report.md and a self-contained report.html written into the run directory.

Everything comes from the history, read-only, so a report can be made while a run is going. Plots
(loop/report_charts.py) are embedded in the HTML as data URIs, and saved under `report/` for the
Markdown file to link.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Callable

from tutorloop.loop.compare import difference_cells, strategies_by_round
from tutorloop.loop.formatting import markdown_table, percent
from tutorloop.loop.paired_stats import BOOTSTRAP_RESAMPLES, PairedComparison
from tutorloop.loop.report_charts import PLOTS
from tutorloop.loop.report_data import (
    EXAMPLES_SHOWN,
    PHASES,
    ReportData,
    accuracy_column,
    load_report_data,
    round_label,
)

_NO_ROWS = "(no rows yet)"
_EMPTY = "(empty output)"
_NO_EXAMPLES = "No accepted tailored corrections yet (they start in round 1)."


def usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _describe(data: ReportData) -> list[tuple[str, str]]:
    cfg = data.config
    student = cfg.get("student", {})
    teachers = ", ".join(
        f"{t['name']} ({t['backend']}: {t['model']})" for t in cfg.get("teacher", {}).get("teachers", [])
    )
    data_cfg = cfg.get("data", {})
    trained = [r for r in data.rounds if r["round"] >= 0 and r["test_accuracy"] is not None]
    best = max(trained, key=lambda r: (r["test_accuracy"], r["round"]), default=None)
    baseline = next((r for r in data.rounds if r["round"] < 0), None)
    last = trained[-1] if trained else None
    cost = sum(r["teacher_cost_usd"] or 0 for r in data.rounds)
    calls = sum(r["teacher_calls"] or 0 for r in data.rounds)
    seconds = sum(r["round_s"] or 0 for r in data.rounds)
    message = data.run["message"]
    status = data.run["status"] + (f" ({message})" if message and message != data.run["status"] else "")
    return [
        ("run", f"{data.run['name']} ({data.run_dir})"),
        ("status", status),
        ("started", f"{data.run['created_at']:%Y-%m-%d %H:%M}"),
        ("student", str(student.get("model"))),
        ("teacher(s)", teachers or "-"),
        ("teaching strategies", strategies_by_round(data.yield_rows) or "-"),
        ("task", str(data_cfg.get("task"))),
        ("rounds done", ", ".join(str(r["round"]) for r in data.rounds if r["status"] == "done") or "-"),
        (
            f"test accuracy ({data.modes[0]})",
            f"baseline {percent(baseline['test_accuracy'] if baseline else None)} → last round "
            f"{percent(last['test_accuracy'] if last else None)}; best round "
            f"{best['round'] if best else '-'} ({percent(best['test_accuracy'] if best else None)})",
        ),
        ("teacher", f"{calls} calls, {usd(cost)}"),
        ("time", f"{seconds:.0f} s in rounds"),
    ]


def paired_cell(test: PairedComparison | None) -> str:
    """One round against another in a table cell: the difference, its interval and the verdict."""
    if test is None:
        return "-"
    difference, interval, said = difference_cells(test, "the earlier round", "this round")
    return f"{difference}, 95% interval {interval}; {said}"


def _accuracy_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    head = (
        ["round", "kind"]
        + [f"test {m}" for m in data.modes]
        + [
            "pool exam",
            "mistakes",
            "accepted rationales",
            "samples",
            "contrast pairs",
            "vs round 0",
            "vs previous round",
        ]
    )
    rows = [
        [round_label(r["round"]), r["kind"]]
        + [percent(r.get(accuracy_column(m))) for m in data.modes]
        + [
            percent(r["pool_accuracy"]),
            num(r["mistakes"]),
            num(r["rationales_accepted"]),
            num(r["samples"]),
            num(r["contrast_pairs"]),
        ]
        + [paired_cell(t) for t in data.round_tests.get(r["round"], (None, None))]
        for r in data.rounds
    ]
    return head, rows


def _transition_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    head = ["rounds", "mode", "wrong → right", "right → wrong", "stayed right", "stayed wrong"]
    rows = [
        [
            f"{t['from_round']} → {t['to_round']}",
            t["mode"],
            str(t["wrong_to_right"]),
            str(t["right_to_wrong"]),
            str(t["stayed_right"]),
            str(t["stayed_wrong"]),
        ]
        for t in data.transitions
    ]
    return head, rows


def _cost_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    head = [
        "round",
        "teacher",
        "strategy",
        "calls",
        "failed",
        "rationales",
        "accepted",
        "rejections",
        "cost",
        "cost / accepted",
    ]
    rows = []
    for y in data.yield_rows:
        rejections = ", ".join(f"{k}: {v}" for k, v in sorted(dict(y["rejections"] or {}).items())) or "-"
        rows.append(
            [
                str(y["round"]),
                y["teacher"],
                y["strategy"] or "-",
                str(y["calls"]),
                str(y["failed_calls"]),
                str(y["rationales"]),
                str(y["accepted"]),
                rejections,
                usd(y["cost_usd"]),
                usd(y["cost_per_accepted_usd"]),
            ]
        )
    return head, rows


def _time_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    head = ["round"] + [f"{p} (s)" for p in PHASES] + ["round (s)", "teacher calls", "cache hits", "cost"]
    rows = [
        [round_label(r["round"])]
        + [num(r[f"{p}_s"]) for p in PHASES]
        + [num(r["round_s"]), num(r["teacher_calls"]), num(r["cache_hits"]), usd(r["teacher_cost_usd"])]
        for r in data.rounds
    ]
    return head, rows


def _after_text(example: dict[str, Any]) -> str:
    if example["after_round"] is None:
        return "not examined again (no later round yet)"
    right = round(example["after_share"] * example["after_samples"])
    return (
        f"round {example['after_round']} exam: {right}/{example['after_samples']} samples right; "
        f"shown: answer {example['after_answer']!s}"
    )


def _md_block(text: str | None) -> str:
    return "```text\n" + ((text or "").strip() or _EMPTY).replace("```", "'''") + "\n```"


Table = tuple[list[str], list[list[str]]]

# (title, plot name, image alt text, table or None, note): the sections both renderers show, in order.
_LEARNING_TITLE = "What the student learned"
_LEARNING_NOTE = (
    "Test accuracy of each evaluated round on the same questions (95% Wilson intervals; p: exact McNemar against "
    "the round before). Where a tailored round examined its pool mistakes again after training "
    "(student.recheck_mistakes), the right panel compares the mistakes it taught with those it did not."
)
_SECTIONS: list[tuple[str, str, str, Callable[[ReportData], Table] | None, str]] = [
    (
        "Accuracy per round",
        "accuracy",
        "accuracy per round",
        _accuracy_table,
        "Round -1 is the untrained student (zero-shot baseline); round 0 trains on the teacher's rationales for "
        "the whole pool; later rounds train on the teacher's corrections of the student's mistakes. "
        "vs round 0 and vs previous round: the change in test accuracy (first eval mode) on the same questions, "
        f"its 95% interval ({BOOTSTRAP_RESAMPLES:,} bootstrap resamples of the questions) and the exact McNemar "
        "test on the questions that changed; not significant means the change is within noise.",
    ),
    (
        "Mistakes and transitions",
        "mistakes",
        "mistakes and transitions",
        _transition_table,
        "Test questions that changed between consecutive evaluated rounds.",
    ),
    (
        "Teacher cost against accuracy",
        "cost",
        "accuracy against teacher cost",
        _cost_table,
        "What each teacher and strategy yielded.",
    ),
    ("Training loss", "loss", "training loss curves", None, ""),
    ("Time per phase", "time", "time per phase", _time_table, ""),
]


def render_markdown(data: ReportData, images: dict[str, str]) -> str:
    out = [f"# tutorloop report: {data.run['name']}", ""]
    out += [f"- **{k}**: {v}" for k, v in _describe(data)]
    out += ["", f"## {_LEARNING_TITLE}", "", _LEARNING_NOTE, ""]
    out += [_md_block(data.takeaway), ""] if data.takeaway else []
    out += [f"![{_LEARNING_TITLE}]({images['learning']})"]
    for title, image, _, table_of, note in _SECTIONS:
        out += ["", f"## {title}", ""]
        if note:
            out += [note, ""]
        out += [f"![{title}]({images[image]})", ""]
        if table_of:
            head, rows = table_of(data)
            out += [markdown_table(head, rows) if rows else _NO_ROWS]
    out += ["", "## Examples of tailored feedback", ""]
    if not data.examples:
        out += [_NO_EXAMPLES]
    for ex in data.examples:
        out += [
            f"### Round {ex['round']}, question {ex['example_id']} (teacher {ex['teacher']})",
            "",
            f"**Question** (gold answer {ex['gold']}):",
            _md_block(ex["question"]),
            "",
            f"**Student's wrong rationale** (answer {ex['wrong_answer']!s}):",
            _md_block(ex["wrong_output"]),
            "",
            "**Teacher's feedback:**",
            _md_block(ex["feedback"]),
            "",
            f"**Teacher's correction** (answer {ex['teacher_answer']!s}):",
            _md_block(ex["correction"]),
            "",
            f"**After training:** {_after_text(ex)}",
            _md_block(ex["after_output"]) if ex["after_output"] else "",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1000px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
img { max-width: 100%; border: 1px solid #eee; }
.example { border: 1px solid #d0d7de; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.example h3 { margin-top: 0.2em; }
pre { background: #f6f8fa; padding: 6px 10px; white-space: pre-wrap; word-break: break-word; margin: 0.3em 0 0.8em; }
.wrong { border-left: 4px solid #cf222e; } .right { border-left: 4px solid #1a7f37; }
.note { color: #59636e; }
"""


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return f"<p class='note'>{_NO_ROWS}</p>"
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _pre(text: str | None, css: str = "") -> str:
    return f"<pre class='{css}'>{html.escape((text or '').strip() or _EMPTY)}</pre>"


def render_html(data: ReportData, pngs: dict[str, bytes]) -> str:
    esc = html.escape
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _describe(data))
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>tutorloop report: "
        f"{esc(data.run['name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>tutorloop report: {esc(data.run['name'])}</h1><dl class='facts'>{facts}</dl>",
        f"<h2>{_LEARNING_TITLE}</h2><p class='note'>{esc(_LEARNING_NOTE, quote=False)}</p>",
        _pre(data.takeaway) if data.takeaway else "",
        f"<img alt='what the student learned' src='data:image/png;base64,{base64.b64encode(pngs['learning']).decode()}'>",
    ]
    for title, name, alt, table_of, note in _SECTIONS:
        parts.append(f"<h2>{esc(title)}</h2>" + (f"<p class='note'>{esc(note, quote=False)}</p>" if note else ""))
        parts.append(f"<img alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(pngs[name]).decode()}'>")
        if table_of:
            parts.append(_html_table(*table_of(data)))
    parts.append("<h2>Examples of tailored feedback</h2>")
    if not data.examples:
        parts.append(f"<p class='note'>{_NO_EXAMPLES}</p>")
    for ex in data.examples:
        after_css = "" if ex["after_round"] is None else "right" if ex["after_share"] > 0 else "wrong"
        parts.append(
            f"<div class='example'><h3>Round {ex['round']}, question {esc(ex['example_id'])} "
            f"(teacher {esc(ex['teacher'])})</h3>"
            f"<b>Question</b> (gold answer {esc(str(ex['gold']))}){_pre(ex['question'])}"
            f"<b>Student's wrong rationale</b> (answer {esc(str(ex['wrong_answer']))})"
            f"{_pre(ex['wrong_output'], 'wrong')}"
            f"<b>Teacher's feedback</b>{_pre(ex['feedback'])}"
            f"<b>Teacher's correction</b> (answer {esc(str(ex['teacher_answer']))}){_pre(ex['correction'], 'right')}"
            f"<b>After training</b>: {esc(_after_text(ex))}"
            + (_pre(ex["after_output"], after_css) if ex["after_output"] else "")
            + "</div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, examples: int = EXAMPLES_SHOWN) -> tuple[Path, Path]:
    """Write report.md (+ its PNGs under report/) and the self-contained report.html into `run_dir`."""
    data = load_report_data(run_dir, examples)
    pngs = {name: plot(data) for name, plot in PLOTS.items()}
    image_dir = data.run_dir / "report"
    image_dir.mkdir(exist_ok=True)
    images = {}
    for name, png in pngs.items():
        (image_dir / f"{name}.png").write_bytes(png)
        images[name] = f"report/{name}.png"
    md_path = data.run_dir / "report.md"
    html_path = data.run_dir / "report.html"
    md_path.write_text(render_markdown(data, images))
    html_path.write_text(render_html(data, pngs))
    return md_path, html_path
