"""Teacher answers stored before the cache key named its source (TeacherRequest.source), re-keyed.

Such a row's key is its `legacy_hash` (so a row tells by itself which key it has). Re-keyed, not kept
under a versioned key: the old key cannot tell which recording or endpoint answered, only the config
that made the row can, and that is at hand here (the run's own; a fork's parent's, at the fork).
The engine re-keys once before its first teach phase (after the journal's answers are back), so a
resumed run sends nothing again that it had paid for. The row's `teacher` is the one that answered
it (a merged request went to the first teacher that asked).
"""

from __future__ import annotations

from dataclasses import replace

from tutorloop.actors.teacher.calls import TeacherRequest
from tutorloop.actors.teacher.sources import AnswerSources
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.store.history import RunHistory

_ROWS = (
    "SELECT c.request_hash, c.teacher, c.backend, c.model, c.sample_index, c.request, e.dataset "
    "FROM teacher_calls c LEFT JOIN examples e USING (example_id)"
)


def legacy_keys(rows: list[dict], teacher_cfg: TeacherSection, data_dir: str) -> dict[str, str]:
    """{old key: current key} of the rows still under the old key whose teacher `teacher_cfg` names."""
    sources = AnswerSources(teacher_cfg, data_dir)
    named = {endpoint.name for endpoint in teacher_cfg.teachers}
    new_keys = {}
    for row in rows:
        request = TeacherRequest.from_record(row)
        if row["teacher"] in named and request.legacy_hash == row["request_hash"]:
            source = sources.of(row["teacher"], row["dataset"] or "")
            new_keys[row["request_hash"]] = replace(request, source=source).request_hash
    return new_keys


def rekey_legacy_calls(history: RunHistory, teacher_cfg: TeacherSection, data_dir: str) -> int:
    """Moves the history's old-key answers to their current keys; returns how many moved.

    `teacher_cfg` and `data_dir` must be those the answers were made with."""
    columns = ("request_hash", "teacher", "backend", "model", "sample_index", "request", "dataset")
    rows = [dict(zip(columns, row)) for row in history.writer.fetch(_ROWS)]
    stored = {row["request_hash"] for row in rows}
    # An answer already stored under its current key (a journal recovered twice) keeps that row.
    new_keys = {old: new for old, new in legacy_keys(rows, teacher_cfg, data_dir).items() if new not in stored}
    if new_keys:
        history.rekey_calls(new_keys)
    return len(new_keys)
