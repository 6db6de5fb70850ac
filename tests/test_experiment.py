"""`tutorloop experiment`: the spec, the frozen plan and its amendments, the statistics over seeds, and one
real quick experiment (two arms x two seeds on the tiny model) from `experiment run` to `experiment report`."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats
from shared_run import cli
from test_resume_kill import kill_tree, reached, start

from tutorloop.loop.core.errors import ConfigError, RunError
from tutorloop.loop.experiment import run_experiment
from tutorloop.loop.experiment_report import experiment_markdown, holm, two_level_bootstrap
from tutorloop.loop.experiment_spec import base_config, check_against_base, load_spec
from tutorloop.loop.paired_stats import mcnemar_exact, paired_t_over_seeds
from tutorloop.store.experiment_store import ExperimentStore
from tutorloop.store.query import fetch_rows

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "experiments" / "quick.yaml"


def write_spec(tmp_path: Path, name: str = "spec.yaml", **changes: object) -> Path:
    spec = yaml.safe_load(QUICK.read_text())
    spec["base"] = str(REPO / "configs" / "quick.yaml")
    spec.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def no_runs(log: list) -> object:
    """An executor that records the planned runs instead of running them."""
    return lambda experiment, run: log.append((run.seed, run.arm)) or 0


# ----- the spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": [0, 0]}, "key 'seeds': each seed once"),
        ({"arms": {"tailored": []}}, "key 'arms'"),
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"analysis": {"primary": {"a": "random", "b": "nope", "round": 1}}}, "key 'analysis.primary.b'"),
        ({"analysis": {"primary": {"a": "random", "b": "tailored", "round": 0}}}, "key 'analysis.primary.round'"),
        (
            {"analysis": {"primary": {"a": "random", "b": "tailored", "round": 1, "metric": "loss"}}},
            "key 'analysis.primary.metric'",
        ),
        # The prefix is an A side only where A is read at one of its rounds.
        ({"analysis": {"primary": {"a": "prefix", "b": "tailored", "round": 1}}}, "key 'analysis.primary.a'"),
        (
            {"analysis": {"primary": {"a": "prefix", "a_round": 1, "b": "tailored", "round": 1}}},
            "key 'analysis.primary.a'",
        ),
        (
            {"analysis": {"primary": {"a": "tailored", "a_round": 1, "b": "tailored", "round": 1}}},
            "same arm at the same round",
        ),
    ],
)
def test_spec_errors_name_the_key(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_spec(write_spec(tmp_path, **change))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "spec_path", [QUICK, *sorted((REPO / "configs" / "experiments").glob("*_experiment.yaml"))], ids=lambda p: p.name
)
def test_every_shipped_spec_loads_and_fits_its_base(spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # specs name their base from the repository root, as `tutorloop experiment run` is run
    spec = load_spec(spec_path)
    check_against_base(spec, base_config(spec, spec_path), str(spec_path))


def test_an_unset_a_round_stays_out_of_the_frozen_plan(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    assert "a_round" not in spec.model_dump()["analysis"]["primary"]  # plans frozen before the key hash the same
    assert spec.analysis.secondary[0].model_dump()["a_round"] == 0
    assert spec.analysis.secondary[0].label() == "tailored round 1 vs prefix round 0, test accuracy"


def test_spec_checked_against_the_base_config(tmp_path: Path) -> None:
    late = {"primary": {"a": "random", "b": "tailored", "round": 5}}
    with pytest.raises(ConfigError, match=r"key 'analysis.primary.round': 5 is after the last round \(1\)"):
        run_experiment(write_spec(tmp_path, analysis=late), tmp_path / "exp", executor=no_runs([]))
    with pytest.raises(ConfigError, match=r"key 'arms.random'.*student.tiny.n_layer"):
        run_experiment(
            write_spec(tmp_path, arms={"tailored": [], "random": ["student.tiny.n_layer=4"]}),
            tmp_path / "exp",
            executor=no_runs([]),
        )
    assert not (tmp_path / "exp").exists()  # nothing frozen for a spec that cannot run


# ----- pre-registration --------------------------------------------------------------------------


def test_plan_frozen_before_runs_changed_spec_refused_and_amendment_recorded(tmp_path: Path) -> None:
    directory, ran = tmp_path / "exp", []
    spec = write_spec(tmp_path)
    assert run_experiment(spec, directory, executor=no_runs(ran)) == 0
    assert ran == [(0, "prefix"), (0, "tailored"), (0, "random"), (1, "prefix"), (1, "tailored"), (1, "random")]
    store = ExperimentStore(directory)
    plan = store.plan()
    assert all(run["started_at"] >= plan["frozen_at"] for run in store.runs())

    changed = write_spec(tmp_path, "changed.yaml", seeds=[0, 1, 2])
    with pytest.raises(RunError) as refused:
        run_experiment(changed, directory, executor=no_runs(ran))
    assert "spec.seeds" in str(refused.value) and "--amend" in str(refused.value)
    assert "\n" not in str(refused.value) and store.amendments() == []

    ran.clear()
    assert run_experiment(changed, directory, amend="a third seed for power", executor=no_runs(ran)) == 0
    assert ran == [(2, "prefix"), (2, "tailored"), (2, "random")]  # the finished runs are not redone
    [amendment] = store.amendments()
    assert amendment["changed"] == ["spec.seeds"] and amendment["reason"] == "a third seed for power"
    assert store.plan()["spec_hash"] == plan["spec_hash"]  # the original plan stays as frozen
    report = experiment_markdown(directory)
    assert "Amendments to the plan" in report and "a third seed for power" in report

    (tmp_path / "other" / "seed-0").mkdir(parents=True)  # results that would predate a plan frozen now
    with pytest.raises(RunError, match="folder exists and is not an experiment"):
        run_experiment(spec, tmp_path / "other", executor=no_runs(ran))


def test_rerun_after_a_crash_skips_finished_runs_and_resumes_the_cut_one(tmp_path: Path) -> None:
    directory, ran = tmp_path / "exp", []

    def crash_on_seed_1(experiment: object, run: object) -> int:
        ran.append((run.seed, run.arm))
        if run.seed == 1 and run.arm == "tailored":
            raise KeyboardInterrupt  # stands in for a kill in the middle of this run
        return 0

    with pytest.raises(KeyboardInterrupt):
        run_experiment(write_spec(tmp_path), directory, executor=crash_on_seed_1)
    ran.clear()
    assert run_experiment(write_spec(tmp_path), directory, executor=no_runs(ran)) == 0
    assert ran == [(1, "tailored"), (1, "random")]


def test_a_runs_own_error_is_not_replaced_by_its_cache_harvest(tmp_path: Path) -> None:
    directory = tmp_path / "exp"

    def broken_run(experiment: object, run: object) -> int:
        history = experiment.run_dir(run) / "history.duckdb"
        history.parent.mkdir(parents=True, exist_ok=True)
        history.write_text("not a DuckDB file")  # the harvest after the run cannot read it
        raise RuntimeError("the run's own failure")

    with pytest.raises(RuntimeError, match="the run's own failure"):
        run_experiment(write_spec(tmp_path), directory, executor=broken_run)


# ----- statistics ---------------------------------------------------------------------------------


def test_paired_t_over_seeds_is_scipy_and_the_hand_value() -> None:
    a, b = [0.50, 0.60, 0.55], [0.60, 0.65, 0.70]
    differences = np.subtract(b, a)  # 0.10, 0.05, 0.15: mean 0.1, sd 0.05, t = 0.1 / (0.05 / sqrt 3)
    t = 0.1 / (0.05 / np.sqrt(3))
    assert paired_t_over_seeds(a, b) == pytest.approx(2 * stats.t.sf(t, 2))
    assert paired_t_over_seeds(a, b) == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert differences.mean() == pytest.approx(0.1)
    assert paired_t_over_seeds([0.5], [0.6]) is None
    assert paired_t_over_seeds([0.5, 0.6], [0.6, 0.7]) == 0.0  # the same gain on every seed: t undefined


def test_two_level_bootstrap_carries_the_seed_noise() -> None:
    # Every question of seed 0 gains, every question of seed 1 loses: resampling questions alone would give
    # a point at 0; resampling seeds gives means -1, 0, +1 (chances 1/4, 1/2, 1/4), so the interval is [-1, 1].
    assert two_level_bootstrap([[1.0] * 20, [-1.0] * 20]) == (-1.0, 1.0)
    assert two_level_bootstrap([[0.5] * 10, [0.5] * 30]) == pytest.approx((0.5, 0.5))
    low, high = two_level_bootstrap([[1, 0, 0, 0] * 10, [1, 1, 0, 0] * 10, [1, 0, 1, 0, 0, 0] * 10])
    assert low < (0.25 + 0.5 + 1 / 3) / 3 < high and high - low < 0.5
    assert two_level_bootstrap([[1, 0, -1, 1]] * 2) == two_level_bootstrap([[1, 0, -1, 1]] * 2)  # seeded


def test_holm_against_hand_values() -> None:
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> kept monotone: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_per_seed_mcnemar_is_the_exact_binomial() -> None:
    assert mcnemar_exact(8, 1) == pytest.approx(2 * sum(stats.binom.pmf(k, 9, 0.5) for k in range(0, 2)))
    assert mcnemar_exact(0, 0) == 1.0


# ----- one real experiment ------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_experiment_killed_then_rerun_to_its_report(tmp_path: Path) -> None:
    """kill -9 in seed 0's tailored fork (round 1 training), run again: the prefix is not redone, the fork
    resumes (same run id), the rest runs; then the report prints the primary comparison over seeds."""
    directory = tmp_path / "quick-experiment"
    args = ["experiment", "run", "configs/experiments/quick.yaml", "--dir", str(directory)]
    proc = start(args)
    tailored = directory / "seed-0" / "tailored"
    deadline = time.monotonic() + 900
    while not reached(tailored, 1, "train"):
        assert proc.poll() is None and time.monotonic() < deadline, "the experiment ended before the kill point"
        time.sleep(0.5)
    kill_tree(proc)
    run_id = fetch_rows(tailored, "SELECT run_id FROM runs")[0]["run_id"]
    prefix_finished = {(r["seed"], r["arm"]): r["finished_at"] for r in ExperimentStore(directory).runs()}

    result = cli(*args, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "seed-0/prefix finished earlier; skipped" in result.stdout and "seed-0/prefix ..." not in result.stdout
    assert fetch_rows(tailored, "SELECT run_id FROM runs")[0]["run_id"] == run_id  # resumed, not forked again
    index = {(r["seed"], r["arm"]): r for r in ExperimentStore(directory).runs()}
    assert index[(0, "prefix")]["finished_at"] == prefix_finished[(0, "prefix")]
    assert all(r["status"] == "finished" for r in index.values()) and len(index) == 6

    report = cli("experiment", "report", str(directory))
    assert report.returncode == 0, report.stderr[-2000:]
    text = report.stdout
    assert text == (directory / "report.md").read_text()
    assert "## Primary: tailored vs random, round 1, test accuracy" in text
    assert re.search(
        r"Primary test, seeds as the unit \(n = 2 seeds, test split\): mean difference over seeds "
        r"[+-]\d+\.\d pp, 95% two-level bootstrap interval \[[+-]\d+\.\d pp, [+-]\d+\.\d pp\]",
        text,
    )
    assert re.search(r"Primary paired t over seeds: p = \d", text)
    # The secondary reads the prefix at round 0 and the tailored arm at round 1, seed by seed.
    assert "## Secondary 1: tailored round 1 vs prefix round 0, test accuracy" in text
    assert re.search(r"Secondary 1 test, seeds as the unit \(n = 2 seeds", text)
    # Each arm's round over both seeds: calls, accepted rationales, accuracy, and taught mistakes now right.
    for arm in ("tailored", "random"):
        assert re.search(rf"\| {arm} \| 1 \| 2 \| [\d.]+ \| [\d.]+ \| [\d.]+% \| [\d.]+% / [\d.]+% \(\d\) \|", text), (
            arm
        )
    assert "started after plan frozen" in text and "| NO |" not in text
    assert "6 of 6 runs finished" in cli("experiment", "status", str(directory)).stdout
