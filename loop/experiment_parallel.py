"""`tutorloop experiment run --address ADDR`: as many of the experiment's runs at once as the Ray cluster fits.

Each run is its own driver process, `tutorloop resume RUN_DIR --address ADDR` on a folder this driver made
ready (created, or forked from its seed's prefix), since console redirection and ray.init are per process.
Only this driver touches DIR/experiment.duckdb: it seeds a run from the shared teacher cache before starting
it and harvests the run's answers after it ends, so runs running at the same time share answers only once
one of them has ended. What fits is read once at start: each run asks for its actors' CPUs and GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tutorloop.loop.core.config import Config
from tutorloop.loop.experiment import FINISHED, Experiment, PlannedRun, harvest_run, prepare_run
from tutorloop.loop.experiment_spec import PREFIX, arm_overrides, prefix_config
from tutorloop.store.experiment_store import ExperimentStore

Resources = dict[str, float]  # "CPU", "GPU" -> amount
DRIVER_LOG = "driver.log"  # in each run's folder: what its driver process printed
POLL_S = 0.5
STOP_WAIT_S = 120  # a stopped run ends at its next safe point; killed after this long


def ready_runs(
    planned: list[PlannedRun], done: set[PlannedRun], started: set[PlannedRun], match_accepted: dict[str, str]
) -> list[PlannedRun]:
    """Planned runs not started yet that may start, in plan order: a prefix always, an arm once its seed's
    prefix is done (the arm forks it) and, for an arm matched in accepted rationales, its source arm too."""

    def waits_for(run: PlannedRun) -> list[PlannedRun]:
        if run.arm == PREFIX:
            return []
        source = match_accepted.get(run.arm)
        return [PlannedRun(run.seed, PREFIX)] + ([PlannedRun(run.seed, source)] if source else [])

    return [run for run in planned if run not in started and all(w in done for w in waits_for(run))]


def fits(ask: Resources, in_use: list[Resources], capacity: Resources) -> bool:
    """Whether `ask` fits in the cluster's `capacity` beside what the running runs use."""
    return all(
        amount + sum(used.get(key, 0.0) for used in in_use) <= capacity.get(key, 0.0) + 1e-9
        for key, amount in ask.items()
        if amount > 0
    )


def runs_to_start(
    ready: list[PlannedRun],
    asks: dict[PlannedRun, Resources],
    running: list[PlannedRun],
    capacity: Resources,
    parallel: int | None,
) -> list[PlannedRun]:
    """The ready runs to start now, in plan order: each that fits beside the running ones and those chosen
    before it, at most `parallel` running at once. With nothing running the first ready run starts even if
    it cannot fit, so that its own start names what the cluster lacks instead of the experiment waiting."""
    chosen: list[PlannedRun] = []
    for run in ready:
        if parallel is not None and len(running) + len(chosen) >= parallel:
            break
        in_use = [asks[other] for other in (*running, *chosen)]
        if not in_use or fits(asks[run], in_use, capacity):
            chosen.append(run)
    return chosen


def run_config(experiment: Experiment, run: PlannedRun) -> Config:
    """The config the run will have: its seed's prefix config, and for an arm the fork's overrides on it."""
    from tutorloop.loop.fork import fork_config  # it loads the engine (Ray)

    prefix = prefix_config(experiment.config, experiment.spec, run.seed)
    if run.arm == PREFIX:
        return prefix
    return fork_config(prefix, arm_overrides(experiment.spec, experiment.config, run.arm), run.arm)


def cluster_asks(
    experiment: Experiment, planned: list[PlannedRun], address: str
) -> tuple[Resources, dict[PlannedRun, Resources]]:
    """The cluster's CPUs and GPUs (read once, at start) and what each planned run's actors ask together."""
    import ray

    from tutorloop.loop.cluster import actor_demands

    joined = not ray.is_initialized()
    if joined:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        capacity = {key: float(ray.cluster_resources().get(key, 0.0)) for key in ("CPU", "GPU")}
        asks = {}
        for run in planned:
            demands = [wants for _, wants in actor_demands(run_config(experiment, run))]
            asks[run] = {key: sum(wants.get(key, 0.0) for wants in demands) for key in ("CPU", "GPU")}
    finally:
        if joined:  # each run joins as its own driver
            ray.shutdown()
    return capacity, asks


