"""TrainerActor: a Ray shell around `LoraTrainer` that reports its steps while it trains;
RemoteTrainer: the driver's side of it, streaming those steps and stopping it on request.

The actor never sees a path of the driver's: it checkpoints into its own node's temporary folder and
sends each checkpoint to the driver as bytes with its progress; the driver keeps the newest one in the
run directory and hands it back as bytes when a training resumes (on whichever node the actor lands)."""

from __future__ import annotations

import tempfile
import threading
from typing import Any, Callable

import ray

from tutorloop.actors.models import set_torch_threads
from tutorloop.actors.student import student_actor_options
from tutorloop.actors.timing import ActorClock
from tutorloop.actors.train_state import Checkpoints
from tutorloop.actors.training import LoraTrainer
from tutorloop.loop.core.config import RaySection, StudentSection, TrainingSection
from tutorloop.loop.core.errors import RunError, TutorloopError
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
        self.checkpoint: bytes | None = None  # the newest checkpoint not yet sent to the driver

    def plan(self, total: int, done: int) -> None:
        with self._lock:
            self.total, self.done_before = total, done

    def step(self, record: dict) -> None:
        with self._lock:
            self.steps.append(record)

    def saved(self, checkpoints: Checkpoints) -> None:
        data = checkpoints.to_bytes()
        with self._lock:
            self.checkpoint = data

    def since(self, seen: int) -> dict[str, Any]:
        """The plan, the steps after the first `seen`, and the newest checkpoint once (None when sent already)."""
        with self._lock:
            checkpoint, self.checkpoint = self.checkpoint, None
            return {
                "total": self.total,
                "done_before": self.done_before,
                "steps": self.steps[seen:],
                "checkpoint": checkpoint,
            }


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
        checkpoint: bytes | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Returns {"adapter": bytes, "steps": [step records]}; resumes from `checkpoint` (bytes of
        Checkpoints.to_bytes) when it matches. `seed`: this training's (the round's) seed; default the actor's."""
        progress = self._progress
        try:
            # This node's own temporary space: nothing of the driver's disk is needed here.
            with tempfile.TemporaryDirectory(prefix="tutorloop-trainer-") as local, self.clock.computing():
                if checkpoint is not None:
                    Checkpoints(local).receive(checkpoint)
                result = self.trainer.train(
                    samples,
                    pairs,
                    init_adapter=init_adapter,
                    checkpoint_dir=local,
                    on_step=progress.step,
                    on_plan=progress.plan,
                    seed=seed,
                    on_checkpoint=progress.saved,
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
        `checkpoint_dir` is the driver's: the checkpoints the actor sends are kept there, and a training
        resumes from the one there (sent to the actor as bytes).

        `poll()` runs every POLL_S seconds; when it raises (a stop request), the actor is killed at
        once rather than after the whole training (a resumed run continues from its last checkpoint)."""
        if self.actor is None:
            self.actor = TrainerActor.options(**self._options).remote(*self._args)
        kept = Checkpoints(checkpoint_dir)
        result = self.actor.train.remote(samples, pairs, init_adapter, kept.to_bytes(), seed)
        try:
            return self._follow(result, kept, on_progress, poll)
        except ray.exceptions.RayActorError as exc:  # its node or process is gone
            self.actor = None  # the next training starts a new actor
            newest = kept.newest()
            raise RunError(
                f"the trainer actor died mid-training ({type(exc).__name__}: its node or process was lost); "
                f"its last checkpoint ({newest.name if newest else 'none yet'}) is kept in {checkpoint_dir}; "
                f"resume the run to continue from there"
            ) from None

    def _follow(
        self, result: ray.ObjectRef, kept: Checkpoints, on_progress: ProgressCallback, poll: Callable[[], None]
    ) -> dict[str, Any]:
        """Waits for the training `result`, keeping the checkpoints and reporting the steps as they arrive."""
        asked, seen, reported = self.actor.progress.remote(0), 0, None
        while True:
            ready, _ = ray.wait([result], timeout=POLL_S)
            if ray.wait([asked], timeout=0)[0]:
                progress = ray.get(asked)
                if progress["checkpoint"] is not None:
                    kept.receive(progress["checkpoint"])
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
