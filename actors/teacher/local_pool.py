"""LocalTeacherPool: teacher requests run in-process, on an asyncio loop in a background thread."""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator

from tutorloop.actors.teacher.calls import TeacherRequest
from tutorloop.actors.teacher.health import answered_records
from tutorloop.actors.teacher.router import TeacherRouter
from tutorloop.actors.teacher.window import ask_in_window
from tutorloop.actors.waiting import WAIT_GRACE_S
from tutorloop.loop.core.records import CallJournal
from tutorloop.loop.core.teacher_config import TeacherSection


class LocalTeacherPool:
    """Runs requests on one TeacherRouter in this process; yields records as they finish."""

    def __init__(self, teacher_cfg: TeacherSection, data_dir: str = "data") -> None:
        self._router = TeacherRouter(teacher_cfg, data_dir)
        self._window = teacher_cfg.concurrency
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-pool", daemon=True)
        self._thread.start()

    def ask(
        self,
        requests: list[TeacherRequest],
        on_wait: Callable[[], None] | None = None,
        journal: CallJournal | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yields lists of call records, each holding everything that finished since the last one.

        At most `concurrency` requests are out at once. `journal` records each answer the instant
        it arrives (in the loop's thread), so a killed driver loses only the answers still in
        flight. `on_wait` is called before a wait longer than WAIT_GRACE_S.
        """
        done: queue.Queue[Future] = queue.Queue()
        futures: list[Future] = []

        def arrived(future: Future) -> None:
            if journal is not None and not future.cancelled() and future.exception() is None:
                journal.answered(answered_records([future.result()]))
            done.put(future)

        def send(batch: list[TeacherRequest]) -> None:
            for request in batch:
                future = asyncio.run_coroutine_threadsafe(self._router.complete(request), self._loop)
                future.add_done_callback(arrived)
                futures.append(future)

        def collect() -> list[dict[str, Any]]:
            try:
                group = [done.get(timeout=WAIT_GRACE_S)]
            except queue.Empty:
                if on_wait is not None:
                    on_wait()
                group = [done.get()]
            while not done.empty():
                group.append(done.get_nowait())
            return [future.result() for future in group]

        try:
            yield from ask_in_window(requests, self._window, journal, send, collect)
        finally:  # the caller stopped early: do not leave requests running
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._router.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def __enter__(self) -> "LocalTeacherPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
