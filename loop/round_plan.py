"""The round as a plan: which phases each kind of round runs, and a phase's life in the history.

Round -1 is the zero-shot baseline (the untrained student on the test split), round 0 the
multi-task core over the whole training pool (Li et al. 2022), every later round a tailored round
driven by the student's own mistakes (Wang et al. 2023).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from pathlib import Path
from typing import Callable

from tutorloop.loop.core.config import RunSection
from tutorloop.store.history import PhaseOutputs, RunHistory

BASELINE, CORE, TAILORED = "baseline", "core", "tailored"
# The attempts of a tailored round's pool mistakes, examined again by its eval phase (student.recheck_mistakes).
RECHECK = "recheck"
TRAINER_STATE = "trainer_state"  # run_dir/trainer_state/round-<k>/: the trainer's state while round k trains
# Its name in older code; a run that code left killed mid-training still resumes from there.
_OLD_TRAINER_STATE = "checkpoints"

# The phases of each kind of round, in order.
ROUND_PLAN: dict[str, tuple[str, ...]] = {
    BASELINE: ("eval",),
    CORE: ("teach", "train", "eval"),
    TAILORED: ("exam", "teach", "train", "eval"),
}


def round_kind(round_: int) -> str:
    return BASELINE if round_ < 0 else CORE if round_ == 0 else TAILORED


def planned_rounds(run: RunSection) -> list[int]:
    """The rounds a run's config asks for, in order."""
    return ([-1] if run.baseline else []) + list(range(0, run.rounds + 1))


def derive_seed(seed: int, round_: int, phase: str) -> int:
    """Seeds from (run seed, round, phase): a resumed phase draws the same numbers as the first try."""
    digest = hashlib.sha256(f"{seed}/{round_}/{phase}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def trainer_state_dir(run_dir: Path, round_: int) -> Path:
    """Where round `round_` keeps its trainer state: the older folder only where it holds some and the new one
    does not (so a resume continues from it)."""
    new, old = (run_dir / root / f"round-{round_}" for root in (TRAINER_STATE, _OLD_TRAINER_STATE))
    return old if old.exists() and not new.exists() else new


def remove_trainer_state(run_dir: Path, round_: int) -> None:
    """Removes round `round_`'s trainer state, from whichever folder holds it, once its adapter is stored."""
    for root in (TRAINER_STATE, _OLD_TRAINER_STATE):
        shutil.rmtree(run_dir / root / f"round-{round_}", ignore_errors=True)


class Phase:
    """One phase of one round in the history: whether it is done already, its start and its commit.

    The body of a phase only does its work inside `with phase:`: it calls `begin(total)` once it
    knows how much work there is and fills `outputs`; leaving the block normally commits the outputs
    together with the phase's done mark in one transaction, then runs the `after_commit` clean-ups.
    An exception commits nothing: the phase stays running and a resumed run continues it.
    """

    def __init__(self, history: RunHistory, round_: int, name: str) -> None:
        self.history = history
        self.round = round_
        self.name = name
        self.done = history.phase_done(round_, name)
        self.outputs = PhaseOutputs()
        self._started: float | None = None
        self._after: list[Callable[[], None]] = []

    def begin(self, total: int | None) -> None:
        """Marks the phase running with `total` units of work, None while not known yet (a resumed phase
        keeps its progress, its seconds, and without a new total its stored one)."""
        self.history.begin_phase(self.round, round_kind(self.round), self.name, total)
        self._started = time.monotonic()

    def after_commit(self, clean_up: Callable[[], None]) -> None:
        """Runs once the outputs are committed (removing what they made redundant)."""
        self._after.append(clean_up)

    def __enter__(self) -> "Phase":
        if self.done:
            raise RuntimeError(f"round {self.round} phase {self.name} is done already")
        return self

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        if exc_type is not None:
            self._keep_seconds()
            return
        if self._started is None:
            raise RuntimeError(f"round {self.round} phase {self.name} ended without begin()")
        self.history.finish_phase(self.round, self.name, time.monotonic() - self._started, self.outputs)
        self.done = True
        for clean_up in self._after:
            clean_up()

    def _keep_seconds(self) -> None:
        """A stopped or failed attempt's seconds, added to the phase's so a resumed phase sums its attempts."""
        if self._started is None:
            return
        # A store that fails here must not hide the error that ended the phase: that one the user sees.
        with contextlib.suppress(Exception):
            self.history.add_phase_seconds(self.round, self.name, time.monotonic() - self._started)
