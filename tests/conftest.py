"""Shared fixtures. The local OpenAI-compatible teacher server (tests/teacher_server.py)."""

from __future__ import annotations

from typing import Iterator

import pytest
from teacher_server import TeacherServer


@pytest.fixture
def teacher_server() -> Iterator[TeacherServer]:
    """A started TeacherServer on 127.0.0.1 (free port), stopped at teardown."""
    with TeacherServer() as server:
        yield server
