"""TrainerActor: a Ray shell around `LoraTrainer` that reports its steps while it trains;
RemoteTrainer: the driver's side of it, streaming those steps and stopping it on request."""

from __future__ import annotations

import threading
from typing import Any, Callable

import ray

from tutorloop.actors.models import set_torch_threads
from tutorloop.actors.student import student_actor_options
from tutorloop.actors.timing import ActorClock
from tutorloop.actors.training import LoraTrainer
from tutorloop.loop.core.config import RaySection, StudentSection, TrainingSection
from tutorloop.loop.core.errors import TutorloopError
from tutorloop.loop.core.teardown import Teardown

POLL_S = 0.5  # how often the driver asks for new steps (and checks for a stop request)

# (total steps, steps done, the newest step record or None before the first)
ProgressCallback = Callable[[int, int, "dict | None"], None]


def _expected_failure_as_itself(ref: ray.ObjectRef) -> Any:
    """ray.get, raising the actor's TutorloopError itself: the CLI's one line, not Ray's remote traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, TutorloopError):
            raise exc.cause from None
        raise


class TrainingProgress:
    """The steps of the training in progress, written by the training thread and read by another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total: int | None = None
        self.done_before = 0  # steps done before a resume from a checkpoint
        self.steps: list[dict] = []

    def plan(self, total: int, done: int) -> None:
        with self._lock:
            self.total, self.done_before = total, done

    def step(self, record: dict) -> None:
        with self._lock:
            self.steps.append(record)

    def since(self, seen: int) -> dict[str, Any]:
        with self._lock:
            return {"total": self.total, "done_before": self.done_before, "steps": self.steps[seen:]}


# Two threads: `progress` answers while `train` runs in the other one.
@ray.remote(max_concurrency=2)
class TrainerActor:
    def __init__(
        self, student_cfg: StudentSection, training_cfg: TrainingSection, seed: int = 0, torch_threads: int = 0
    ) -> None:
        self.clock = ActorClock()
        set_torch_threads(torch_threads)
        self.trainer = LoraTrainer(student_cfg, training_cfg, seed=seed)
        self._progress = TrainingProgress()
        self.clock.loaded()

    def timings(self) -> dict[str, float]:
        """Seconds spent setting up and training (the driver's overhead accounting)."""
        return dict(self.clock.seconds)

    def train(
        self,
        samples: list[dict],
        pairs: list[dict],
        init_adapter: bytes | None = None,
        checkpoint_dir: str | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Returns {"adapter": bytes, "steps": [step records]}; resumes from `checkpoint_dir` when it can.
        `seed`: this training's (the round's) seed; default the actor's."""
        progress = self._progress
        try:
            with self.clock.computing():
                result = self.trainer.train(
                    samples,
                    pairs,
                    init_adapter=init_adapter,
                    checkpoint_dir=checkpoint_dir,
                    on_step=progress.step,
                    on_plan=progress.plan,
                    seed=seed,
                )
        finally:
            # Fresh for the next training: a progress call may run before that training has begun.
            self._progress = TrainingProgress()
        return {"adapter": result.adapter, "steps": result.steps}

    def progress(self, seen: int = 0) -> dict[str, Any]:
        """The running training's total steps, steps done before a resume, and the step records after
        the first `seen`."""
        return self._progress.since(seen)


class RemoteTrainer:
    """The trainer actor, started at once so that its start-up overlaps the students'."""

    def __init__(
        self,
        student_cfg: StudentSection,
        training_cfg: TrainingSection,
        seed: int,
        torch_threads: int,
        ray_cfg: RaySection,
    ) -> None:
        self._args = (student_cfg, training_cfg, seed, torch_threads)
        self._options = student_actor_options(ray_cfg, "trainer")
        self.actor: Any = TrainerActor.options(**self._options).remote(*self._args)

    def train(
        self,
        samples: list[dict],
        pairs: list[dict],
        init_adapter: bytes | None,
        checkpoint_dir: str,
        on_progress: ProgressCallback,
        poll: Callable[[], None],
        seed: int | None = None,
    ) -> dict[str, Any]:
        """The actor's training result, with `on_progress` called as steps arrive; `seed` as in TrainerActor.

        `poll()` runs every POLL_S seconds; when it raises (a stop request), the actor is killed at
        once rather than after the whole training (a resumed run continues from its last checkpoint)."""
        if self.actor is None:
            self.actor = TrainerActor.options(**self._options).remote(*self._args)
        result = self.actor.train.remote(samples, pairs, init_adapter, checkpoint_dir, seed)
        asked, seen, reported = self.actor.progress.remote(0), 0, None
        while True:
            ready, _ = ray.wait([result], timeout=POLL_S)
            if ray.wait([asked], timeout=0)[0]:
                progress = ray.get(asked)
                seen += len(progress["steps"])
                state = (progress["total"], seen)
                if progress["total"] is not None and state != reported:
                    last = progress["steps"][-1] if progress["steps"] else None
                    on_progress(progress["total"], progress["done_before"] + seen, last)
                    reported = state
                asked = self.actor.progress.remote(seen)
            if ready:
                outcome = _expected_failure_as_itself(result)
                # The last steps may land between two polls: the bar and the phase end at total/total.
                total = reported[0] if reported else len(outcome["steps"])
                if reported != (total, total) and total:
                    on_progress(total, total, outcome["steps"][-1] if outcome["steps"] else None)
                return outcome
            try:
                poll()
            except BaseException:
                Teardown().step("end the trainer actor", self.close)  # logged: the stop request stays the error
                raise

    def timings(self) -> list[dict[str, float]]:
        """The actor's seconds starting and training (accounting: a dead actor's are left out)."""
        if self.actor is None:
            return []
        try:
            return [ray.get(self.actor.timings.remote(), timeout=30)]
        except (ray.exceptions.RayError, TimeoutError):
            return []

    def close(self) -> None:
        actor, self.actor = self.actor, None  # forgotten even when the kill fails: the next train starts a new one
        if actor is not None:
            ray.kill(actor)
