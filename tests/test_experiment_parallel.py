"""`tutorloop experiment run --address`: the scheduler that starts as many runs at once as the Ray cluster fits
(pure functions, no Ray), and one real experiment on a ray.cluster_utils.Cluster whose two prefixes overlap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from test_experiment import write_spec

from tutorloop.loop.core.errors import RunError
from tutorloop.loop.experiment import PlannedRun, run_experiment
from tutorloop.loop.experiment_parallel import fits, ready_runs, runs_to_start
from tutorloop.store.experiment_store import ExperimentStore

PLAN = [PlannedRun(seed, arm) for seed in (0, 1) for arm in ("prefix", "tailored", "random")]
PREFIX_0, TAILORED_0, RANDOM_0, PREFIX_1, TAILORED_1, RANDOM_1 = PLAN
TWO_CPUS = {"CPU": 2.0, "GPU": 0.0}


def test_arms_wait_for_their_seeds_prefix_and_nothing_starts_twice() -> None:
    assert ready_runs(PLAN, done=set(), started=set(), match_accepted={}) == [PREFIX_0, PREFIX_1]
    assert ready_runs(PLAN, done={PREFIX_0}, started={PREFIX_0, PREFIX_1}, match_accepted={}) == [TAILORED_0, RANDOM_0]
    everything = set(PLAN)
    assert ready_runs(PLAN, done=everything, started=everything, match_accepted={}) == []


def test_an_arm_matched_in_accepted_rationales_waits_for_its_source_arm() -> None:
    matched = {"random": "tailored"}
    assert ready_runs(PLAN, done={PREFIX_0}, started={PREFIX_0}, match_accepted=matched) == [TAILORED_0, PREFIX_1]
    assert ready_runs(PLAN, done={PREFIX_0, TAILORED_0}, started={PREFIX_0, TAILORED_0}, match_accepted=matched) == [
        RANDOM_0,
        PREFIX_1,
    ]


def test_a_run_fits_beside_the_running_ones_within_the_cluster() -> None:
    capacity = {"CPU": 5.0, "GPU": 1.0}
    assert fits(TWO_CPUS, [TWO_CPUS], capacity)
    assert not fits(TWO_CPUS, [TWO_CPUS, TWO_CPUS], capacity)  # 6 CPUs asked of 5
    gpu_run = {"CPU": 1.0, "GPU": 1.0}
    assert fits(gpu_run, [TWO_CPUS], capacity) and not fits(gpu_run, [gpu_run], capacity)
    assert fits({"CPU": 2.5, "GPU": 0.0}, [{"CPU": 2.5}], capacity)  # exactly full
    assert not fits(gpu_run, [], {"CPU": 8.0})  # a cluster without GPUs


def test_runs_to_start_fill_the_cluster_in_plan_order_up_to_the_cap() -> None:
    asks = {run: TWO_CPUS for run in PLAN}
    ready = [TAILORED_0, RANDOM_0, PREFIX_1]
    assert runs_to_start(ready, asks, [], {"CPU": 4.0}, None) == [TAILORED_0, RANDOM_0]
    assert runs_to_start(ready, asks, [PREFIX_0], {"CPU": 4.0}, None) == [TAILORED_0]
    assert runs_to_start(ready, asks, [], {"CPU": 100.0}, 2) == [TAILORED_0, RANDOM_0]  # --parallel caps it
    assert runs_to_start(ready, asks, [PREFIX_0], {"CPU": 100.0}, 1) == []
    # A smaller run later in the plan fills a gap the next one in order does not fit.
    small = {**asks, PREFIX_1: {"CPU": 1.0}}
    assert runs_to_start(ready, small, [PREFIX_0], {"CPU": 3.0}, None) == [PREFIX_1]
    # Alone, a run the cluster cannot hold still starts: its own start names what the cluster lacks.
    assert runs_to_start(ready, asks, [], {"CPU": 1.0}, None) == [TAILORED_0]
    assert runs_to_start([], asks, [], {"CPU": 4.0}, None) == []


def test_parallel_needs_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(RunError, match=r"--parallel: needs a Ray cluster \(--address or RAY_ADDRESS\)"):
        run_experiment(write_spec(tmp_path), tmp_path / "exp", parallel=2)
    with pytest.raises(RunError, match="--parallel: expected a number of runs of at least 1, got 0"):
        run_experiment(write_spec(tmp_path), tmp_path / "exp", address="127.0.0.1:1", parallel=0)
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_two_seeds_prefixes_run_at_once_on_a_cluster(tmp_path: Path) -> None:
    """A cluster with CPUs for two quick runs (a head without resources, one worker node): each seed's prefix
    starts at once, each as its own driver process; every run finishes and the driver's index says so."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    quick = yaml.safe_load(write_spec(tmp_path).read_text())
    smaller = [
        "data.synthetic.train_size=24",
        "data.synthetic.test_size=12",
        "training.epochs=1",
        "student.eval_modes=[explain]",
        "ray.torch_threads=1",
    ]
    spec = write_spec(tmp_path, overrides=[*quick["overrides"], *smaller])
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=5)  # a quick run asks 2.25 CPUs: two at once, not three
        nodes.wait_for_nodes()
        directory = tmp_path / "exp"
        assert run_experiment(spec, directory, address=nodes.address) == 0
    finally:
        nodes.shutdown()

    runs = {(r["seed"], r["arm"]): r for r in ExperimentStore(directory).runs()}
    assert len(runs) == 6 and all(r["status"] == "finished" for r in runs.values())
    first, second = runs[(0, "prefix")], runs[(1, "prefix")]
    assert second["started_at"] < first["finished_at"] and first["started_at"] < second["finished_at"]
    assert all((directory / r["run_dir"] / "driver.log").is_file() for r in runs.values())
