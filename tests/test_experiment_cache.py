"""One teacher cache for the whole experiment (store/teacher_cache.py): a request one run paid for is answered
in every other from the cache, never sent again, and counted as reused, not as the other run's call or spend."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import yaml
from teacher_server import TeacherServer
from test_experiment import write_spec

from tutorloop.loop.experiment import Experiment, PlannedRun, execute_run, run_experiment
from tutorloop.loop.experiment_report import experiment_markdown, experiment_status
from tutorloop.loop.experiment_spec import PREFIX
from tutorloop.store.experiment_store import EXPERIMENT_FILE
from tutorloop.store.history import RunHistory
from tutorloop.store.query import fetch_rows
from tutorloop.store.teacher_cache import cache_counts, harvest_calls, seed_shared_calls


def _history_with_calls(run_dir: Path, hashes: list[str], cost_usd: float = 0.01) -> RunHistory:
    """A run history holding one paid round-0 teacher call per hash."""
    run_dir.mkdir(parents=True)
    history = RunHistory(run_dir)
    history.create(
        {
            "run_id": run_dir.name,
            "name": run_dir.name,
            "created_at": datetime.now(),
            "status": "created",
            "config": {},
            "config_hash": "x",
            "versions": {},
        },
        [],
    )
    history.writer.sql("INSERT INTO rounds (round, kind, status) VALUES (0, 'core', 'done')")
    history.persist_calls(
        [
            {"request_hash": h, "teacher": "t", "backend": "openai", "model": "m", "strategy": "cote", "round": 0}
            | {"response": f"answer {h}", "status": "ok", "cost_usd": cost_usd}
            for h in hashes
        ]
    )
    history.release()
    return history


def test_seed_and_harvest_share_answers_without_counting_them_as_spend(tmp_path: Path) -> None:
    experiment = tmp_path / EXPERIMENT_FILE
    first = _history_with_calls(tmp_path / "seed-0" / "prefix", ["a", "b", "c"])
    assert harvest_calls(experiment, first.path, "seed-0/prefix") == (3, 0)
    assert harvest_calls(experiment, first.path, "seed-0/prefix") == (0, 0)  # each request kept once

    second = _history_with_calls(tmp_path / "seed-1" / "prefix", ["c", "d"])  # c: paid again before sharing
    assert seed_shared_calls(experiment, second.path, fresh=True) == 2  # a and b; c is its own
    assert seed_shared_calls(experiment, second.path) == 0  # a resume adds only what is new
    found = second.stored_calls(["a", "b", "d"])
    assert set(found) == {"d"}  # the run's own calls stay apart from the shared ones
    reused = second.reuse_shared_calls(["a", "x"])
    assert set(reused) == {"a"} and reused["a"]["response"] == "answer a" and "used" not in reused["a"]
    second.release()

    # Shared answers are neither this run's spend nor its calls in round_summary and teacher_yield.
    assert second.spent_usd() == pytest.approx(0.02)
    summary = fetch_rows(second.run_dir, "SELECT teacher_calls FROM round_summary WHERE round = 0")
    assert summary == [{"teacher_calls": 2}]
    assert fetch_rows(second.run_dir, "SELECT sum(calls) AS calls FROM teacher_yield") == [{"calls": 2}]

    assert harvest_calls(experiment, second.path, "seed-1/prefix") == (1, 1)  # d added; a reused
    assert cache_counts(experiment) == {"seed-0/prefix": (3, 0), "seed-1/prefix": (1, 1)}

    # A new fork of the second run starts its count afresh: its parent's reuse was the parent's.
    second.writer.sql("UPDATE shared_calls SET used = true")
    second.release()
    assert seed_shared_calls(experiment, second.path, fresh=True) == 2
    assert fetch_rows(second.run_dir, "SELECT count(*) AS n FROM shared_calls WHERE used") == [{"n": 0}]


def _own_calls(run_dir: Path, round_: int) -> int:
    return fetch_rows(run_dir, "SELECT count(*) AS n FROM teacher_calls WHERE round = ?", [round_])[0]["n"]


@pytest.mark.slow
def test_a_request_one_run_paid_is_never_sent_again_in_the_experiment(
    tmp_path: Path, teacher_server: TeacherServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two seeds' prefixes, real runs on the tests' HTTP teacher: round 0's rationale requests do not depend on
    the seed, so seed 1's prefix sends none of them; every request the server got is one the experiment counts
    sent. The arms are left out (their requests depend on the seed's mistakes; the experiment's own tests run them)."""
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback, as the CLI sets it
    quick = yaml.safe_load(write_spec(tmp_path).read_text())
    teacher = [
        "teacher.teachers.0.backend=openai",
        f"teacher.teachers.0.base_url={teacher_server.base_url}",
        "teacher.teachers.0.model=program",
    ]
    smaller = ["data.synthetic.train_size=24", "data.synthetic.test_size=12", "training.epochs=1"]
    spec = write_spec(tmp_path, overrides=[*quick["overrides"], *smaller, *teacher])
    directory = tmp_path / "exp"

    def prefixes_only(experiment: Experiment, run: PlannedRun) -> int:
        return execute_run(experiment, run) if run.arm == PREFIX else 0

    assert run_experiment(spec, directory, executor=prefixes_only) == 0

    first, second = directory / "seed-0" / "prefix", directory / "seed-1" / "prefix"
    paid = _own_calls(first, 0)
    assert paid > 0 and _own_calls(second, 0) == 0  # answered from the cache, not sent
    summary = fetch_rows(
        second, "SELECT teacher_calls, cache_hits, teacher_cost_usd FROM round_summary WHERE round = 0"
    )
    assert summary == [{"teacher_calls": 0, "cache_hits": paid, "teacher_cost_usd": 0.0}]

    counts = cache_counts(directory / EXPERIMENT_FILE)
    assert counts == {"seed-0/prefix": (paid, 0), "seed-1/prefix": (0, paid)}
    assert teacher_server.calls == paid  # the server got each request once, for both seeds
    line = f"Teacher calls: {paid} sent, {paid} reused from the experiment's cache"
    assert line in experiment_status(directory) and line in experiment_markdown(directory)
