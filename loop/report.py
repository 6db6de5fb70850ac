"""`tutorloop report RUN_DIR`: report.md and a self-contained report.html written into the run directory.

Everything comes from the history (the views of store/views.sql), read-only, so a report can be made
while a run is going. Plots are matplotlib PNGs at a fixed pixel size (FIGURES x DPI): embedded in the
HTML as data URIs, and saved under `report/` for the Markdown file to link.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tutorloop.loop.compare import strategies_by_round  # noqa: E402
from tutorloop.loop.errors import RunError  # noqa: E402
from tutorloop.store.query import fetch_rows, history_path  # noqa: E402

DPI = 100
# Figure sizes in inches; a PNG is exactly (width * DPI) x (height * DPI) pixels.
FIGURES: dict[str, tuple[float, float]] = {
    "accuracy": (9.0, 4.8),
    "mistakes": (9.0, 4.2),
    "cost": (9.0, 4.2),
    "loss": (9.0, 6.0),
    "time": (9.0, 3.8),
}
PHASES = ("exam", "teach", "train", "eval")
EXAMPLES_SHOWN = 6

_FEEDBACK_SQL = """
WITH exam AS (
    SELECT round, example_id, sample_index, output, extracted, correct,
           row_number() OVER (PARTITION BY round, example_id ORDER BY correct, sample_index) AS k,
           avg(CAST(correct AS INTEGER)) OVER (PARTITION BY round, example_id) AS share,
           count(*) OVER (PARTITION BY round, example_id) AS n
    FROM attempts WHERE phase = 'exam'
)
SELECT r.round, r.example_id, r.teacher, e.question, e.gold,
       w.output AS wrong_output, w.extracted AS wrong_answer,
       r.feedback, r.rationale AS correction, r.extracted AS teacher_answer,
       a.round AS after_round, a.output AS after_output, a.extracted AS after_answer,
       a.share AS after_share, a.n AS after_samples
FROM rationales r
JOIN examples e ON e.example_id = r.example_id
LEFT JOIN exam w ON w.round = r.round AND w.example_id = r.example_id AND w.k = 1 AND NOT w.correct
LEFT JOIN exam a ON a.round = r.round + 1 AND a.example_id = r.example_id AND a.k = a.n
WHERE r.strategy = 'tailored' AND r.accepted
ORDER BY r.round, r.example_id, r.teacher, r.sample_index
"""
# In `a`, k = n picks the attempt ordered last by (correct, sample_index): a right one when any sample is.


@dataclass
class ReportData:
    run_dir: Path
    run: dict[str, Any]
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    transitions: list[dict[str, Any]]
    yield_rows: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    modes: list[str] = field(default_factory=list)


def load_report_data(run_dir: str | Path, examples: int = EXAMPLES_SHOWN) -> ReportData:
    """Everything the report shows, read from the run's history."""
    run_dir = Path(run_dir)
    path = history_path(run_dir)
    runs = fetch_rows(path, "SELECT name, status, message, created_at, config, versions FROM runs")
    if not runs:
        raise RunError(f"{run_dir}: the history holds no run")
    run = runs[0]
    config = json.loads(run["config"])
    modes = list(config.get("student", {}).get("eval_modes") or ["explain"])
    feedback = fetch_rows(path, _FEEDBACK_SQL)
    return ReportData(
        run_dir=run_dir, run=run, config=config,
        rounds=fetch_rows(path, "SELECT * FROM round_summary ORDER BY round"),
        transitions=fetch_rows(path, "SELECT * FROM transitions ORDER BY from_round, mode"),
        yield_rows=fetch_rows(path, "SELECT * FROM teacher_yield ORDER BY round, teacher, strategy"),
        curves=fetch_rows(path, "SELECT round, step, term, value FROM training_curves "
                                "WHERE value IS NOT NULL ORDER BY round, term, step"),
        examples=pick_examples(feedback, examples), modes=modes)


