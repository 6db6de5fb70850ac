"""StudentActor: a Ray shell around `Examiner` (one per GPU, or one on CPU), plus resource helpers."""

from __future__ import annotations

from typing import Any

import ray

from tutorloop.actors.exam import Examiner
from tutorloop.actors.models import set_torch_threads
from tutorloop.actors.timing import ActorClock
from tutorloop.loop.config import RaySection, StudentSection
from tutorloop.loop.datasets import Example


def student_actor_options(ray_cfg: RaySection, kind: str) -> dict[str, Any]:
    """Ray `.options()` for a "student" or "trainer" actor: a configured GPU count of -1 means one GPU
    when the (already initialised) cluster has GPUs, none otherwise."""
    if kind not in ("student", "trainer"):
        raise ValueError(f"actor kind must be 'student' or 'trainer', got {kind!r}")
    gpus = ray_cfg.student_gpus if kind == "student" else ray_cfg.trainer_gpus
    cpus = ray_cfg.student_cpus if kind == "student" else ray_cfg.trainer_cpus
    if gpus < 0:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    return {"num_gpus": gpus, "num_cpus": cpus}


@ray.remote
class StudentActor:
    """Loads the student once; each exam may bring a different adapter (swapped without reloading)."""

    def __init__(self, student_cfg: StudentSection, answer_type: str, seed: int = 0, torch_threads: int = 0) -> None:
        self.clock = ActorClock()
        set_torch_threads(torch_threads)
        self.examiner = Examiner(student_cfg, answer_type, seed=seed)
        self.clock.loaded()

    def exam(self, examples: list[Example], mode: str, num_samples: int = 1, greedy: bool = True,
             seed: int = 0, adapter: bytes | None = None) -> list[dict]:
        with self.clock.computing():
            self.examiner.set_adapter(adapter)
            return self.examiner.run(examples, mode, num_samples=num_samples, greedy=greedy, seed=seed)

    def timings(self) -> dict[str, float]:
        """Seconds spent starting and running exams (the driver's overhead accounting)."""
        return dict(self.clock.seconds)
