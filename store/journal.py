"""The teacher journal: an append-only file in the run directory that makes teacher answers durable
the moment the driver has them, before they reach the history in a batch.

Two kinds of lines: `{"sent": hash}` before a request goes out, `{"answer": record}` (a
teacher_calls row) as soon as its answer arrives. After a kill, `recover()` gives back every answer
that arrived (the driver stores them, so none is paid for twice) and the hashes that were in flight
(sent, no answer: those are the only requests a resumed run sends again). Writes are flushed to the
operating system line by line, which survives a killed process; the journal is removed once its
teaching phase is committed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

JOURNAL_NAME = "teacher_journal.jsonl"


@dataclass
class Recovered:
    """What a journal held: the answers (teacher_calls rows) and the hashes sent without an answer."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)


class TeacherJournal:
    """Line-per-event journal of one run's teacher requests; safe to call from several threads."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / JOURNAL_NAME
        self._lock = threading.Lock()
        self._file = None

    def _append(self, lines: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n" for line in lines)
        if not text:
            return
        with self._lock:
            if self._file is None:
                torn = self._torn_tail()
                self._file = self.path.open("a", encoding="utf-8")
                if torn:
                    self._file.write("\n")  # end a line torn by a kill, so the next one parses
            self._file.write(text)
            self._file.flush()

    def _torn_tail(self) -> bool:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with self.path.open("rb") as f:
            f.seek(-1, 2)
            return f.read(1) != b"\n"

    def sent(self, hashes: Iterable[str]) -> None:
        self._append({"sent": h} for h in hashes)

    def answered(self, records: Iterable[dict[str, Any]]) -> None:
        self._append({"answer": r} for r in records)

    def recover(self) -> Recovered:
        """The journal's answers and in-flight hashes; a line torn by the kill is skipped."""
        if not self.path.exists():
            return Recovered()
        answers: dict[str, dict[str, Any]] = {}
        sent: dict[str, None] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # only the last line can be torn: a kill during its write
            if "sent" in entry:
                sent[entry["sent"]] = None
            elif "answer" in entry:
                answers[entry["answer"]["request_hash"]] = entry["answer"]
        return Recovered(list(answers.values()), [h for h in sent if h not in answers])

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def clear(self) -> None:
        """Forget everything (the answers are in the history now)."""
        self.close()
        self.path.unlink(missing_ok=True)
