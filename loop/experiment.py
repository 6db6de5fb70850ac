"""`tutorloop experiment run`: a pre-registered experiment of arms x seeds, one run at a time (on a Ray cluster,
as many at once as it fits: experiment_parallel.py).

The spec (experiment_spec.py) is frozen into DIR/experiment.duckdb before the first run starts; a
changed spec is refused unless recorded as an amendment. Each seed runs its shared prefix once
(baseline and the rounds up to `prefix_rounds`) as an ordinary run, then each arm as a fork of it with
the arm's overrides. Rerun after a kill: finished runs are skipped, a half-done one resumes.
One teacher cache serves every run (store/teacher_cache.py): each run starts with the answers the runs
before it paid for, and what it pays for is harvested when it ends, so no request is sent twice.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tutorloop.loop.core.config import Config, config_from_dict
from tutorloop.loop.core.config_meta import changed_keys
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.core.teardown import Teardown
from tutorloop.loop.experiment_spec import (
    PREFIX,
    ExperimentSpec,
    arm_overrides,
    base_config,
    canonical,
    check_against_base,
    load_spec,
    prefix_config,
    spec_from_dict,
)
from tutorloop.store.experiment_store import EXPERIMENT_FILE, ExperimentStore
from tutorloop.store.history import read_run
from tutorloop.store.query import HISTORY_FILE, fetch_rows
from tutorloop.store.teacher_cache import harvest_calls, seed_shared_calls

FINISHED = "finished"


@dataclass(frozen=True)
class PlannedRun:
    seed: int
    arm: str  # PREFIX or one of the spec's arms

    @property
    def relative_dir(self) -> str:
        return f"seed-{self.seed}/{self.arm}"


@dataclass
class Experiment:
    directory: Path
    spec: ExperimentSpec
    config: dict  # the resolved base config the plan froze

    def run_dir(self, run: PlannedRun) -> Path:
        return self.directory / run.relative_dir

    def planned_runs(self) -> list[PlannedRun]:
        """Per seed: its prefix, then its arms (forks of that prefix) in the spec's order."""
        return [PlannedRun(seed, arm) for seed in self.spec.seeds for arm in (PREFIX, *self.spec.arms)]


RunExecutor = Callable[[Experiment, PlannedRun], int]


def _resumable(run_dir: Path, arm: str) -> bool:
    """A history that holds its run; a fork also needs its config.yaml (fork_run writes it last), else the
    fork was cut short and is made again."""
    from tutorloop.loop.run_dir import CONFIG_FILE  # the engine and its imports load only to run

    if not (run_dir / HISTORY_FILE).exists() or (arm != PREFIX and not (run_dir / CONFIG_FILE).exists()):
        return False
    return read_run(run_dir) is not None


def prepare_run(experiment: Experiment, run: PlannedRun) -> Config | None:
    """The run's folder made ready with the existing machinery (a prefix as `tutorloop run` creates it, an arm
    as `tutorloop fork` does) and seeded from the experiment's cache; returns the new run's config, or None
    for a run already in its folder (the experiment was killed), which resumes."""
    from tutorloop.loop.fork import fork_run
    from tutorloop.loop.run_dir import create_run

    run_dir, cache = experiment.run_dir(run), experiment.directory / EXPERIMENT_FILE
    if _resumable(run_dir, run.arm):
        seed_shared_calls(cache, run_dir / HISTORY_FILE)
        return None
    if run.arm == PREFIX:
        cfg = prefix_config(experiment.config, experiment.spec, run.seed)
        if run_dir.exists():  # a prefix cut short before its history held the run: made again
            shutil.rmtree(run_dir)
        create_run(cfg, run_dir)
    else:
        prefix = experiment.run_dir(PlannedRun(run.seed, PREFIX))
        cfg = fork_run(
            prefix,
            run_dir,
            experiment.spec.prefix_rounds,
            arm_overrides(experiment.spec, experiment.config, run.arm) + matched_budget(experiment, run),
            overwrite=True,
        )
    seed_shared_calls(cache, run_dir / HISTORY_FILE, fresh=True)
    return cfg


def matched_budget(experiment: Experiment, run: PlannedRun) -> list[str]:
    """`match_accepted`: the accepted rationales of each tailored round of the seed's source arm, as this arm's
    training.accepted_budget (one per round); nothing for an arm not matched."""
    source = experiment.spec.match_accepted.get(run.arm)
    if source is None:
        return []
    source_dir = experiment.run_dir(PlannedRun(run.seed, source))
    rounds = experiment.config["run"]["rounds"]
    counts = {}
    if (source_dir / HISTORY_FILE).exists():
        rows = fetch_rows(
            source_dir,
            "SELECT round, count(*) FILTER (WHERE accepted) AS accepted FROM rationales WHERE round >= 1 GROUP BY round",
        )
        counts = {r["round"]: r["accepted"] for r in rows}
    for round_ in range(experiment.spec.prefix_rounds + 1, rounds + 1):
        if not counts.get(round_):
            raise RunError(
                f"{run.relative_dir}: match_accepted needs the accepted rationales of {source}'s round {round_} "
                f"({source_dir}), and it has {'none' if round_ in counts else 'not taught that round'}"
            )
    # The prefix's rounds are inherited, not run again: their entries only fill the list.
    return [f"training.accepted_budget={[counts.get(r) or 1 for r in range(1, rounds + 1)]}"]