def _start(experiment: Experiment, store: ExperimentStore, run: PlannedRun, address: str) -> subprocess.Popen:
    """The run's folder made ready and seeded here, then its own driver process started on it."""
    store.start_run(run.seed, run.arm, run.relative_dir)
    prepare_run(experiment, run)
    run_dir = experiment.run_dir(run).resolve()
    command = [sys.executable, "-m", "tutorloop.loop.cli", "resume", str(run_dir), "--address", address]
    with open(run_dir / DRIVER_LOG, "a") as log:  # the child keeps its own handle
        # Its own session: a Ctrl-C at the terminal reaches this driver only, which stops each run by its PID.
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    print(
        f"tutorloop experiment: {run.relative_dir} started (pid {process.pid}; output in {run_dir / DRIVER_LOG})",
        flush=True,
    )
    return process


def _ended(experiment: Experiment, store: ExperimentStore, run: PlannedRun, code: int) -> None:
    """A run's driver exited: its paid answers into the shared cache, its status into the index."""
    harvest_run(experiment, run)
    status = FINISHED if code == 0 else "stopped" if code == 130 or code < 0 else "failed"
    store.finish_run(run.seed, run.arm, status)
    log = experiment.run_dir(run) / DRIVER_LOG
    print(
        f"tutorloop experiment: {run.relative_dir} {status}" + ("" if code == 0 else f" (exit code {code}; see {log})"),
        flush=True,
    )


def _stop_all(experiment: Experiment, store: ExperimentStore, running: dict[PlannedRun, subprocess.Popen]) -> None:
    """Ctrl-C (or an error here): each running run asked to stop at its next safe point, by its PID."""
    for process in running.values():
        process.terminate()
    deadline = time.monotonic() + STOP_WAIT_S
    for run, process in running.items():
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _ended(experiment, store, run, process.returncode)
    running.clear()


def _start_or_record(
    experiment: Experiment, store: ExperimentStore, run: PlannedRun, address: str
) -> subprocess.Popen | Exception:
    """The run started; or, when its folder cannot be made ready, the error (the run recorded failed)."""
    try:
        return _start(experiment, store, run, address)
    except BaseException as exc:
        store.finish_run(run.seed, run.arm, "stopped" if isinstance(exc, KeyboardInterrupt) else "failed")
        harvest_run(experiment, run)
        if not isinstance(exc, Exception):
            raise
        print(f"tutorloop experiment: {run.relative_dir} failed before it started: {exc}", flush=True)
        return exc


def run_parallel(
    experiment: Experiment, store: ExperimentStore, done: set[PlannedRun], address: str, parallel: int | None
) -> int:
    """Every planned run not in `done`, as many at once as fit; the first failure stops starting new runs and
    waits for the running ones. Returns 0 when all finished, else the first failed run's exit code."""
    planned = experiment.planned_runs()
    capacity, asks = cluster_asks(experiment, planned, address)
    print(
        f"tutorloop experiment: on the Ray cluster at {address} ({capacity['CPU']:g} CPUs, {capacity['GPU']:g} GPUs); "
        f"a run asks for {max(ask['CPU'] for ask in asks.values()):g} CPUs at most"
        + (f", at most {parallel} runs at once" if parallel else ""),
        flush=True,
    )
    running: dict[PlannedRun, subprocess.Popen] = {}
    started, failure, error = set(done), 0, None
    try:
        while True:
            for run, process in list(running.items()):
                if process.poll() is not None:
                    del running[run]
                    _ended(experiment, store, run, process.returncode)
                    if process.returncode == 0:
                        done.add(run)
                    failure = failure or process.returncode
            ready = [] if failure else ready_runs(planned, done, started, experiment.spec.match_accepted)
            for run in runs_to_start(ready, asks, list(running), capacity, parallel):
                started.add(run)
                outcome = _start_or_record(experiment, store, run, address)
                if isinstance(outcome, Exception):
                    failure, error = 1, outcome
                    break
                running[run] = outcome
            if not running:
                if error is not None:
                    raise error
                return failure
            time.sleep(POLL_S)
    except BaseException:
        _stop_all(experiment, store, running)
        raise
