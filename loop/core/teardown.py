"""Teardown that finishes: every step runs even when an earlier one failed (a dead actor must not leave
the others, or Ray, running), each failure goes to the run's log, and the first is raised only at the end.

Inside a run the engine's `console_to_log` sends this logger to `run.log`, not to the terminal.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from tutorloop.loop.core.errors import RunError

log = logging.getLogger("tutorloop.teardown")
T = TypeVar("T")


class TeardownError(RunError):
    """A teardown step failed; already logged (with its traceback) where it happened."""


class Teardown:
    """Runs teardown steps one after another, whatever each of them raises; keeps the first failure."""

    def __init__(self) -> None:
        self.first: TeardownError | None = None

    def step(self, what: str, action: Callable[[], T]) -> T | None:
        """`action()`'s result, or None when it raised (logged, and kept when it is the first failure)."""
        try:
            return action()
        except Exception as exc:  # a second Ctrl-C (KeyboardInterrupt) still ends the teardown
            if not isinstance(exc, TeardownError):  # a nested Teardown logged it already
                log.warning("teardown: could not %s: %s", what, exc, exc_info=True)
                first_line = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                failure = TeardownError(f"teardown: could not {what}: {first_line} (details in the run's log)")
                failure.__cause__ = exc
                exc = failure
            if self.first is None:
                self.first = exc
            return None

    def raise_first(self) -> None:
        """Raises the first failure, if a step failed."""
        if self.first is not None:
            raise self.first
