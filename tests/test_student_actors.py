"""StudentActor and TrainerActor through a real local Ray (loopback only, our own head node)."""

from __future__ import annotations

import os

import pytest
from tiny_student import PRETRAINED_TINY, RANDOM_LLAMA, problems, samples_for, student_cfg, training_cfg

from tutorloop.actors.exam import Examiner
from tutorloop.loop.core.config import RaySection


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
    assert student_actor_options(RaySection(trainer_gpus=2, trainer_cpus=0.5), "trainer") == {
        "num_gpus": 2,
        "num_cpus": 0.5,
    }
    cfg, tcfg = student_cfg(PRETRAINED_TINY), training_cfg(epochs=1)
    train, test = problems(48), problems(12, split="test")
    student = StudentActor.options(**options).remote(cfg, "number")
    trainer = TrainerActor.options(**student_actor_options(RaySection(), "trainer")).remote(cfg, tcfg)

    baseline = ray.get(student.exam.remote(test, "explain"))
    out = ray.get(trainer.train.remote(samples_for(train), [], None, None))
    assert isinstance(out["adapter"], bytes) and out["steps"][-1]["step"] == len(out["steps"])
    trained = ray.get(student.exam.remote(test, "explain", 1, True, 0, out["adapter"]))
    assert trained != baseline
    # The actor returns exactly what the plain Examiner computes in this process.
    local = Examiner(cfg, "number")
    local.set_adapter(out["adapter"])
    assert trained == local.run(test, "explain")
    # Back to the bare base on request.
    assert ray.get(student.exam.remote(test, "explain", 1, True, 0, None)) == baseline


def test_student_group_shards_and_trainer_streams_its_steps(local_ray, tmp_path) -> None:
    from tutorloop.actors.student import EXAM_CHUNK_BATCHES, StudentGroup
    from tutorloop.actors.trainer import RemoteTrainer

    cfg = student_cfg(PRETRAINED_TINY, generation={"max_new_tokens": 24, "batch_size": 2, "temperature": 1.0})
    ray_cfg = RaySection(num_students=2, student_cpus=0.5, trainer_cpus=0.5)
    group = StudentGroup(cfg, "number", 0, 0, ray_cfg)
    # 3 epochs of 48 questions at batch 2: about 144 steps, several of the driver's polls long on a fast CPU
    trainer = RemoteTrainer(cfg, training_cfg(epochs=3, batch_size=2), 0, 0, ray_cfg)
    try:
        test = problems(20, split="test")
        waits: list[int] = []
        chunks = list(group.exam(test, "explain", 1, True, 0, None, on_wait=lambda: waits.append(1)))
        # Chunks of batch_size * EXAM_CHUNK_BATCHES questions over both actors; together the whole exam,
        # exactly what one plain Examiner answers.
        size = 2 * EXAM_CHUNK_BATCHES
        assert sorted(c.index for c in chunks) == list(range(-(-len(test) // size))) and len(chunks) > 2
        assert all(c.examples == test[c.index * size : (c.index + 1) * size] for c in chunks)
        assert [r for c in sorted(chunks, key=lambda c: c.index) for r in c.records] == Examiner(cfg, "number").run(
            test, "explain"
        )
        assert waits  # the driver was told before it really waited

        progress: list[tuple[int, int]] = []
        result = trainer.train(
            samples_for(problems(48)),
            [],
            None,
            str(tmp_path / "ck"),
            lambda total, done, last: progress.append((total, done)),
            poll=lambda: None,
        )
        total = len(result["steps"])
        # Steps reached the driver while the training ran, not only with its result, and the last report
        # is the whole training.
        assert progress and all(t == total for t, _ in progress) and len({d for _, d in progress}) > 2
        assert [d for _, d in progress] == sorted(d for _, d in progress) and progress[-1] == (total, total)

        class Stop(Exception):
            pass

        def stop() -> None:
            raise Stop

        with pytest.raises(Stop):
            trainer.train(samples_for(problems(48)), [], None, str(tmp_path / "ck2"), lambda *a: None, stop)
        assert trainer.actor is None  # killed at once; the next training starts a fresh actor
    finally:
        group.close()
        trainer.close()


def test_trainer_checkpoints_travel_as_bytes_and_resume_from_the_driver(local_ray, tmp_path, monkeypatch) -> None:
    """The trainer actor gets no driver path: its checkpoints come back as bytes that the driver keeps in
    `checkpoint_dir`, and a new actor resumes from the bytes the driver sends it."""
    from actor_args import record_actor_args

    from tutorloop.actors.trainer import RemoteTrainer

    handed = record_actor_args(monkeypatch)
    # Enough steps that the driver sees a checkpoint well before the end, also on a loaded machine.
    cfg, tcfg = student_cfg(RANDOM_LLAMA), training_cfg(epochs=8, batch_size=2, checkpoint_every=2)
    samples, state_dir = samples_for(problems(16)), tmp_path / "trainer_state" / "round-0"
    ray_cfg = RaySection(trainer_cpus=0.5)

    class Stop(Exception):
        pass

    seen: list[int] = []

    def stop_after_some_steps() -> None:
        if seen and seen[-1] >= 2 and (state_dir / "latest").exists():
            raise Stop

    trainer = RemoteTrainer(cfg, tcfg, 0, 0, ray_cfg)
    with pytest.raises(Stop):
        trainer.train(
            samples, [], None, str(state_dir), lambda total, done, last: seen.append(done), stop_after_some_steps
        )
    assert trainer.actor is None
    kept = int((state_dir / "latest").read_text().strip().split("-")[1])
    assert kept >= 2 and (state_dir / f"step-{kept:06d}" / "trainer_state.pt").exists()

    resumed: list[int] = []
    again = RemoteTrainer(cfg, tcfg, 0, 0, ray_cfg)
    try:
        result = again.train(
            samples, [], None, str(state_dir), lambda total, done, last: resumed.append(done), lambda: None
        )
    finally:
        again.close()
    assert resumed and resumed[0] >= kept  # continued from the driver's checkpoint, not from step 0
    assert [s["step"] for s in result["steps"]] == list(range(1, len(result["steps"]) + 1))
    assert handed.calls and not handed.under(tmp_path)  # no actor was handed a path on the driver's disk