def pick_examples(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` tailored corrections, one per question: half that the student got right after
    training, the rest that it still got wrong, then ones not examined again (the last round's)."""
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["example_id"] not in seen:
            seen.add(row["example_id"])
            unique.append(row)
    fixed = [r for r in unique if r["after_round"] is not None and r["after_share"] > 0]
    still = [r for r in unique if r["after_round"] is not None and r["after_share"] == 0]
    later = [r for r in unique if r["after_round"] is None]
    half = (limit + 1) // 2
    chosen = fixed[:half]
    chosen += still[: limit - len(chosen)]
    chosen += fixed[half:][: limit - len(chosen)]  # too few still wrong: more of the fixed ones
    chosen += later[: limit - len(chosen)]
    return sorted(chosen, key=lambda r: (r["round"], r["example_id"]))


# ----- formatting ------------------------------------------------------------------------------------
def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def round_label(round_: int) -> str:
    return {-1: "-1 baseline", 0: "0 core"}.get(round_, str(round_))


def _accuracy_column(mode: str) -> str:
    return f"test_accuracy_{mode}"


# ----- plots -----------------------------------------------------------------------------------------
def _figure(name: str, nrows: int = 1, ncols: int = 1):
    fig, axes = plt.subplots(nrows, ncols, figsize=FIGURES[name], dpi=DPI, squeeze=False)
    return fig, axes


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    # No bbox_inches="tight": the PNG keeps the exact pixel size FIGURES promises.
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _round_axis(ax, rounds: list[int]) -> None:
    ax.set_xticks(rounds)
    ax.set_xticklabels([round_label(r) for r in rounds])
    ax.set_xlabel("round")


def plot_accuracy(data: ReportData) -> bytes:
    fig, axes = _figure("accuracy")
    ax = axes[0][0]
    trained = [r for r in data.rounds if r["round"] >= 0]
    baseline = next((r for r in data.rounds if r["round"] < 0), None)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, mode in enumerate(data.modes):
        color = colors[i % len(colors)]
        points = [(r["round"], r[_accuracy_column(mode)]) for r in data.rounds
                  if r.get(_accuracy_column(mode)) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], marker="o", color=color, label=f"test, {mode} mode")
            for x, y in points:
                ax.annotate(f"{100 * y:.0f}", (x, 100 * y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8, color=color)
        if baseline and baseline.get(_accuracy_column(mode)) is not None:
            ax.axhline(100 * baseline[_accuracy_column(mode)], color=color, linestyle=":", linewidth=1,
                       label=f"zero-shot baseline, {mode}")
    pool = [(r["round"], r["pool_accuracy"]) for r in trained if r["pool_accuracy"] is not None]
    if pool:
        xs, ys = zip(*pool)
        ax.plot(xs, [100 * y for y in ys], marker="s", linestyle="--", color="grey",
                label="training pool exam (sampled)")
    _round_axis(ax, [r["round"] for r in data.rounds])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy per round (round -1 = untrained student)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def plot_mistakes(data: ReportData) -> bytes:
    fig, axes = _figure("mistakes", 1, 2)
    left, right = axes[0]
    trained = [r for r in data.rounds if r["round"] >= 0]
    xs = [r["round"] for r in trained]
    width = 0.38
    left.bar([x - width / 2 for x in xs], [r["mistakes"] or 0 for r in trained], width, label="mistakes found")
    left.bar([x + width / 2 for x in xs], [r["rationales_accepted"] or 0 for r in trained], width,
             label="rationales accepted")
    _round_axis(left, xs)
    left.set_ylabel("questions")
    left.set_title("Training pool: mistakes and accepted rationales")
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    mode = data.modes[0]
    steps = [t for t in data.transitions if t["mode"] == mode]
    labels = [f"{t['from_round']}→{t['to_round']}" for t in steps]
    positions = list(range(len(steps)))
    right.bar(positions, [t["wrong_to_right"] for t in steps], color="tab:green", label="wrong → right")
    right.bar(positions, [-t["right_to_wrong"] for t in steps], color="tab:red", label="right → wrong")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks(positions)
    right.set_xticklabels(labels)
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("rounds compared")
    right.set_ylabel("test questions (right→wrong below 0)")
    right.set_title(f"Test transitions ({mode} mode)")
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_cost(data: ReportData) -> bytes:
    fig, axes = _figure("cost", 1, 2)
    points = []
    cost = calls = 0.0
    for r in data.rounds:
        cost += r["teacher_cost_usd"] or 0.0
        calls += r["teacher_calls"] or 0
        if r["test_accuracy"] is not None:
            points.append((r["round"], cost, calls, 100 * r["test_accuracy"]))
    for ax, index, xlabel, title in (
            (axes[0][0], 1, "cumulative teacher cost (USD)", "Test accuracy against teacher cost"),
            (axes[0][1], 2, "cumulative teacher calls", "Test accuracy against teacher calls")):
        if points:
            ax.plot([p[index] for p in points], [p[3] for p in points], marker="o")
            labels: dict[tuple[float, float], list[str]] = {}
            for p in points:  # rounds that land on the same spot share one label
                labels.setdefault((p[index], p[3]), []).append(f"r{p[0]}")
            for (x, y), names in labels.items():
                ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, -11), fontsize=8)
            top = max(p[index] for p in points)
            ax.set_xlim(0, top * 1.1 if top > 0 else 1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test accuracy (%, {data.modes[0]} mode)")
        ax.set_ylim(0, 105)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if points and points[-1][1] == 0:
        axes[0][0].text(0.5, 0.5, "teacher cost $0 (free or local teacher)", transform=axes[0][0].transAxes,
                        ha="center", va="center", fontsize=9, color="grey")
    return _png(fig)


def plot_loss(data: ReportData) -> bytes:
    terms = sorted({c["term"] for c in data.curves}, key=lambda t: (t != "total", t == "contrast", t))[:4]
    ncols = 2 if len(terms) > 1 else 1
    nrows = (len(terms) + 1) // 2 if len(terms) > 1 else 1
    fig, axes = _figure("loss", nrows, ncols)
    flat = [ax for row in axes for ax in row]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, term in zip(flat, terms):
        for i, round_ in enumerate(sorted({c["round"] for c in data.curves if c["term"] == term})):
            rows = [c for c in data.curves if c["term"] == term and c["round"] == round_]
            steps, values = [c["step"] for c in rows], [c["value"] for c in rows]
            color = colors[i % len(colors)]
            # Per-step losses jump with each batch's mix of tasks: raw steps faint, a moving average on top.
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, moving_average(values, max(1, len(values) // 12)), color=color, linewidth=1.6,
                    label=f"round {round_}")
        ax.set_title("total loss" if term == "total" else
                     "contrast loss (triplet, 1 - cosine)" if term == "contrast" else f"{term} task loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (unitless)" if term == "contrast" else "loss (nats / token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in flat[len(terms):]:
        ax.axis("off")
    if not terms:
        flat[0].text(0.5, 0.5, "no training steps recorded yet", ha="center", va="center")
        flat[0].set_title("Training loss")
    fig.suptitle("Training loss per optimizer step, one line per round (moving average; raw steps faint)")
    return _png(fig)


def plot_time(data: ReportData) -> bytes:
    fig, axes = _figure("time")
    ax = axes[0][0]
    xs = [r["round"] for r in data.rounds]
    bottom = [0.0] * len(xs)
    for phase in PHASES:
        values = [r[f"{phase}_s"] or 0.0 for r in data.rounds]
        ax.bar(xs, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    _round_axis(ax, xs)
    ax.set_ylabel("seconds")
    ax.set_title("Wall time per round, by phase")
    ax.legend(fontsize=8, ncols=4)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


PLOTS = {"accuracy": plot_accuracy, "mistakes": plot_mistakes, "cost": plot_cost, "loss": plot_loss,
         "time": plot_time}


# ----- tables ----------------------------------------------------------------------------------------
def _describe(data: ReportData) -> list[tuple[str, str]]:
    cfg = data.config
    student = cfg.get("student", {})
    teachers = ", ".join(f"{t['name']} ({t['backend']}: {t['model']})" for t in cfg.get("teacher", {}).get("teachers", []))
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
        (f"test accuracy ({data.modes[0]})",
         f"baseline {pct(baseline['test_accuracy'] if baseline else None)} → last round "
         f"{pct(last['test_accuracy'] if last else None)}; best round "
         f"{best['round'] if best else '-'} ({pct(best['test_accuracy'] if best else None)})"),
        ("teacher", f"{calls} calls, {usd(cost)}"),
        ("time", f"{seconds:.0f} s in rounds"),
    ]


def _accuracy_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    head = ["round", "kind"] + [f"test {m}" for m in data.modes] + ["pool exam", "mistakes", "accepted rationales",
                                                                     "samples", "contrast pairs"]
    rows = [[round_label(r["round"]), r["kind"]] + [pct(r.get(_accuracy_column(m))) for m in data.modes]
            + [pct(r["pool_accuracy"]), num(r["mistakes"]), num(r["rationales_accepted"]), num(r["samples"]),
               num(r["contrast_pairs"])] for r in data.rounds]
    return head, rows


def _transition_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    head = ["rounds", "mode", "wrong → right", "right → wrong", "stayed right", "stayed wrong"]
    rows = [[f"{t['from_round']} → {t['to_round']}", t["mode"], str(t["wrong_to_right"]), str(t["right_to_wrong"]),
             str(t["stayed_right"]), str(t["stayed_wrong"])] for t in data.transitions]
    return head, rows


def _cost_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    head = ["round", "teacher", "strategy", "calls", "failed", "rationales", "accepted", "rejections", "cost",
            "cost / accepted"]
    rows = []
    for y in data.yield_rows:
        rejections = ", ".join(f"{k}: {v}" for k, v in sorted(dict(y["rejections"] or {}).items())) or "-"
        rows.append([str(y["round"]), y["teacher"], y["strategy"] or "-", str(y["calls"]), str(y["failed_calls"]),
                     str(y["rationales"]), str(y["accepted"]), rejections, usd(y["cost_usd"]),
                     usd(y["cost_per_accepted_usd"])])
    return head, rows


def _time_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    head = ["round"] + [f"{p} (s)" for p in PHASES] + ["round (s)", "teacher calls", "cache hits", "cost"]
    rows = [[round_label(r["round"])] + [num(r[f"{p}_s"]) for p in PHASES]
            + [num(r["round_s"]), num(r["teacher_calls"]), num(r["cache_hits"]), usd(r["teacher_cost_usd"])]
            for r in data.rounds]
    return head, rows


def _after_text(example: dict[str, Any]) -> str:
    if example["after_round"] is None:
        return "not examined again (no later round yet)"
    right = round(example["after_share"] * example["after_samples"])
    return (f"round {example['after_round']} exam: {right}/{example['after_samples']} samples right; "
            f"shown: answer {example['after_answer']!s}")


# ----- writers ---------------------------------------------------------------------------------------
def _md_table(head: list[str], rows: list[list[str]]) -> str:
    escape = lambda c: c.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) if rows else "(no rows yet)"


def _md_block(text: str | None) -> str:
    return "```text\n" + ((text or "").strip() or "(empty output)").replace("```", "'''") + "\n```"


def render_markdown(data: ReportData, images: dict[str, str]) -> str:
    out = [f"# tutorloop report: {data.run['name']}", ""]
    out += [f"- **{k}**: {v}" for k, v in _describe(data)]
    sections = [
        ("Accuracy per round", "accuracy", _accuracy_table(data),
         "Round -1 is the untrained student (zero-shot baseline); round 0 trains on the teacher's rationales for "
         "the whole pool; later rounds train on the teacher's corrections of the student's mistakes."),
        ("Mistakes and transitions", "mistakes", _transition_table(data),
         "Test questions that changed between consecutive evaluated rounds."),
        ("Teacher cost against accuracy", "cost", _cost_table(data), "What each teacher and strategy yielded."),
        ("Training loss", "loss", None, ""),
        ("Time per phase", "time", _time_table(data), ""),
    ]
    for title, image, table, note in sections:
        out += ["", f"## {title}", ""]
        if note:
            out += [note, ""]
        out += [f"![{title}]({images[image]})", ""]
        if table:
            out += [_md_table(*table)]
    out += ["", "## Examples of tailored feedback", ""]
    if not data.examples:
        out += ["No accepted tailored corrections yet (they start in round 1)."]
    for ex in data.examples:
        out += [f"### Round {ex['round']}, question {ex['example_id']} (teacher {ex['teacher']})", "",
                f"**Question** (gold answer {ex['gold']}):", _md_block(ex["question"]), "",
                f"**Student's wrong rationale** (answer {ex['wrong_answer']!s}):", _md_block(ex["wrong_output"]), "",
                "**Teacher's feedback:**", _md_block(ex["feedback"]), "",
                f"**Teacher's correction** (answer {ex['teacher_answer']!s}):", _md_block(ex["correction"]), "",
                f"**After training:** {_after_text(ex)}", _md_block(ex["after_output"]) if ex["after_output"] else "",
                ""]
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
        return "<p class='note'>(no rows yet)</p>"
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _pre(text: str | None, css: str = "") -> str:
    return f"<pre class='{css}'>{html.escape((text or '').strip() or '(empty output)')}</pre>"


def render_html(data: ReportData, pngs: dict[str, bytes]) -> str:
    esc = html.escape
    image = lambda name, alt: (f"<img alt='{esc(alt)}' src='data:image/png;base64,"  # noqa: E731
                               f"{base64.b64encode(pngs[name]).decode()}'>")
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _describe(data))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>tutorloop report: "
             f"{esc(data.run['name'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>tutorloop report: {esc(data.run['name'])}</h1><dl class='facts'>{facts}</dl>",
             "<h2>Accuracy per round</h2><p class='note'>Round -1 is the untrained student (zero-shot baseline); "
             "round 0 trains on the teacher's rationales for the whole pool; later rounds train on the teacher's "
             "corrections of the student's mistakes.</p>",
             image("accuracy", "accuracy per round"), _html_table(*_accuracy_table(data)),
             "<h2>Mistakes and transitions</h2>", image("mistakes", "mistakes and transitions"),
             _html_table(*_transition_table(data)),
             "<h2>Teacher cost against accuracy</h2>", image("cost", "accuracy against teacher cost"),
             _html_table(*_cost_table(data)),
             "<h2>Training loss</h2>", image("loss", "training loss curves"),
             "<h2>Time per phase</h2>", image("time", "time per phase"), _html_table(*_time_table(data)),
             "<h2>Examples of tailored feedback</h2>"]
    if not data.examples:
        parts.append("<p class='note'>No accepted tailored corrections yet (they start in round 1).</p>")
    for ex in data.examples:
        after_css = "" if ex["after_round"] is None else "right" if ex["after_share"] > 0 else "wrong"
        parts.append(
            f"<div class='example'><h3>Round {ex['round']}, question {esc(ex['example_id'])} "
            f"(teacher {esc(ex['teacher'])})</h3>"
            f"<b>Question</b> (gold answer {esc(str(ex['gold']))}){_pre(ex['question'])}"
            f"<b>Student's wrong rationale</b> (answer {esc(str(ex['wrong_answer']))}){_pre(ex['wrong_output'], 'wrong')}"
            f"<b>Teacher's feedback</b>{_pre(ex['feedback'])}"
            f"<b>Teacher's correction</b> (answer {esc(str(ex['teacher_answer']))}){_pre(ex['correction'], 'right')}"
            f"<b>After training</b>: {esc(_after_text(ex))}"
            + (_pre(ex["after_output"], after_css) if ex["after_output"] else "") + "</div>")
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
