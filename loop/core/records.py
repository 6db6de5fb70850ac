"""The records that move between phases, actors and the store.

Actors return them through Ray and the driver stores them; neither side imports the other, so what
they share is defined here.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol


class CallJournal(Protocol):
    """Where a teacher pool notes each request as it goes out and each answer as it arrives (the
    driver's store/journal.py), so a killed run neither loses an answer nor sends a request twice."""

    def sent(self, hashes: Iterable[str]) -> None: ...

    def answered(self, records: Iterable[dict[str, Any]]) -> None: ...
