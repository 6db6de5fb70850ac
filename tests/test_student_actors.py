"""StudentActor and TrainerActor through a real local Ray (loopback only, our own head node)."""

from __future__ import annotations

import os

import pytest

from tiny_student import PRETRAINED_TINY, problems, samples_for, student_cfg, training_cfg
from tutorloop.actors.exam import Examiner
from tutorloop.loop.config import RaySection


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_actors_train_and_exam_through_ray(local_ray, tmp_path) -> None:
    from tutorloop.actors.student import StudentActor, student_actor_options
    from tutorloop.actors.trainer import TrainerActor

    ray = local_ray
    options = student_actor_options(RaySection(), "student")
    assert options == {"num_gpus": 0, "num_cpus": 1}  # no GPU in this cluster
    assert student_actor_options(RaySection(trainer_gpus=2, trainer_cpus=0.5), "trainer") == {"num_gpus": 2,
                                                                                              "num_cpus": 0.5}
    cfg, tcfg = student_cfg(PRETRAINED_TINY), training_cfg(epochs=1)
    train, test = problems(48), problems(12, split="test")
    student = StudentActor.options(**options).remote(cfg, "number")
    trainer = TrainerActor.options(**student_actor_options(RaySection(), "trainer")).remote(cfg, tcfg)

    baseline = ray.get(student.exam.remote(test, "explain"))
    out = ray.get(trainer.train.remote(samples_for(train), [], None, str(tmp_path / "ck")))
    assert isinstance(out["adapter"], bytes) and out["steps"][-1]["step"] == len(out["steps"])
    assert (tmp_path / "ck" / "latest").exists()  # the final checkpoint, written by the actor
    trained = ray.get(student.exam.remote(test, "explain", 1, True, 0, out["adapter"]))
    assert trained != baseline
    # The actor returns exactly what the plain Examiner computes in this process.
    local = Examiner(cfg, "number")
    local.set_adapter(out["adapter"])
    assert trained == local.run(test, "explain")
    # Back to the bare base on request.
    assert ray.get(student.exam.remote(test, "explain", 1, True, 0, None)) == baseline
