"""`tutorloop report` and `tutorloop compare` on a real quick-config run: the files, the embedded images
(real PNGs of the promised size, not blank), the numbers against the history, the tailored examples;
and a slow check that headless Chromium renders the page to a screenshot that is not blank."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image
from shared_run import cli, shared_quick_run
from test_history import build_history

from tutorloop.loop.formatting import percent
from tutorloop.loop.report_charts import DPI, FIGURES
from tutorloop.store.query import fetch_rows

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = shared_quick_run(tmp_path_factory)
    result = cli("report", str(run_dir), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "report.html" in result.stdout
    return run_dir


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def assert_real_image(png: bytes, size: tuple[int, int]) -> None:
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes every pixel: a truncated file fails here
    assert image.format == "PNG" and image.size == size
    colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "image is (nearly) one colour"
    white = sum(count for count, color in colors if color == (255, 255, 255))
    assert white < 0.97 * size[0] * size[1], "image is almost all white"


def test_report_html_embeds_every_plot(reported: Path) -> None:
    page = (reported / "report.html").read_text()
    pngs = embedded_pngs(page)
    assert len(pngs) == len(FIGURES)
    for png, (width, height) in zip(pngs, FIGURES.values()):
        assert_real_image(png, (round(width * DPI), round(height * DPI)))
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert "<script" not in page and "<link" not in page


def test_report_numbers_match_the_history(reported: Path) -> None:
    rounds = fetch_rows(reported, "SELECT * FROM round_summary ORDER BY round")
    assert [r["round"] for r in rounds] == [-1, 0, 1, 2]
    markdown = (reported / "report.md").read_text()
    for title in (
        "Accuracy per round",
        "Mistakes and transitions",
        "Teacher cost against accuracy",
        "Training loss",
        "Time per phase",
        "Examples of tailored feedback",
    ):
        assert f"## {title}" in markdown
    rows = {
        line.split("|")[1].strip().split()[0]: [c.strip() for c in line.split("|")[1:-1]]
        for line in markdown.splitlines()
        if re.match(r"\| -?\d( \w+)? \| (baseline|core|tailored) \|", line)
    }
    for r in rounds:
        row = rows[str(r["round"])]
        assert row[2] == percent(r["test_accuracy_explain"]) and row[3] == percent(r["test_accuracy_answer"])
        assert row[4] == percent(r["pool_accuracy"])
    transitions = fetch_rows(reported, "SELECT * FROM transitions WHERE mode = 'explain' ORDER BY from_round")
    for t in transitions:
        assert (
            f"| {t['from_round']} → {t['to_round']} | explain | {t['wrong_to_right']} | {t['right_to_wrong']} | "
            f"{t['stayed_right']} | {t['stayed_wrong']} |"
        ) in markdown
    for name in FIGURES:
        png = (reported / "report" / f"{name}.png").read_bytes()
        assert f"(report/{name}.png)" in markdown
        assert_real_image(png, (round(FIGURES[name][0] * DPI), round(FIGURES[name][1] * DPI)))
    assert (
        f"baseline {percent(rounds[0]['test_accuracy'])} → last round {percent(rounds[-1]['test_accuracy'])}"
        in markdown
    )


def test_report_rounds_table_tests_each_round_against_round_0_and_the_previous(reported: Path) -> None:
    markdown = (reported / "report.md").read_text()
    assert "| vs round 0 | vs previous round |" in markdown
    cells = {
        line.split("|")[1].strip().split()[0]: [c.strip() for c in line.split("|")[-3:-1]]
        for line in markdown.splitlines()
        if re.match(r"\| -?\d( \w+)? \| (baseline|core|tailored) \|", line)
    }
    flags = {}
    for row in fetch_rows(
        reported, "SELECT round, example_id, correct FROM question_history WHERE phase = 'eval' AND mode = 'explain'"
    ):
        flags.setdefault(row["round"], {})[row["example_id"]] = row["correct"]

    def by_hand(earlier: int, later: int) -> tuple[str, str]:
        gained = sum(1 for q, ok in flags[later].items() if ok and not flags[earlier][q])
        lost = sum(1 for q, ok in flags[later].items() if not ok and flags[earlier][q])
        n, k = gained + lost, min(gained, lost)
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
        return f"{100 * (gained - lost) / len(flags[later]):+.1f} pts", f"p={p:.3g}"

    assert cells["-1"] == ["-", "-"]
    assert cells["0"][0] == "-"
    for round_, column, earlier in ((0, 1, -1), (1, 0, 0), (1, 1, 0), (2, 0, 0), (2, 1, 1)):
        difference, p = by_hand(earlier, round_)
        cell = cells[str(round_)][column]
        assert cell.startswith(difference + ", 95% interval [") and f"({p})" in cell
        assert ("significant at 0.05" in cell) != ("not significant" in cell)


def test_report_shows_tailored_feedback_with_the_answer_after_training(reported: Path) -> None:
    page = (reported / "report.html").read_text()
    shown = re.findall(r"<h3>Round (\d+), question (\S+) \(teacher", page)
    assert shown
    for round_, example in shown:
        row = fetch_rows(
            reported,
            "SELECT r.feedback, r.rationale, e.question FROM rationales r JOIN examples e "
            "USING (example_id) WHERE r.round = ? AND r.example_id = ? AND r.accepted "
            "AND r.strategy = 'tailored'",
            [int(round_), html.unescape(example)],
        )[0]
        for text in (row["feedback"], row["rationale"], row["question"]):
            assert html.escape(text.strip()) in page
        wrong = fetch_rows(
            reported,
            "SELECT output FROM attempts WHERE phase = 'exam' AND round = ? AND "
            "example_id = ? AND NOT correct ORDER BY sample_index LIMIT 1",
            [int(round_), html.unescape(example)],
        )[0]
        assert html.escape(wrong["output"].strip() or "(empty output)") in page
    # rounds 1 and 2 are tailored, so round 1's corrections were examined again in round 2
    assert "round 2 exam:" in page and "samples right" in page


def test_compare_side_by_side(reported: Path, tmp_path: Path) -> None:
    other = build_history(tmp_path / "synthetic")
    out = cli("compare", str(reported), str(other), "--format", "json", timeout=120)
    assert out.returncode == 0, out.stderr
    table = {row["measure"]: row for row in json.loads(out.stdout)}
    rounds = fetch_rows(reported, "SELECT * FROM round_summary ORDER BY round")
    assert table["final test accuracy"]["quick"] == percent(rounds[-1]["test_accuracy"])
    assert table["baseline test accuracy"]["quick"] == percent(rounds[0]["test_accuracy"])
    for r in rounds[1:]:
        assert table[f"round {r['round']} test accuracy"]["quick"] == percent(r["test_accuracy"])
    assert table["teacher calls"]["quick"] == str(sum(r["teacher_calls"] for r in rounds))
    # the synthetic run's known numbers (tests/test_history.py)
    assert table["final test accuracy"]["synthetic"] == "50.0%"
    assert table["best test accuracy"]["synthetic"] == "50.0% (round 1)"
    assert table["round 2 test accuracy"]["synthetic"] == "-"
    assert table["teacher calls"]["synthetic"] == "8"
    assert table["teacher cost (USD)"]["synthetic"] == "0.0660"
    assert table["time in rounds (s)"]["synthetic"] == "160"
    text = cli("compare", str(reported), str(other), timeout=120)
    assert text.returncode == 0 and text.stdout.splitlines()[0].split() == ["measure", "quick", "synthetic"]


def test_report_of_a_missing_run_is_one_line(tmp_path: Path) -> None:
    out = cli("report", str(tmp_path / "nope"), timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no run history" in out.stderr


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs /usr/bin/chromium (Debian package `chromium`; `make test-all` and CI install it when run as root)",
)
def test_report_renders_in_headless_chromium(reported: Path) -> None:
    profile = Path(tempfile.mkdtemp(prefix="tutorloop-chromium-"))
    shot = profile.parent / f"{profile.name}.png"
    try:
        result = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1200,2000",
                (reported / "report.html").resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
        image = Image.open(shot).convert("RGB")
        assert image.size == (1200, 2000)
        colors = image.getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 200, "screenshot is (nearly) one colour"
        white = sum(count for count, color in colors if color == (255, 255, 255))
        assert white < 0.9 * 1200 * 2000, "screenshot is almost blank"
        # The charts are drawn: matplotlib's C0 blue is on screen...
        assert any(abs(r - 31) + abs(g - 119) + abs(b - 180) < 30 for _, (r, g, b) in colors)
        # ...and the first chart ("What the student learned") in the page's top part, its tailored rounds' bars
        # in C2 green (the next chart green is the transitions', well below 1400 px).
        top = image.crop((0, 0, 1200, 1400)).getcolors(maxcolors=1 << 20)
        assert any(abs(r - 44) + abs(g - 160) + abs(b - 44) < 30 for _, (r, g, b) in top)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        shot.unlink(missing_ok=True)
