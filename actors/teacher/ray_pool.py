"""TeacherActor: a Ray shell (async, CPU only) around a TeacherRouter; RayTeacherPool: several of
them as one, with requests spread round-robin."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import ray

from tutorloop.actors.teacher.calls import TeacherRequest
from tutorloop.actors.teacher.health import answered_records
from tutorloop.actors.teacher.router import TeacherRouter
from tutorloop.actors.teacher.window import ask_in_window
from tutorloop.actors.waiting import wait_ready
from tutorloop.loop.core.records import CallJournal
from tutorloop.loop.core.teacher_config import TeacherSection

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 30  # for all of the pool's actors together


@ray.remote
class TeacherActor:
    """One of a RayTeacherPool; `share` is the pool's size, so that the actors split its limits."""

    def __init__(self, teacher_cfg: TeacherSection, data_dir: str, share: int) -> None:
        self._router = TeacherRouter(teacher_cfg, data_dir, share)

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        return await self._router.complete(request)

    async def aclose(self) -> None:
        await self._router.aclose()


class RayTeacherPool:
    """`num_actors` TeacherActors; requests are spread round-robin, records yielded as they complete.

    The concurrency, requests- and tokens-per-minute limits are split evenly across the actors,
    which start with the first request sent. API keys are read from each actor's environment (a local Ray inherits the driver's).
    """

    def __init__(
        self, teacher_cfg: TeacherSection, num_actors: int | None = None, data_dir: str = "data", num_cpus: float = 0.25
    ) -> None:
        self._cfg, self._data_dir, self._num_cpus = teacher_cfg, data_dir, num_cpus
        self._count = num_actors or teacher_cfg.num_actors
        self._window = teacher_cfg.concurrency
        self._actors: list[Any] = []

    def _started(self) -> list[Any]:
        # Started on the first request, not before: a phase answered from the cache, or stopped by
        # the preflight, never waits for an actor process to boot (or to be torn down).
        if not self._actors:
            self._actors = [
                TeacherActor.options(num_cpus=self._num_cpus).remote(self._cfg, self._data_dir, self._count)
                for _ in range(self._count)
            ]
        return self._actors

    def ask(
        self,
        requests: list[TeacherRequest],
        on_wait: Callable[[], None] | None = None,
        journal: CallJournal | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yields lists of call records, each holding everything that finished since the last one.

        Like LocalTeacherPool: at most `concurrency` requests out at once; `journal` records each
        answer as soon as it reaches the driver; `on_wait` is called before a real wait.
        """
        pending: list = []
        sent = 0

        def send(batch: list[TeacherRequest]) -> None:
            nonlocal sent
            for request in batch:
                actors = self._started()
                pending.append(actors[sent % len(actors)].complete.remote(request))
                sent += 1

        def collect() -> list[dict[str, Any]]:
            ready, rest = wait_ready(pending, on_wait)
            pending[:] = rest
            records = ray.get(ready)
            if journal is not None:
                journal.answered(answered_records(records))
            return records

        try:
            yield from ask_in_window(requests, self._window, journal, send, collect)
        finally:  # the caller stopped early: do not leave requests running
            for ref in pending:
                ray.cancel(ref)

    def close(self) -> None:
        """Closes each actor's router, then ends every actor. An actor that died, fails to close or does
        not answer within CLOSE_TIMEOUT_S is logged (the run's log) and ended all the same."""
        actors, self._actors = self._actors, []
        if not actors:
            return
        try:
            closing = {actor.aclose.remote(): index for index, actor in enumerate(actors)}
            ready, late = ray.wait(list(closing), num_returns=len(closing), timeout=CLOSE_TIMEOUT_S)
            for ref in ready:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as exc:
                    log.warning(
                        "teacher actor %d of %d could not close: %s",
                        closing[ref] + 1,
                        len(actors),
                        str(exc).splitlines()[0],
                    )
            if late:
                log.warning("%d teacher actor(s) did not close within %g s", len(late), CLOSE_TIMEOUT_S)
        finally:
            for actor in actors:
                ray.kill(actor)  # a dead actor's kill does nothing
