"""The end of `tutorloop run`: what the run shows, from its own paired tests, and the recheck behind the
mechanism line (a tailored round's pool mistakes examined again after it trains)."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_run import CONSOLE, shared_quick_run

from tutorloop.loop.report import render_markdown
from tutorloop.loop.report_charts import PLOTS, plot_learning
from tutorloop.loop.report_data import load_report_data
from tutorloop.loop.takeaway import fisher_p, mechanism_counts, one_answer_note, round_mechanism, takeaway
from tutorloop.store.query import fetch_rows, history_path


def test_mechanism_counts_split_the_rechecked_mistakes_by_taught() -> None:
    recheck = {"a": True, "b": False, "c": True, "d": False, "e": False}
    assert mechanism_counts(recheck, taught_ids={"a", "b", "z"}) == (2, 1, 3, 1)


def test_fisher_p_matches_hand_values() -> None:
    # 5 of 6 taught right against 1 of 6 untaught: hypergeometric, two-sided = 2 * (C(6,5)C(6,1) + C(6,6)C(6,0))
    # / C(12,6) = 2 * 37 / 924
    assert fisher_p(6, 5, 6, 1) == pytest.approx(74 / 924, rel=1e-9)
    assert fisher_p(4, 2, 4, 2) == pytest.approx(1.0)
    assert fisher_p(0, 0, 5, 3) == 1.0  # nothing taught: no evidence either way


def test_a_round_that_gives_one_answer_is_compared_with_the_commonest_gold_answer() -> None:
    golds = ["no"] * 32 + ["yes"] * 28
    note = one_answer_note(0, ["yes"] * 58 + ["no", ""], golds)
    assert note is not None and "'yes' to 58 of 60" in note and "always answering 'no'" in note and "53.3%" in note
    assert one_answer_note(0, ["yes"] * 40 + ["no"] * 20, golds) is None  # 2 in 3 is still answering questions
    assert one_answer_note(0, [], []) is None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_quick_run(tmp_path_factory)


def test_tailored_rounds_recheck_their_mistakes_after_training(quick_run: Path) -> None:
    path = history_path(quick_run)
    for round_ in (1, 2):
        mistakes = {
            r["example_id"]
            for r in fetch_rows(
                path,
                f"SELECT example_id FROM attempts WHERE round = {round_} AND phase = 'exam' "
                "GROUP BY example_id HAVING NOT bool_and(correct)",
            )
        }
        rechecked = fetch_rows(
            path,
            f"SELECT example_id, split, sample_index FROM attempts WHERE round = {round_} AND phase = 'recheck'",
        )
        assert mistakes and {r["example_id"] for r in rechecked} == mistakes
        assert {(r["split"], r["sample_index"]) for r in rechecked} == {("train", 0)}  # greedy, on the pool
        # counted in the eval phase's progress, which ends at its total
        (phase,) = fetch_rows(path, f"SELECT progress, total FROM phases WHERE round = {round_} AND name = 'eval'")
        assert phase["progress"] == phase["total"] == 24 * 2 + len(mistakes)  # two eval modes
        mechanism = round_mechanism(quick_run, round_)
        taught = {
            r["example_id"]
            for r in fetch_rows(path, f"SELECT example_id FROM rationales WHERE round = {round_} AND accepted")
        }
        assert mechanism is not None and mechanism.taught == len(mistakes & taught)
        assert mechanism.taught + mechanism.untaught == len(mistakes)


def test_the_console_ends_with_what_the_run_shows(quick_run: Path) -> None:
    console = (quick_run.parent / CONSOLE).read_text()
    shown = takeaway(quick_run)
    assert shown and shown in console
    assert console.index("What this run shows") < console.index("Try:")  # before the queries to try
    assert "round 0 vs the untrained student" in shown and "McNemar p =" in shown
    assert "tailored round 2 vs round 0" in shown
    assert shown.count("what tailoring did in round") == 2 and "Fisher p =" in shown


def test_the_report_opens_with_what_the_student_learned(quick_run: Path) -> None:
    data = load_report_data(quick_run)
    assert data.takeaway == takeaway(quick_run)
    assert [m.round for m in data.mechanisms] == [1, 2]  # the chart's right panel
    right, questions = data.test_counts[0]
    assert questions == 24 and 0 <= right <= questions
    markdown = render_markdown(data, {name: f"report/{name}.png" for name in PLOTS})
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[0] == "## What the student learned"
    first = markdown.split("## What the student learned", 1)[1].split("\n## ", 1)[0]
    assert data.takeaway.splitlines()[1].strip() in first and "(report/learning.png)" in first
    assert plot_learning(data)[:8] == b"\x89PNG\r\n\x1a\n"
