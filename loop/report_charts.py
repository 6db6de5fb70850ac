"""The report's plots: matplotlib PNGs at a fixed pixel size (FIGURES x DPI)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy import stats  # noqa: E402

from tutorloop.loop.report_data import PHASES, ReportData, accuracy_column, round_label  # noqa: E402

DPI = 100
# Figure sizes in inches; a PNG is exactly (width * DPI) x (height * DPI) pixels.
FIGURES: dict[str, tuple[float, float]] = {
    "learning": (9.0, 4.2),
    "accuracy": (9.0, 4.8),
    "mistakes": (9.0, 4.2),
    "cost": (9.0, 4.2),
    "loss": (9.0, 6.0),
    "time": (9.0, 3.8),
}


def _figure(name: str, nrows: int = 1, ncols: int = 1):
    fig, axes = plt.subplots(nrows, ncols, figsize=FIGURES[name], dpi=DPI, squeeze=False)
    return fig, axes


def figure_png(fig) -> bytes:
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


def _wilson(right: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a share, in percent."""
    interval = stats.binomtest(right, n).proportion_ci(method="wilson")
    return 100 * interval.low, 100 * interval.high


def _bars_with_intervals(ax, labels: list[str], counts: list[tuple[int, int]], colors: list[str]) -> None:
    """One bar per (right, n) with its Wilson interval and an "NN% (right/n)" label above."""
    xs = list(range(len(counts)))
    shares = [100 * right / n if n else 0.0 for right, n in counts]
    intervals = [_wilson(right, n) if n else (0.0, 0.0) for right, n in counts]
    errors = [
        [s - low for s, (low, _) in zip(shares, intervals)],
        [high - s for s, (_, high) in zip(shares, intervals)],
    ]
    ax.bar(xs, shares, color=colors, yerr=errors, capsize=4, ecolor="#444")
    for x, share, (right, n), (_, high) in zip(xs, shares, counts, intervals):
        ax.annotate(f"{share:.0f}% ({right}/{n})", (x, high), textcoords="offset points", xytext=(0, 4), ha="center")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_ylim(0, 112)
    ax.grid(axis="y", alpha=0.3)


def plot_learning(data: ReportData) -> bytes:
    """At a glance: test accuracy of each evaluated round (95% intervals, McNemar p against the round before)
    and, where a tailored round rechecked its pool mistakes, the taught ones now right against the untaught."""
    panels = 2 if data.mechanisms else 1
    fig, axes = _figure("learning", 1, panels)
    ax = axes[0][0]
    rounds = sorted(data.test_counts)
    counts = [data.test_counts[r] for r in rounds]
    colors = ["#9e9e9e" if r < 0 else "#1f77b4" if r == 0 else "#2ca02c" for r in rounds]
    labels = [
        "untrained\n(round -1)" if r < 0 else "round 0\n(core)" if r == 0 else f"round {r}\n(tailored)" for r in rounds
    ]
    _bars_with_intervals(ax, labels, counts, colors)
    for x, round_ in enumerate(rounds[1:], start=1):
        previous = data.round_tests.get(round_, (None, None))[1]
        if previous is not None:
            ax.annotate(f"McNemar\np={previous.p_value:.2g}", (x - 0.5, 100), ha="center", fontsize=8, color="#555")
    mode = data.modes[0] if data.modes else "explain"
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy by round ({mode} mode)", fontsize=10)
    if data.mechanisms:
        right = axes[0][1]
        labels, pairs, shades = [], [], []
        for m in data.mechanisms:
            labels += [f"round {m.round}\ntaught", f"round {m.round}\nnot taught"]
            pairs += [(m.taught_right, m.taught), (m.untaught_right, m.untaught)]
            shades += ["#2ca02c", "#bdbdbd"]
        _bars_with_intervals(right, labels, pairs, shades)
        right.set_ylabel("pool mistakes now right (%)")
        right.set_title("Pool mistakes after the round: taught vs not", fontsize=10)
    return figure_png(fig)


def plot_accuracy(data: ReportData) -> bytes:
    fig, axes = _figure("accuracy")
    ax = axes[0][0]
    trained = [r for r in data.rounds if r["round"] >= 0]
    baseline = next((r for r in data.rounds if r["round"] < 0), None)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, mode in enumerate(data.modes):
        color = colors[i % len(colors)]
        points = [
            (r["round"], r[accuracy_column(mode)]) for r in data.rounds if r.get(accuracy_column(mode)) is not None
        ]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], marker="o", color=color, label=f"test, {mode} mode")
            for x, y in points:
                ax.annotate(
                    f"{100 * y:.0f}",
                    (x, 100 * y),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                    color=color,
                )
        if baseline and baseline.get(accuracy_column(mode)) is not None:
            ax.axhline(
                100 * baseline[accuracy_column(mode)],
                color=color,
                linestyle=":",
                linewidth=1,
                label=f"zero-shot baseline, {mode}",
            )
    pool = [(r["round"], r["pool_accuracy"]) for r in trained if r["pool_accuracy"] is not None]
    if pool:
        xs, ys = zip(*pool)
        ax.plot(
            xs, [100 * y for y in ys], marker="s", linestyle="--", color="grey", label="training pool exam (sampled)"
        )
    _round_axis(ax, [r["round"] for r in data.rounds])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy per round (round -1 = untrained student)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return figure_png(fig)


def plot_mistakes(data: ReportData) -> bytes:
    fig, axes = _figure("mistakes", 1, 2)
    left, right = axes[0]
    trained = [r for r in data.rounds if r["round"] >= 0]
    xs = [r["round"] for r in trained]
    width = 0.38
    left.bar([x - width / 2 for x in xs], [r["mistakes"] or 0 for r in trained], width, label="mistakes found")
    left.bar(
        [x + width / 2 for x in xs],
        [r["rationales_accepted"] or 0 for r in trained],
        width,
        label="rationales accepted",
    )
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
    return figure_png(fig)


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
        (axes[0][1], 2, "cumulative teacher calls", "Test accuracy against teacher calls"),
    ):
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
        axes[0][0].text(
            0.5,
            0.5,
            "teacher cost $0 (free or local teacher)",
            transform=axes[0][0].transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="grey",
        )
    return figure_png(fig)


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
            ax.plot(
                steps,
                moving_average(values, max(1, len(values) // 12)),
                color=color,
                linewidth=1.6,
                label=f"round {round_}",
            )
        ax.set_title(
            "total loss"
            if term == "total"
            else "contrast loss (triplet, 1 - cosine)"
            if term == "contrast"
            else f"{term} task loss"
        )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (unitless)" if term == "contrast" else "loss (nats / token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in flat[len(terms) :]:
        ax.axis("off")
    if not terms:
        flat[0].text(0.5, 0.5, "no training steps recorded yet", ha="center", va="center")
        flat[0].set_title("Training loss")
    fig.suptitle("Training loss per optimizer step, one line per round (moving average; raw steps faint)")
    return figure_png(fig)


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
    return figure_png(fig)


PLOTS = {
    "learning": plot_learning,
    "accuracy": plot_accuracy,
    "mistakes": plot_mistakes,
    "cost": plot_cost,
    "loss": plot_loss,
    "time": plot_time,
}
