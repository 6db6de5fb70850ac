"""How the driver waits on Ray results: the history is let go (readers get their turn) only for a real wait."""

from __future__ import annotations

from typing import Callable

# A result due within this many seconds is awaited while holding the history; a longer wait lets it go.
WAIT_GRACE_S = 0.02


def wait_ready(refs: list, on_wait: Callable[[], None] | None = None) -> tuple[list, list]:
    """(ready, pending): at least one ready ref plus whatever else is already done, without waiting more."""
    import ray

    ready, rest = ray.wait(refs, num_returns=1, timeout=WAIT_GRACE_S)
    if not ready:
        if on_wait is not None:
            on_wait()
        ready, rest = ray.wait(refs, num_returns=1)
    if rest:
        more, rest = ray.wait(rest, num_returns=len(rest), timeout=0)
        ready += more
    return ready, rest
