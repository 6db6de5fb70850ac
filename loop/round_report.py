"""What one round hands on from phase to phase, and the summary line the terminal shows for it."""

from __future__ import annotations

from dataclasses import dataclass, field

from tutorloop.loop.core.records import AttemptRecord
from tutorloop.loop.formatting import percent
from tutorloop.loop.round_plan import round_kind


@dataclass
class RoundReport:
    round: int
    test_accuracy: float | None = None
    mistakes: int | None = None
    teacher_calls: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    budget_exhausted: bool = False
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        mistakes = "-" if self.mistakes is None else str(self.mistakes)
        return (
            f"round {self.round:>2} ({round_kind(self.round)}): test accuracy {percent(self.test_accuracy)} | "
            f"mistakes {mistakes} | teacher calls {self.teacher_calls} (cache hits {self.cache_hits}) | "
            f"cost ${self.cost_usd:.4f} | {self.seconds:.0f}s"
        )


@dataclass
class RoundState:
    """What the phases of one round hand on: the report, and a tailored round's mistakes."""

    round: int
    kind: str
    report: RoundReport
    mistakes: dict[str, list[AttemptRecord]] | None = None
