"""Ctrl-C and SIGTERM: a run stops at its next safe point (its work so far is stored), not mid-write."""

from __future__ import annotations

import signal
import sys

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Ctrl-C or SIGTERM: stop at the next safe point."""


class StopSignals:
    """Remembers the Ctrl-C and SIGTERM handlers it finds; `install()` routes both here, `check()`
    raises StopRequested at a safe point once one arrived (a second Ctrl-C stops at once), and
    `restore()` puts the remembered handlers back."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def install(self) -> None:
        """Called after Ray's start: Ray installs its own handlers, which would abort the driver mid-write."""
        for sig in SIGNALS:
            signal.signal(sig, self._request)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _request(self, *_: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ntutorloop: stopping at the next safe point (Ctrl-C again to stop at once)", file=sys.stderr, flush=True
        )

    def check(self) -> None:
        """A safe point: raises StopRequested when a stop was asked for."""
        if self.requested:
            raise StopRequested
