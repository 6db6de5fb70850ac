"""Rate limits of the openai backend: an async token bucket, and the delay a server asks for."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any


class TokenBucket:
    """Async token bucket: `per_minute` tokens refill evenly; bursts up to `burst_s` seconds' worth.

    A short burst window (not a whole minute) spreads requests out, so a server that counts per
    minute on a sliding window does not see one big burst at the start.
    """

    def __init__(self, per_minute: float, burst_s: float = 6.0) -> None:
        self.capacity = max(1.0, per_minute * burst_s / 60.0)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock: asyncio.Lock | None = None

    async def acquire(self, amount: float) -> None:
        # A request bigger than the whole bucket waits for a full bucket rather than forever.
        amount = min(float(amount), self.capacity)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= amount:
                    self.tokens -= amount
                    return
                await asyncio.sleep((amount - self.tokens) / self.rate)


def retry_after_seconds(headers: Any) -> float | None:
    """Delay asked for by a response's `retry-after-ms` or `retry-after` header (seconds or HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None
