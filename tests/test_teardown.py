"""Teardown finishes whatever has died, and the user sees the error that started it.

Real local Ray on loopback (our own head node), the program teacher in RayTeacherPool actors, the
untrained tiny GPT-2 student in the student and trainer actors, and a real run directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_engine_plan import config, new_run
from tiny_student import RANDOM_GPT2

from tutorloop.actors.teacher import TeacherRequest
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.core.teardown import TeardownError
from tutorloop.loop.engine import LOG_FILE, RoundEngine
from tutorloop.loop.run_dir import create_run
from tutorloop.loop.workers import RayWorkers
from tutorloop.store.query import fetch_rows

ray = pytest.importorskip("ray")

# Small Ray actors: the student, the trainer and two teacher actors fit in two CPUs; the untrained tiny
# student has nothing to build before its actors start.
RAY_SMALL = [
    "ray.num_cpus=2",
    "ray.student_cpus=0.5",
    "ray.trainer_cpus=0.5",
    "ray.teacher_cpus=0.25",
    "teacher.num_actors=2",
    f"student.tiny={json.dumps(RANDOM_GPT2)}",
]


@pytest.fixture
def local_ray():
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, address="local", _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def program_teacher() -> TeacherSection:
    return TeacherSection.model_validate(
        {
            "teachers": [{"name": "p", "backend": "program", "model": "p"}],
            "strategies": ["zero_shot_cot"],
            "concurrency": 4,
            "num_actors": 2,
        }
    )


def requests(count: int) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            teacher="p",
            backend="program",
            model="p",
            api="chat",
            messages=[{"role": "user", "content": f"Q: What is {i} + 1?\nA: Let's think step by step."}],
            prompt=None,
            params={"temperature": 0.0, "max_tokens": 64},
            strategy="zero_shot_cot",
            example_id=f"q{i}",
            stage="reason",
        )
        for i in range(count)
    ]


def started_pool(workers: RayWorkers | None = None):
    """A RayTeacherPool of two actors that have answered requests (so both are up)."""
    from tutorloop.actors.teacher import RayTeacherPool

    pool = workers.teacher(program_teacher()) if workers else RayTeacherPool(program_teacher())
    records = [r for group in pool.ask(requests(4)) for r in group]
    assert len(records) == 4
    return pool


def is_dead(actor, within_s: float = 30.0) -> bool:
    """Whether the actor is gone within `within_s` (ray.kill is asynchronous: a call right after it may still run)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.2)
    return False


def test_teacher_pool_closes_with_a_dead_actor(local_ray) -> None:
    pool = started_pool()
    actors = list(pool._actors)
    ray.kill(actors[0])
    pool.close()  # the dead actor does not stop the other one from being closed and killed
    assert all(is_dead(actor) for actor in actors)


def test_workers_shutdown_with_a_dead_teacher_actor_kills_the_rest(local_ray, tmp_path: Path) -> None:
    cfg = config(*RAY_SMALL)
    workers = RayWorkers(cfg, "number")
    workers.start()
    assert not workers._owns_ray  # the test's Ray: left running, so the actors can be looked at after
    pool = started_pool(workers)
    actors = [*pool._actors, *workers._students.actors, workers._trainer.actor]
    ray.kill(pool._actors[1])
    workers.shutdown()
    assert all(is_dead(actor) for actor in actors)
    assert ray.is_initialized()


class PhaseFailed(Exception):
    """Stands for any error a phase raises."""


class DyingTeacherWorkers(RayWorkers):
    """Real Ray workers whose training fails just after a teacher actor died."""

    def train(self, *args, **kwargs) -> dict:
        ray.kill(self._teacher._actors[0])
        raise PhaseFailed("the training broke (X)")


def test_a_phase_error_with_a_dead_teacher_actor_reaches_the_user(tmp_path: Path) -> None:
    assert not ray.is_initialized()
    cfg = config(*RAY_SMALL, "run.baseline=false")
    run_dir = tmp_path / "run"
    create_run(cfg, run_dir)
    engine = RoundEngine(cfg, run_dir, workers=DyingTeacherWorkers(cfg, "number", log_file=run_dir / LOG_FILE))
    with pytest.raises(PhaseFailed, match=r"the training broke \(X\)"):
        engine.run()
    assert not ray.is_initialized()  # the run started Ray, and shut it down although an actor had died
    assert fetch_rows(run_dir, "SELECT status, message FROM runs")[0] == {
        "status": "failed",
        "message": "the training broke (X)",
    }
    assert "teacher actor" in (run_dir / LOG_FILE).read_text()  # the dead actor, in the run's log


class FailingShutdown(Exception):
    pass


def failing_shutdown() -> dict:
    raise FailingShutdown("ray went away")


def test_a_teardown_error_surfaces_only_without_an_earlier_error(tmp_path: Path) -> None:
    # Fake (in-process) workers whose shutdown fails: a run that failed shows its own error...
    engine, workers = new_run(config("training.tasks=[rationalize]"), tmp_path, "failed")
    workers.shutdown = failing_shutdown
    with pytest.raises(Exception, match="round 0 built no training samples") as failed:
        engine.run()
    assert not isinstance(failed.value, TeardownError)
    assert "ray went away" in (engine.run_dir / LOG_FILE).read_text()
    # ...and a run that went well shows the teardown's, in one line naming the step.
    engine, workers = new_run(config(), tmp_path, "finished")
    workers.shutdown = failing_shutdown
    with pytest.raises(TeardownError, match="^teardown: could not shut the workers down: ray went away"):
        engine.run()
    assert fetch_rows(engine.run_dir, "SELECT status FROM runs")[0]["status"] == "finished"
