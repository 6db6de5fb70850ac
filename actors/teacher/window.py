"""The request window both teacher pools keep: at most `window` requests out at once, the next ones
sent only when the caller comes back for more, so a slow caller never has a pile of answers waiting.
A record cut off by a backend's open circuit breaker ends the asking with TeacherUnavailable."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from tutorloop.actors.teacher.calls import TeacherRequest
from tutorloop.actors.teacher.health import TeacherUnavailable, answered_records, unreachable_records
from tutorloop.loop.core.records import CallJournal


def ask_in_window(
    requests: list[TeacherRequest],
    window: int,
    journal: CallJournal | None,
    send: Callable[[list[TeacherRequest]], None],
    collect: Callable[[], list[dict[str, Any]]],
) -> Iterator[list[dict[str, Any]]]:
    """Yields `collect()` (every answer finished since the last one, at least one) until all are in.

    `send` starts requests; the journal records each as it goes out, so after a kill only the
    requests in flight then are sent again. When a teacher's breaker opened, the answers that came
    with the cut-off records are yielded first (the caller stores them), then TeacherUnavailable
    is raised; the cut-off requests stay "in flight" in the journal, so a resumed run sends them.
    """
    queued = list(requests)

    def submit(count: int) -> None:
        batch, queued[:count] = queued[:count], []
        if journal is not None:
            journal.sent(request.request_hash for request in batch)
        send(batch)

    submit(window)
    left = len(requests)
    while left:
        records = collect()
        cut_off = unreachable_records(records)
        if cut_off:
            answered = answered_records(records)
            if answered:
                yield answered
            raise TeacherUnavailable(cut_off[0]["error"])
        left -= len(records)
        yield records
        submit(len(records))
