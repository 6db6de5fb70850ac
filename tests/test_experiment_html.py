"""The experiment report's forking-paths count (runs folder, configs only), the val/test split in the spec and
the report, and the self-contained HTML report with its plots, on fake run histories (no training)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest
import yaml
from test_experiment import write_spec

from tutorloop.loop.core.config import load_config
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.experiment import run_experiment
from tutorloop.loop.experiment_report import write_experiment_report
from tutorloop.loop.forking_paths import count_forking_paths
from tutorloop.store.schema import migrate

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quick.yaml"


def config_only_run(run_dir: Path, *overrides: str) -> dict:
    """A run folder as the count sees it: config.yaml beside a history file (never opened)."""
    run_dir.mkdir(parents=True)
    config = load_config(QUICK, list(overrides)).to_dict()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "history.duckdb").touch()
    return config


def test_forking_paths_counts_runs_and_experiments_on_the_same_test_split(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    data = config_only_run(runs / "mine" / "seed-0" / "tailored")["data"]
    (runs / "mine" / "experiment.duckdb").touch()
    config_only_run(runs / "mine" / "seed-0" / "prefix", "run.seed=3")
    config_only_run(runs / "tuned", "training.lr=0.01", "data.val_size=8")  # same test split, other choices
    config_only_run(runs / "other-exp" / "seed-1" / "random", "training.selection=random")
    (runs / "other-exp" / "experiment.duckdb").touch()
    config_only_run(runs / "bigger-test", "data.synthetic.test_size=32")  # another test split
    config_only_run(runs / "gsm", "data.task=gsm8k")
    (runs / "not-a-run").mkdir()
    (runs / "not-a-run" / "config.yaml").write_text(yaml.safe_dump({"data": data}))  # no history: not a run
    count = count_forking_paths(runs, data)
    assert (count.experiments, count.runs) == (2, 4)


def _fake_history(run_dir: Path, config: dict, correct: dict[str, bool], round_: int) -> None:
    """A history with the test examples and one graded eval round, as the report reads it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    con = duckdb.connect(str(run_dir / "history.duckdb"))
    try:
        migrate(con)
        con.execute(
            "INSERT INTO runs (run_id, name, created_at, status, config, config_hash, versions) "
            "VALUES ('r', 'fake', now(), 'finished', ?, 'h', '{}')",
            [json.dumps(config)],
        )
        for example_id, right in correct.items():
            con.execute("INSERT INTO examples VALUES (?, 'synthetic', 'test', 'q', '1', 'number', NULL)", [example_id])
            con.execute(
                "INSERT INTO attempts VALUES (?, 'eval', 'test', ?, 'explain', 0, 'o', '1', ?, 1, 1, 0)",
                [round_, example_id, right],
            )
    finally:
        con.close()


def fake_executor(experiment: object, run: object) -> int:
    """Arms graded at round 1 on 20 test questions: tailored right on more of them than random."""
    right = {"tailored": 14 + run.seed, "random": 10, "prefix": 0}[run.arm]
    correct = {f"synthetic/test/{q}": q < right for q in range(20)}
    _fake_history(experiment.run_dir(run), experiment.config, correct, 1)
    return 0


def test_experiment_report_writes_a_self_contained_html_with_the_primary_comparison(tmp_path: Path) -> None:
    directory = tmp_path / "runs" / "exp"
    assert run_experiment(write_spec(tmp_path, seeds=[0, 1, 2]), directory, executor=fake_executor) == 0
    text, md_path = write_experiment_report(directory)
    assert "Forking paths: 1 experiment(s) and 9 run(s) in " in text
    html_path = directory / "report.html"
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:|#)""", html)  # nothing fetched from elsewhere
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", html)) >= 2
    assert "Primary: tailored vs random, round 1, test accuracy" in html
    assert "+" in html and "two-level bootstrap interval" in html and "Forking paths" in html


def test_a_val_comparison_needs_a_val_split(tmp_path: Path) -> None:
    primary = {"primary": {"a": "random", "b": "tailored", "round": 1, "split": "val"}}
    with pytest.raises(ConfigError, match=r"key 'analysis.primary.split': 'val' needs data.val_size"):
        run_experiment(write_spec(tmp_path, analysis=primary), tmp_path / "exp", executor=fake_executor)
    spec = write_spec(tmp_path, "val.yaml", analysis=primary, overrides=["data.val_size=8"])
    assert run_experiment(spec, tmp_path / "exp", executor=lambda experiment, run: 0) == 0
