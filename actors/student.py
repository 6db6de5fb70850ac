"""StudentActor: a Ray shell around `Examiner` (one per GPU, or one on CPU); StudentGroup: the
student actors as one, sharding an exam over them (like OpenRLHF's actor groups); resource helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import ray

from tutorloop.actors.exam import Examiner, ExamRunner
from tutorloop.actors.llama_exam import LlamaCppExaminer
from tutorloop.actors.models import set_torch_threads
from tutorloop.actors.timing import ActorClock
from tutorloop.actors.waiting import wait_ready
from tutorloop.loop.core.config import RaySection, StudentSection
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.records import AttemptRecord
from tutorloop.loop.core.teardown import Teardown

# An exam is handed out (and stored, and counted on its progress bar) in chunks of this many generation
# batches: more than one, so continuous batching has questions to refill freed rows with.
EXAM_CHUNK_BATCHES = 2


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


def new_examiner(student_cfg: StudentSection, answer_type: str, seed: int, threads: int) -> ExamRunner:
    """The examiner of `student.engine`: the transformers model, or llama.cpp's server (`threads` 0: all cores)."""
    if student_cfg.engine == "llama.cpp":
        return LlamaCppExaminer(student_cfg, answer_type, threads)
    set_torch_threads(threads)
    return Examiner(student_cfg, answer_type, seed=seed)


@ray.remote
class StudentActor:
    """Loads the student once; each exam may bring a different adapter (swapped without reloading)."""

    def __init__(self, student_cfg: StudentSection, answer_type: str, seed: int = 0, torch_threads: int = 0) -> None:
        self.clock = ActorClock()
        self.examiner = new_examiner(student_cfg, answer_type, seed, torch_threads)
        self.clock.loaded()

    def exam(
        self,
        examples: list[Example],
        mode: str,
        num_samples: int = 1,
        greedy: bool = True,
        seed: int = 0,
        adapter: bytes | None = None,
    ) -> list[AttemptRecord]:
        with self.clock.computing():
            self.examiner.set_adapter(adapter)
            return self.examiner.run(examples, mode, num_samples=num_samples, greedy=greedy, seed=seed)

    def timings(self) -> dict[str, float]:
        """Seconds spent starting and running exams (the driver's overhead accounting)."""
        return dict(self.clock.seconds)


@dataclass
class ExamChunk:
    """A finished part of an exam: its place among the exam's chunks, its questions, their attempts."""

    index: int
    examples: list[Example]
    records: list[AttemptRecord]


class StudentGroup:
    """`ray_cfg.num_students` StudentActors; an exam is cut into chunks handed to whichever actor is idle."""

    def __init__(
        self, student_cfg: StudentSection, answer_type: str, seed: int, torch_threads: int, ray_cfg: RaySection
    ) -> None:
        options = student_actor_options(ray_cfg, "student")
        self.chunk_size = student_cfg.generation.batch_size * EXAM_CHUNK_BATCHES
        self.actors = [
            StudentActor.options(**options).remote(student_cfg, answer_type, seed, torch_threads)
            for _ in range(ray_cfg.num_students)
        ]

    def exam(
        self,
        examples: list[Example],
        mode: str,
        num_samples: int,
        greedy: bool,
        seed: int,
        adapter: bytes | None,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[ExamChunk]:
        """Each chunk as it finishes (in finishing order), so the driver can store it at once.

        `on_wait` is called before a real wait on the actors (the driver lets the history go then)."""
        chunks = [examples[i : i + self.chunk_size] for i in range(0, len(examples), self.chunk_size)]
        adapter_ref = ray.put(adapter)
        queue = list(enumerate(chunks))
        idle = list(self.actors)
        pending: dict[Any, tuple[int, list[Example], Any]] = {}

        def dispatch() -> None:
            while queue and idle:
                index, part = queue.pop(0)
                actor = idle.pop()
                pending[actor.exam.remote(part, mode, num_samples, greedy, seed, adapter_ref)] = (index, part, actor)

        dispatch()
        while pending:
            ready, _ = wait_ready(list(pending), on_wait)
            finished = []
            for ref in ready:
                index, part, actor = pending.pop(ref)
                idle.append(actor)
                finished.append(ExamChunk(index, part, ray.get(ref)))
            dispatch()  # the idle actors get their next chunk before the driver stores these
            yield from finished

    def wait_ready(self) -> None:
        """Returns once every student actor has loaded its model (an actor answers only after its start)."""
        ray.get([a.timings.remote() for a in self.actors])

    def timings(self) -> list[dict[str, float]]:
        """Each actor's seconds starting and examining (accounting: a dead actor's are left out)."""
        try:
            return ray.get([a.timings.remote() for a in self.actors], timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            return []

    def close(self) -> None:
        """Ends every actor, also when ending one fails (that failure, logged, is raised after)."""
        actors, self.actors = self.actors, []
        teardown = Teardown()
        for index, actor in enumerate(actors):
            teardown.step(f"end student actor {index + 1} of {len(actors)}", lambda actor=actor: ray.kill(actor))
        teardown.raise_first()
