"""The engine's workers: the student group, the trainer and the teacher pool.

The engine reaches them only through `Workers`, so its tests can hand in in-process fakes;
`RayWorkers` is the real thing, Ray actors on a local or joined cluster.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from tutorloop.loop import cluster
from tutorloop.loop.core.config import Config
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.core.teardown import Teardown


class Workers(Protocol):
    seconds: dict[str, float]  # start-up seconds for scripts/bench_loop.py (ray_start_s)

    def start(self) -> None: ...

    def wait_ready(self) -> None:
        """Returns once the student actors have loaded the model (the run shows a bar meanwhile)."""

    def exam(
        self,
        examples: list[Example],
        mode: str,
        num_samples: int,
        greedy: bool,
        seed: int,
        adapter: bytes | None,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[Any]:
        """Finished chunks (`.index`, `.examples`, `.records`) as they come."""

    def train(
        self,
        samples: list[dict],
        pairs: list[dict],
        init_adapter: bytes | None,
        checkpoint_dir: str,
        on_progress: Callable[[int, int, dict | None], None],
        poll: Callable[[], None],
        seed: int | None = None,
    ) -> dict[str, Any]:
        """{"adapter": bytes, "steps": [step records]}; `checkpoint_dir` is the driver's folder where the
        trainer's checkpoints are kept (actors get them as bytes); `poll()` raising ends the training at
        once; `seed` (the round's) sets data order, LoRA initialisation and dropout, default the run seed."""

    def teacher(self, teacher_cfg: TeacherSection) -> Any:
        """The teacher pool of these teachers (`.ask(requests, on_wait, journal)`, `.close()`); started on
        first use, and again when the teachers change (the next kind of round, a server's address)."""

    def shutdown(self) -> dict[str, float]:
        """Stops everything, also what is left when a step fails (that failure, logged, is raised after);
        returns the actors' seconds (load_s, compute_s, boot_s)."""


class RayWorkers:
    """StudentGroup, RemoteTrainer and RayTeacherPool on the Ray cluster this process joins or starts."""

    def __init__(self, cfg: Config, answer_type: str, address: str | None = None, log_file: Path | None = None) -> None:
        self.cfg = cfg
        self.answer_type = answer_type
        self.address = address
        self.log_file = log_file  # where the actors' output goes (the terminal without one)
        self.seconds: dict[str, float] = {}
        self._students: Any = None
        self._trainer: Any = None
        self._teacher: Any = None
        self._teacher_cfg: TeacherSection | None = None
        self._owns_ray = False

    def start(self) -> None:
        from tutorloop.actors.models import check_student_model
        from tutorloop.actors.student import StudentGroup
        from tutorloop.actors.trainer import RemoteTrainer

        cfg = self.cfg
        # A missing model is one line here, not a traceback from inside every actor.
        check_student_model(cfg.student)
        started = time.monotonic()
        self._owns_ray = cluster.start_ray(cfg, self.address, self.log_file)
        self.seconds["ray_start_s"] = time.monotonic() - started
        missing = cluster.missing_cpus(cfg)
        if missing > 0:
            raise RunError(
                f"the Ray cluster has {missing:g} CPU(s) too few for the actors this config asks for "
                f"(ray.*_cpus, ray.num_students, teacher.num_actors, teacher.teachers.*.serve.num_cpus); "
                f"add nodes or lower them"
            )
        unplaceable = cluster.unplaceable(cfg)  # one node must hold each actor: a pending one would hang the run
        if unplaceable:
            raise RunError(unplaceable)
        self._students = StudentGroup(cfg.student, self.answer_type, cfg.run.seed, cfg.ray.torch_threads, cfg.ray)
        # Started now, so that its start-up overlaps the students'.
        self._trainer = RemoteTrainer(cfg.student, cfg.training, cfg.run.seed, cfg.ray.torch_threads, cfg.ray)

    def wait_ready(self) -> None:
        self._students.wait_ready()

    def exam(
        self,
        examples: list[Example],
        mode: str,
        num_samples: int,
        greedy: bool,
        seed: int,
        adapter: bytes | None,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[Any]:
        return self._students.exam(examples, mode, num_samples, greedy, seed, adapter, on_wait)

    def train(
        self,
        samples: list[dict],
        pairs: list[dict],
        init_adapter: bytes | None,
        checkpoint_dir: str,
        on_progress: Callable[[int, int, dict | None], None],
        poll: Callable[[], None],
        seed: int | None = None,
    ) -> dict[str, Any]:
        return self._trainer.train(samples, pairs, init_adapter, checkpoint_dir, on_progress, poll, seed=seed)

    def teacher(self, teacher_cfg: TeacherSection) -> Any:
        from tutorloop.actors.teacher import RayTeacherPool

        if self._teacher is not None and self._teacher_cfg != teacher_cfg:
            self._teacher.close()
            self._teacher = None
        if self._teacher is None:
            self._teacher = RayTeacherPool(
                teacher_cfg, teacher_cfg.num_actors, data_dir=self.cfg.data.data_dir, num_cpus=self.cfg.ray.teacher_cpus
            )
            self._teacher_cfg = teacher_cfg
        return self._teacher

    def shutdown(self) -> dict[str, float]:
        import ray

        groups = [g for g in (self._students, self._trainer) if g is not None]
        seconds: dict[str, float] = {}
        for timings in [t for group in groups for t in group.timings()]:
            for key, value in timings.items():
                # Actors boot side by side, so the wall time their boots take is the longest one.
                merge = max if key == "boot_s" else float.__add__
                seconds[key] = merge(seconds.get(key, 0.0), float(value))
        # Every step runs whatever an earlier one raised: a dead actor must not leave the others, or Ray, running.
        teardown = Teardown()
        if self._teacher is not None:
            teardown.step("close the teacher pool", self._teacher.close)
        if self._students is not None:
            teardown.step("end the student actors", self._students.close)
        if self._trainer is not None:
            teardown.step("end the trainer actor", self._trainer.close)
        self._students = self._trainer = self._teacher = None
        if self._owns_ray:
            teardown.step("shut Ray down", ray.shutdown)
            self._owns_ray = False
        teardown.raise_first()
        return seconds