def execute_run(experiment: Experiment, run: PlannedRun, address: str | None = None) -> int:
    """One run to its end in this process: a new one from its first round, one already there resumed."""
    from tutorloop.loop.engine import RoundEngine
    from tutorloop.loop.run_dir import resume_run

    cfg, run_dir = prepare_run(experiment, run), experiment.run_dir(run)
    return resume_run(run_dir, address=address) if cfg is None else RoundEngine(cfg, run_dir, address).run()


def harvest_run(experiment: Experiment, run: PlannedRun) -> None:
    """A run that ended (finished or not): its paid teacher answers into the experiment's cache."""
    history = experiment.run_dir(run) / HISTORY_FILE
    if not history.is_file():  # stopped before its history was made
        return
    sent, reused = harvest_calls(experiment.directory / EXPERIMENT_FILE, history, run.relative_dir)
    print(
        f"tutorloop experiment: {run.relative_dir}: {sent} teacher calls sent, "
        f"{reused} answered from the experiment's cache",
        flush=True,
    )


def freeze_or_check(store: ExperimentStore, spec_hash: str, document: dict, spec_path: str, amend: str | None) -> None:
    """Freeze the plan into a new experiment; in an existing one, refuse a changed spec unless amended."""
    if not store.exists():
        if store.directory.exists() and any(store.directory.iterdir()):  # runs there would predate the plan
            raise RunError(f"{store.directory}: folder exists and is not an experiment; choose another --dir")
        frozen_at = store.freeze(spec_hash, document, spec_path)
        print(f"tutorloop experiment: plan frozen at {frozen_at:%Y-%m-%d %H:%M:%S} (spec {spec_hash[:12]})", flush=True)
        return
    current_hash, current = store.current_spec()
    if current_hash == spec_hash:
        return
    changed = sorted(changed_keys(current, document))
    if not amend:
        raise RunError(
            f"{store.directory}: the spec differs from the frozen plan ({', '.join(changed)}); "
            f'record the change with --amend "why" or run it into a new --dir'
        )
    store.amend(current_hash, spec_hash, document, changed, amend)
    print(f"tutorloop experiment: amendment recorded ({', '.join(changed)}): {amend}", flush=True)


def _run_in_order(experiment: Experiment, store: ExperimentStore, todo: list[PlannedRun], executor: RunExecutor) -> int:
    """One machine: one run at a time, in plan order; the first that does not finish ends the experiment."""
    for run in todo:
        print(f"tutorloop experiment: {run.relative_dir} ...", flush=True)
        store.start_run(run.seed, run.arm, run.relative_dir)
        ended = False  # a failed harvest is the news only where the run itself ended without an error
        try:
            code = executor(experiment, run)
            ended = True
        except BaseException as exc:
            store.finish_run(run.seed, run.arm, "stopped" if isinstance(exc, KeyboardInterrupt) else "failed")
            raise
        finally:
            # What a stopped run paid is reused too when it resumes or elsewhere.
            teardown = Teardown()
            teardown.step(
                "keep the run's teacher answers in the experiment's cache",
                functools.partial(harvest_run, experiment, run),
            )
            if ended:
                teardown.raise_first()
        if code != 0:
            store.finish_run(run.seed, run.arm, "stopped" if code == 130 else "failed")
            return code
        store.finish_run(run.seed, run.arm, FINISHED)
    return 0


def run_experiment(
    spec_path: str | Path,
    directory: str | Path | None = None,
    amend: str | None = None,
    executor: RunExecutor = execute_run,
    address: str | None = None,
    parallel: int | None = None,
) -> int:
    """`tutorloop experiment run`: freeze (or check) the plan, then every run not finished yet: in order, or on
    a Ray cluster (`address` or RAY_ADDRESS) as many at once as fit, at most `parallel`."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if parallel is not None and parallel < 1:
        raise RunError(f"--parallel: expected a number of runs of at least 1, got {parallel}")
    if parallel is not None and not address:
        raise RunError("--parallel: needs a Ray cluster (--address or RAY_ADDRESS); on one machine one run at a time")
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    base = base_config(spec, spec_path)
    check_against_base(spec, base, str(spec_path))
    spec_hash, document = canonical(spec, base)
    experiment = Experiment(Path(directory) if directory else Path("runs") / spec.name, spec, base.to_dict())
    store = ExperimentStore(experiment.directory)
    freeze_or_check(store, spec_hash, document, str(spec_path), amend)
    finished = {(r["seed"], r["arm"]) for r in store.runs() if r["status"] == FINISHED}
    done = {run for run in experiment.planned_runs() if (run.seed, run.arm) in finished}
    for run in sorted(done, key=experiment.planned_runs().index):
        print(f"tutorloop experiment: {run.relative_dir} finished earlier; skipped", flush=True)
    if address:
        from tutorloop.loop.experiment_parallel import run_parallel  # it loads Ray: only for a cluster

        code = run_parallel(experiment, store, done, address, parallel)
    else:
        code = _run_in_order(experiment, store, [r for r in experiment.planned_runs() if r not in done], executor)
    if code == 0:
        print(
            f"tutorloop experiment: all {len(experiment.planned_runs())} runs finished. "
            f"Report: tutorloop experiment report {experiment.directory}",
            flush=True,
        )
    return code


def open_experiment(directory: str | Path) -> tuple[Experiment, ExperimentStore]:
    """An existing experiment folder, with the spec in force (the frozen plan or its last amendment)."""
    store = ExperimentStore(Path(directory))
    if not store.exists():
        raise RunError(f"{directory}: no experiment here (expected {store.path})")
    _, document = store.current_spec()
    spec = spec_from_dict(document["spec"], str(store.path))
    config_from_dict(document["config"], str(store.path))  # a plan this version cannot read fails here, once
    return Experiment(Path(directory), spec, document["config"]), store
