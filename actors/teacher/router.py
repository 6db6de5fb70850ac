"""The router: the backends of every configured teacher behind one `complete`, which never raises."""

from __future__ import annotations

from typing import Any

from tutorloop.actors.teacher.calls import TeacherRequest, call_record, redact
from tutorloop.actors.teacher.openai_backend import OpenAIBackend
from tutorloop.actors.teacher.program import ProgramBackend
from tutorloop.actors.teacher.replay import ReplayBackend
from tutorloop.loop.core.teacher_config import TeacherSection


class TeacherRouter:
    """The backends of every configured teacher; routes a request by its teacher name. Never raises."""

    def __init__(self, cfg: TeacherSection, data_dir: str = "data", share: int = 1) -> None:
        self.backends: dict[str, Any] = {}
        for endpoint in cfg.teachers:
            if endpoint.backend == "openai":
                self.backends[endpoint.name] = OpenAIBackend(endpoint, cfg, share)
            elif endpoint.backend == "replay":
                self.backends[endpoint.name] = ReplayBackend(endpoint, data_dir)
            else:
                self.backends[endpoint.name] = ProgramBackend(endpoint)

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        backend = self.backends.get(request.teacher)
        if backend is None:
            return call_record(request, status="failed", error=f"no teacher named {request.teacher!r} in the config")
        try:
            return await backend.complete(request)
        except Exception as exc:  # a bug or an unexpected client error: record it, keep the run going
            secret = getattr(backend, "_secret", "")
            return call_record(request, status="failed", error=redact(f"{type(exc).__name__}: {exc}", (secret,)))

    async def aclose(self) -> None:
        for backend in self.backends.values():
            if hasattr(backend, "aclose"):
                await backend.aclose()
