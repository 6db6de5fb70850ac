"""What answers a teacher's requests, as part of their cache key (TeacherRequest.source).

The same prompt and model name asked of another endpoint, recording or model file is another
question: `openai` names its normalised address, a served teacher (`serve`) the sha256 of its model
file (its address is a fresh port each run), `replay` the sha256 of the recording it reads (the
user's own, else the shipped one of the request's dataset), `program` itself. Never a secret: the
address keeps no user or password, and the source is only hashed, never stored.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

from tutorloop.actors.teacher.health import base_url
from tutorloop.loop.core.datasets import recorded_path
from tutorloop.loop.core.errors import DataError
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection

_DEFAULT_PORTS = {"http": 80, "https": 443}
_file_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: a 1 GB model is read once


def normalized_url(url: str) -> str:
    """scheme://host[:port]/path: scheme and host lowercased, a default port and trailing slashes dropped."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:  # not a number: the openai client will fail on it anyway; keep it as written
        return url.strip().rstrip("/")
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def file_sha256(path: Path) -> str | None:
    """The sha256 of a file's content, once per (path, size, mtime) in this process; None if it cannot be read."""
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _file_hashes:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            _file_hashes[key] = digest.hexdigest()
        return _file_hashes[key]
    except OSError:
        return None


def _served_model(endpoint: TeacherEndpoint) -> str:
    from tutorloop.actors.serving import resolve_gguf  # imports Ray: only for served teachers

    try:
        digest = file_sha256(resolve_gguf(endpoint.serve.model))
    except DataError:  # not prepared on this machine (a dry run): the server cannot start, nothing is sent
        digest = None
    return f"served:sha256:{digest}" if digest else f"served:{endpoint.serve.model}"


def _recording(path: Path, name: str) -> str:
    digest = file_sha256(path)
    return f"replay:sha256:{digest}" if digest else f"replay:unreadable:{name}"


class AnswerSources:
    """The source of each teacher of a section (by name) for a request's dataset.

    Give it the configured section, not the one whose served teachers got their server's address."""

    def __init__(self, section: TeacherSection, data_dir: str = "data") -> None:
        self._endpoints = {endpoint.name: endpoint for endpoint in section.teachers}
        self._data_dir = data_dir
        self._known: dict[tuple[str, str], str] = {}

    def of(self, teacher: str, dataset: str) -> str:
        if (teacher, dataset) not in self._known:
            self._known[(teacher, dataset)] = self._source(self._endpoints[teacher], dataset)
        return self._known[(teacher, dataset)]

    def _source(self, endpoint: TeacherEndpoint, dataset: str) -> str:
        if endpoint.backend == "openai":
            return _served_model(endpoint) if endpoint.serve else f"openai:{normalized_url(base_url(endpoint))}"
        if endpoint.backend == "replay" and endpoint.recording:
            return _recording(Path(os.path.expanduser(endpoint.recording)), endpoint.recording)
        if endpoint.backend == "replay":
            return _recording(recorded_path(self._data_dir, dataset), f"shipped/{dataset}")
        return endpoint.backend  # program: the same function answers everywhere
