"""`data.val_size`: a validation split carved from the pool by a seeded draw, never taught, evaluated each
round like the test split (split 'val' in attempts and metrics)."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_run import cli

from tutorloop.loop.core.config import Config, load_config
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.planner import load_pool
from tutorloop.store.query import fetch_rows

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quick.yaml"


def test_val_split_is_a_seeded_draw_disjoint_from_pool_and_test() -> None:
    without = load_pool(load_config(QUICK))
    with_val = load_pool(load_config(QUICK, ["data.val_size=16"]))
    val_ids = {e.id for e in with_val.val}
    pool_ids, test_ids = {e.id for e in with_val.pool}, {e.id for e in with_val.test}
    assert len(val_ids) == 16 and all(e.split == "val" for e in with_val.val)
    assert not val_ids & pool_ids and not val_ids & test_ids
    # Carved from the pool: together they are the pool without a validation split, in its order.
    assert val_ids | pool_ids == {e.id for e in without.pool}
    assert [e.id for e in with_val.pool] == [e.id for e in without.pool if e.id not in val_ids]
    assert without.val == [] and with_val.test == without.test
    # Deterministic: the same draw every time, and for every run seed (all seeds tune on the same questions).
    again = load_pool(load_config(QUICK, ["data.val_size=16", "run.seed=7"]))
    assert [e.id for e in again.val] == [e.id for e in with_val.val]
    assert {e.id for e in load_pool(load_config(QUICK, ["data.val_size=8"])).val} < val_ids  # a prefix of a larger draw


def test_val_size_is_a_later_key_and_must_leave_a_pool() -> None:
    assert "val_size" not in Config().to_dict()["data"]  # old runs keep their config fingerprint
    assert load_config(QUICK, ["data.val_size=4"]).to_dict()["data"]["val_size"] == 4
    with pytest.raises(ConfigError, match=r"data.val_size: 128 leaves no training pool \(the pool has 128"):
        load_pool(load_config(QUICK, ["data.val_size=128"]))


def test_a_real_run_evaluates_val_and_never_teaches_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "val-run"
    result = cli(
        "run",
        str(QUICK),
        "--run-dir",
        str(run_dir),
        *("--set", "data.val_size=8", "--set", "data.synthetic.train_size=32"),
        *("--set", "data.synthetic.test_size=12", "--set", "run.rounds=1", "--set", "run.baseline=false"),
        *("--set", "training.epochs=1", "--set", "run.report=false", "--set", "student.eval_modes=[explain]"),
        *("--set", "student.generation.num_samples=1", "--set", "training.max_mistakes=8"),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| val 8" in result.stdout
    val_ids = {r["example_id"] for r in fetch_rows(run_dir, "SELECT example_id FROM examples WHERE split = 'val'")}
    assert len(val_ids) == 8
    evaluated = fetch_rows(
        run_dir, "SELECT round, count(DISTINCT example_id) AS n FROM attempts WHERE split = 'val' GROUP BY round"
    )
    assert sorted((r["round"], r["n"]) for r in evaluated) == [(0, 8), (1, 8)]
    assert not fetch_rows(run_dir, "SELECT * FROM attempts WHERE split = 'val' AND phase <> 'eval'")
    summary = fetch_rows(run_dir, "SELECT round, test_accuracy, val_accuracy FROM round_summary ORDER BY round")
    assert all(r["val_accuracy"] is not None and r["test_accuracy"] is not None for r in summary)
    # Never taught: no exam, teacher call, rationale, sample or contrast pair names a validation question.
    for table in ("teacher_calls", "rationales", "samples", "contrast_pairs"):
        taught = {r["example_id"] for r in fetch_rows(run_dir, f"SELECT DISTINCT example_id FROM {table}")}
        assert not taught & val_ids, table
    examined = fetch_rows(run_dir, "SELECT DISTINCT example_id FROM attempts WHERE phase = 'exam'")
    assert examined and not {r["example_id"] for r in examined} & val_ids
