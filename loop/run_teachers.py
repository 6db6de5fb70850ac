"""The teachers of each kind of round, and the teacher servers a run starts for them.

A teacher entry's `rounds` (all, core, tailored) says which rounds it teaches: round 0 asks only
the teachers of the core round, a tailored round only those of tailored rounds. So one config can
have the replay teacher explain the pool in round 0 and a served teacher tailor the later rounds.

A teacher with `serve` gets its server when the first round it teaches reaches its teach phase (a
resumed run whose teaching is all done starts none, a round of replay teachers none either), keeps
it for the rest of the run, and loses it when the run ends, on Ctrl-C and on errors (`close`).
Teachers it does not serve are checked before the run loads its models (`check_remote`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tutorloop.loop.console import elapsed_bar
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection


def round_teachers(section: TeacherSection, kind: str) -> TeacherSection:
    """The section with only the teachers of rounds of `kind` ("core" or "tailored")."""
    return section.model_copy(update={"teachers": [t for t in section.teachers if t.rounds in ("all", kind)]})


class RunTeachers:
    """The run's teacher section, with the servers of served teachers started on demand."""

    def __init__(self, section: TeacherSection, log_dir: Path) -> None:
        self.section = section
        self.log_dir = log_dir
        self._servers = contextlib.ExitStack()
        self._served: dict[str, TeacherEndpoint] = {}  # started teachers, by name, with their base_url

    def for_round(self, kind: str, start: bool = True) -> tuple[TeacherSection, list[str]]:
        """The teachers of rounds of `kind`, served ones pointed at their running servers; and a note
        for each server started by this call (the run's first round that needs it). With `start`
        False (a round with nothing to ask) no server is started, and a served teacher not running
        has no address."""
        wanted = round_teachers(self.section, kind)
        to_start = [t for t in wanted.teachers if t.serve is not None and t.name not in self._served]
        notes = []
        if to_start and start:
            from tutorloop.actors.serving import serve_log, served_teachers

            only = self.section.model_copy(update={"teachers": to_start})
            names = ", ".join(f"{t.name} ({t.serve.engine})" for t in to_start)
            with elapsed_bar(f"starting the teacher server: {names}"):
                started = self._servers.enter_context(served_teachers(only, str(self.log_dir)))
            for endpoint, plan in zip(started.teachers, to_start):
                self._served[endpoint.name] = endpoint
                notes.append(
                    f"teacher '{endpoint.name}': {plan.serve.engine} server for {plan.serve.model} "
                    f"at {endpoint.base_url} (log: {serve_log(self.log_dir, endpoint.name)})"
                )
        teachers = [self._served.get(t.name, t) for t in wanted.teachers]
        return wanted.model_copy(update={"teachers": teachers}), notes

    def check_remote(self, kinds: set[str]) -> None:
        """The preflight of every teacher of rounds of `kinds` that tutorloop does not serve, before the
        run loads its models: a teacher that is not there is one line within seconds, not minutes."""
        from tutorloop.actors.teacher import check_teacher

        for endpoint in self.section.teachers:
            teaches = {"core", "tailored"} if endpoint.rounds == "all" else {endpoint.rounds}
            if endpoint.serve is None and teaches & kinds:
                check_teacher(endpoint, self.section)  # returns at once for replay and program teachers

    def close(self) -> None:
        """Stops every server this run started (safe to call twice); each is stopped even when stopping
        another failed (the ExitStack runs them all), and none is left listed."""
        try:
            self._servers.close()
        finally:
            self._served.clear()
