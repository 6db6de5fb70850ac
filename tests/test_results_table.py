"""scripts/results_table.py: the rows RESULTS.md's generated table gets from experiment folders, and the marker
replacement that leaves the hand-written rest of the page alone."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml
from shared_run import REPO, shared_quick_run

from tutorloop.loop.experiment import run_experiment
from tutorloop.loop.experiment_report import SeedComparison
from tutorloop.loop.experiment_spec import Comparison

_spec = importlib.util.spec_from_file_location("results_table", REPO / "scripts" / "results_table.py")
results_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_table)

PAGE = (
    f"# Results\n\nhand-written table\n\n{results_table.START}\nold row\n{results_table.END}\n\n## What is not shown\n"
)


def test_row_gives_seeds_difference_interval_p_and_verdict() -> None:
    result = SeedComparison(
        Comparison(a="random", b="tailored", round=2),
        accuracy_a={0: 0.50, 1: 0.60, 2: 0.55},
        accuracy_b={0: 0.56, 1: 0.64, 2: 0.60},
        mean_difference=0.05,
        t_interval=(-0.004, 0.104),
        interval=(0.012, 0.081),
        p_value=0.0123,
        holm_p=0.0246,
    )
    row = results_table.comparison_row("exact-balanced", result, alpha=0.05)
    assert row == [
        "exact-balanced",
        "primary: round 2, test accuracy",
        "tailored vs random",
        "3 (0, 1, 2)",
        "+5.0 pp",
        "[-0.4 pp, +10.4 pp]",
        "[+1.2 pp, +8.1 pp]",
        "0.0123",
        "yes (Holm p 0.0246, alpha 0.05)",
    ]
    result.holm_p = 0.06
    assert results_table.comparison_row("x", result, alpha=0.05)[-1] == "no (Holm p 0.06, alpha 0.05)"
    against_round_0 = SeedComparison(Comparison(a="prefix", a_round=0, b="tailored", round=2))
    assert results_table.comparison_row("x", against_round_0, alpha=0.05, role="secondary")[1:3] == [
        "secondary: round 2, test accuracy",
        "tailored vs prefix round 0",
    ]


def test_row_says_n_a_where_no_number_over_seeds_exists() -> None:
    one_seed = SeedComparison(
        Comparison(a="random", b="tailored", round=1),
        accuracy_a={0: 0.5},
        accuracy_b={0: 0.6},
        mean_difference=0.1,
        interval=(0.0, 0.2),
    )
    row = results_table.comparison_row("x", one_seed, alpha=0.05)
    assert row[3] == "1 (0)" and row[5] == "n/a" and row[7] == "n/a (needs two seeds)" and row[8] == "n/a"
    none_graded = SeedComparison(Comparison(a="random", b="tailored", round=1))
    assert results_table.comparison_row("x", none_graded, alpha=0.05)[3:] == ["0"] + ["n/a"] * 4 + [
        "n/a (no seed graded)"
    ]


def test_markers_replaced_and_the_rest_kept() -> None:
    once = results_table.replace_between_markers(PAGE, "| new | row |")
    assert "old row" not in once and "| new | row |" in once
    assert once.startswith("# Results\n\nhand-written table\n\n") and once.endswith("\n\n## What is not shown\n")
    assert results_table.replace_between_markers(once, "| new | row |") == once  # idempotent
    with pytest.raises(ValueError, match=r"^page.md: expected the markers"):
        results_table.replace_between_markers("no markers here", "x", "page.md")
    with pytest.raises(ValueError, match="in that order"):
        results_table.replace_between_markers(f"{results_table.END}\n{results_table.START}", "x", "page.md")


def test_real_experiment_folder_fills_the_page(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A real experiment folder (frozen plan, run index, run stores) whose runs are copies of the shared quick
    run: both arms answer alike, so the primary difference over the two seeds is zero and not significant; the
    secondary (tailored round 1 against round 0) follows it."""
    shared = shared_quick_run(tmp_path_factory)
    spec = yaml.safe_load((REPO / "configs" / "experiments" / "quick.yaml").read_text())
    spec["base"] = str(REPO / "configs" / "quick.yaml")
    spec_path = tmp_path / "quick.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    directory = tmp_path / "quick-experiment"

    def copy_shared_run(experiment: object, run: object) -> int:
        shutil.copytree(shared, experiment.run_dir(run))
        return 0

    assert run_experiment(spec_path, directory, executor=copy_shared_run) == 0
    page = tmp_path / "RESULTS.md"
    page.write_text(PAGE)
    assert results_table.main([str(directory), "--results", str(page)]) == 0
    text = page.read_text()
    primary, secondary = [line for line in text.splitlines() if line.startswith("| quick-experiment")]
    assert primary == (
        "| quick-experiment | primary: round 1, test accuracy | tailored vs random | 2 (0, 1) | +0.0 pp | "
        "[+0.0 pp, +0.0 pp] | [+0.0 pp, +0.0 pp] | 1 | no (Holm p 1, alpha 0.05) |"
    )
    assert secondary.startswith(
        "| quick-experiment | secondary: round 1, test accuracy | tailored vs prefix round 0 | 2 (0, 1) |"
    )
    assert "old row" not in text and "hand-written table" in text and "Generated by" in text
    assert results_table.main([str(tmp_path / "nothing-here"), "--results", str(page)]) == 2
