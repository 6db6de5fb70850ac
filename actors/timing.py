"""Where a model actor's time went, reported to the driver for scripts/bench_loop.py."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import psutil


class ActorClock:
    """Created first in an actor's __init__: start-up (process boot, model load) and compute seconds."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.seconds = {"load_s": 0.0, "compute_s": 0.0, "boot_s": 0.0}

    def loaded(self) -> None:
        """The model is ready: load_s since this clock started, boot_s since the process started."""
        self.seconds["load_s"] = time.perf_counter() - self._started
        self.seconds["boot_s"] = time.time() - psutil.Process().create_time()

    @contextmanager
    def computing(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds["compute_s"] += time.perf_counter() - started
