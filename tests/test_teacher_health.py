"""A teacher that is not there: the preflight, the circuit breaker, and a run through the CLI.

Real HTTP throughout: the local fault-injecting server (tests/teacher_server.py), closed ports,
a socket that accepts and never answers, and a real `tutorloop run` in a subprocess.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from teacher_server import TeacherServer

from tutorloop.actors.teacher import LocalTeacherPool, TeacherUnavailable, check_teacher
from tutorloop.loop.core.synthetic import generate_problems
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.teaching import TeachingSession
from tutorloop.loop.teaching_plan import plan_jobs
from tutorloop.store.journal import TeacherJournal

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = generate_problems(12, seed=7, min_steps=1, max_steps=2, max_value=9)
PLANTED_KEY = "sk-test-PLANTED-a1b2c3d4e5f60718293a"
REFUSED = "connection refused (nothing listens there)"
PROGRESS_BAR = re.compile(r"^teacher: +\d+%\|.*\| \d+/\d+ \[")


def closed_port() -> int:
    """A port nothing listens on: bound, noted, closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def teacher_cfg(base_url: str, model: str = "program", api: str = "chat", **extra: object) -> TeacherSection:
    return TeacherSection.model_validate(
        {
            "teachers": [
                {
                    "name": "t",
                    "backend": "openai",
                    "model": model,
                    "base_url": base_url,
                    "api": api,
                    "api_key_env": "TEACHER_KEY",
                }
            ],
            "strategies": ["cote"],
            "retry_backoff_s": 0.02,
            "timeout_s": 2.0,
            **extra,
        }
    )


def preflight_error(cfg: TeacherSection) -> str:
    with pytest.raises(TeacherUnavailable) as caught:
        check_teacher(cfg.teachers[0], cfg)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


# ----- the preflight -------------------------------------------------------------------------------
def test_preflight_passes_with_one_listing(teacher_server: TeacherServer) -> None:
    check_teacher(teacher_cfg(teacher_server.base_url).teachers[0], teacher_cfg(teacher_server.base_url))
    assert teacher_server.model_listings == 1 and teacher_server.calls == 0


def test_preflight_names_a_closed_port() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    assert preflight_error(teacher_cfg(base_url)) == f"teacher 't' at {base_url}: {REFUSED}"
    assert time.monotonic() - started < 5


def test_preflight_names_an_unknown_host() -> None:
    message = preflight_error(teacher_cfg("http://no-such-host.invalid/v1"))
    assert message == "teacher 't' at http://no-such-host.invalid/v1: host not found (DNS)"


def test_preflight_times_out_on_a_silent_server(silent_port: int) -> None:
    started = time.monotonic()
    message = preflight_error(teacher_cfg(f"http://127.0.0.1:{silent_port}/v1", timeout_s=0.5))
    assert message == f"teacher 't' at http://127.0.0.1:{silent_port}/v1: timeout (no answer within 0.5 s)"
    assert time.monotonic() - started < 5


def test_preflight_timeout_is_a_config_key(silent_port: int) -> None:
    started = time.monotonic()
    cfg = teacher_cfg(f"http://127.0.0.1:{silent_port}/v1", timeout_s=60, preflight_timeout_s=0.5)
    assert preflight_error(cfg).endswith(": timeout (no answer within 0.5 s)")
    assert time.monotonic() - started < 5


def test_preflight_unknown_model_names_the_offered_ones() -> None:
    with TeacherServer(models=["program", "gpt-x"]) as server:
        message = preflight_error(teacher_cfg(server.base_url, model="wrong"))
        assert message == f"teacher 't' at {server.base_url}: unknown model 'wrong'; the server offers: program, gpt-x"
        assert server.calls == 1  # the one-token request that confirmed it
    with TeacherServer(models=[f"m{i}" for i in range(20)]) as server:
        message = preflight_error(teacher_cfg(server.base_url, model="wrong"))
        assert message.endswith("the server offers: m0, m1, m2, m3, m4, m5, m6, m7, ... (20 in all)")


def test_preflight_accepts_an_unlisted_model_the_server_answers(teacher_server: TeacherServer) -> None:
    # llama.cpp without an alias lists its file name and answers to any model name
    cfg = teacher_cfg(teacher_server.base_url, model="my-alias", api="completions")
    check_teacher(cfg.teachers[0], cfg)
    assert teacher_server.calls == 1
    sent = teacher_server.requests[0]
    assert sent["path"].endswith("/v1/completions") and sent["body"]["max_tokens"] == 1


def test_preflight_without_a_models_route_sends_one_token() -> None:
    with TeacherServer(models=["program"], list_models=False) as server:
        cfg = teacher_cfg(server.base_url)
        check_teacher(cfg.teachers[0], cfg)
        assert server.model_listings == 1 and server.calls == 1
        assert server.requests[0]["path"].endswith("/v1/chat/completions")
        message = preflight_error(teacher_cfg(server.base_url, model="nope"))
        assert message.startswith(f"teacher 't' at {server.base_url}: HTTP 404 for model 'nope': unknown model")


def test_preflight_names_the_key_variable_never_the_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TeacherServer(api_key="sk-test-RIGHT-00000000000000") as server:
        cfg = teacher_cfg(server.base_url)
        monkeypatch.delenv("TEACHER_KEY", raising=False)
        assert preflight_error(cfg) == (
            f"teacher 't' at {server.base_url}: HTTP 401, the server wants an API key and $TEACHER_KEY is not set"
        )
        monkeypatch.setenv("TEACHER_KEY", PLANTED_KEY)
        message = preflight_error(cfg)
        assert message == f"teacher 't' at {server.base_url}: HTTP 401, the server refused the API key in $TEACHER_KEY"
        monkeypatch.setenv("TEACHER_KEY", "sk-test-RIGHT-00000000000000")
        check_teacher(cfg.teachers[0], cfg)
    assert "PLANTED" not in caplog.text


def test_other_backends_need_no_server() -> None:
    cfg = TeacherSection.model_validate(
        {"teachers": [{"name": "p", "backend": "program", "model": "p"}, {"name": "r", "backend": "replay"}]}
    )
    for endpoint in cfg.teachers:
        check_teacher(endpoint, cfg)  # no address at all, nothing to reach


# ----- the preflight in a teaching session ---------------------------------------------------------
class Store:
    """persist and lookup of the driver in miniature."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}

    def lookup(self, hashes: list[str]) -> dict[str, dict]:
        return {h: self.records[h] for h in hashes if h in self.records}

    def persist(self, records: list[dict]) -> None:
        self.records.update((r["request_hash"], r) for r in records)


def test_session_sends_nothing_to_a_closed_port(tmp_path: Path) -> None:
    cfg = teacher_cfg(f"http://127.0.0.1:{closed_port()}/v1")
    store, journal = Store(), TeacherJournal(tmp_path)
    with LocalTeacherPool(cfg) as pool, pytest.raises(TeacherUnavailable, match=re.escape(REFUSED)):
        TeachingSession(
            cfg, plan_jobs(EXAMPLES, cfg, 0), store.lookup, pool, store.persist, progress=False, journal=journal
        ).run()
    journal.close()
    assert not store.records and not journal.path.exists()  # not one request went out


def test_a_cached_phase_needs_no_server(teacher_server: TeacherServer) -> None:
    cfg = teacher_cfg(teacher_server.base_url)
    jobs, store = plan_jobs(EXAMPLES, cfg, 0), Store()
    checked: list[str] = []

    def counted(endpoint, section) -> None:
        checked.append(endpoint.name)
        check_teacher(endpoint, section)

    with LocalTeacherPool(cfg) as pool:
        first = TeachingSession(cfg, jobs, store.lookup, pool, store.persist, progress=False, preflight=counted).run()
    assert checked == ["t"] and first.calls_sent == len(EXAMPLES)  # one preflight for the whole phase
    teacher_server.stop()
    with LocalTeacherPool(cfg) as pool:
        again = TeachingSession(cfg, jobs, store.lookup, pool, store.persist, progress=False, preflight=counted).run()
    assert checked == ["t"] and again.calls_sent == 0 and again.rationales == first.rationales


# ----- the circuit breaker -------------------------------------------------------------------------
def run_until_broken(cfg: TeacherSection, pool, journal: TeacherJournal, after_first, store: Store) -> str:
    """Runs a session whose persist calls `after_first()` after the first stored batch; the error line."""

    def persist(records: list[dict]) -> None:
        first = not store.records
        store.persist(records)
        if first:
            after_first()

    with pytest.raises(TeacherUnavailable) as caught:
        TeachingSession(
            cfg, plan_jobs(EXAMPLES, cfg, 0), store.lookup, pool, persist, progress=False, journal=journal
        ).run()
    return str(caught.value)


def broken(message: str, base_url: str) -> str:
    """The cause at the end of a breaker's line, checked to name the address and a count up to the limit."""
    found = re.fullmatch(
        rf"teacher 't' at {re.escape(base_url)}: stopped after (\d+) connection failures in a "
        r"row: (.+)",
        message,
    )
    assert found and 1 <= int(found[1]) <= 8, message
    return found[2]


def check_kept(store: Store, journal: TeacherJournal) -> None:
    """Answers before the break are stored and journaled; the cut-off requests are in flight, to be sent again."""
    journal.close()
    assert store.records and all(r["status"] == "ok" for r in store.records.values())
    recovered = TeacherJournal(journal.path.parent).recover()
    assert {a["request_hash"] for a in recovered.answers} == set(store.records)
    assert recovered.in_flight and set(recovered.in_flight).isdisjoint(store.records)


def test_breaker_stops_a_phase_whose_server_went_away(
    teacher_server: TeacherServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tutorloop.teacher")
    base_url = teacher_server.base_url
    cfg = teacher_cfg(base_url, concurrency=2, max_retries=5)
    store, journal = Store(), TeacherJournal(tmp_path)
    started = time.monotonic()
    with LocalTeacherPool(cfg) as pool:
        message = run_until_broken(cfg, pool, journal, teacher_server.stop, store)
    assert broken(message, base_url) == REFUSED
    assert time.monotonic() - started < 10
    assert not [r for r in caplog.records if "gave up" in r.getMessage()]  # no request logged its own end
    check_kept(store, journal)


def test_breaker_stops_on_dropped_connections(teacher_server: TeacherServer, tmp_path: Path) -> None:
    cfg = teacher_cfg(teacher_server.base_url, concurrency=3, max_retries=5)
    store, journal = Store(), TeacherJournal(tmp_path)
    with LocalTeacherPool(cfg) as pool:
        message = run_until_broken(cfg, pool, journal, lambda: teacher_server.script(*["reset"] * 100), store)
    assert broken(message, teacher_server.base_url) in (
        "connection reset by the server",
        "the server closed the connection without an answer",
    )
    check_kept(store, journal)


def test_breaker_limit_is_a_config_key(teacher_server: TeacherServer, tmp_path: Path) -> None:
    cfg = teacher_cfg(teacher_server.base_url, concurrency=1, max_retries=5, max_consecutive_failures=3)
    store, journal = Store(), TeacherJournal(tmp_path)
    with LocalTeacherPool(cfg) as pool:
        message = run_until_broken(cfg, pool, journal, lambda: teacher_server.script(*["reset"] * 100), store)
    assert "stopped after 3 connection failures in a row" in message, message
    check_kept(store, journal)


def test_http_errors_do_not_trip_the_breaker(teacher_server: TeacherServer) -> None:
    # 12 answers in a row that a retry fixes: the server is there, whatever it says
    teacher_server.retry_after = "0"
    teacher_server.script(*["500", "429", "503"] * 4)
    cfg = teacher_cfg(teacher_server.base_url, concurrency=1, max_retries=12, retry_backoff_max_s=0.05)
    store = Store()
    with LocalTeacherPool(cfg) as pool:
        outcome = TeachingSession(
            cfg, plan_jobs(EXAMPLES[:2], cfg, 0), store.lookup, pool, store.persist, progress=False
        ).run()
    assert all(r["accepted"] for r in outcome.rationales)
    assert teacher_server.calls == 2 + 12


def test_one_request_the_server_keeps_dropping_is_a_failure_not_a_break(teacher_server: TeacherServer) -> None:
    # every attempt of this one question is reset, yet the server answers GET /models: the request
    # fails on its own (stored, as any failure) and the phase goes on
    teacher_server.rule(EXAMPLES[0].question, *["reset"] * 6)
    cfg = teacher_cfg(teacher_server.base_url, concurrency=1, max_retries=5)
    store = Store()
    with LocalTeacherPool(cfg) as pool:
        outcome = TeachingSession(
            cfg, plan_jobs(EXAMPLES[:3], cfg, 0), store.lookup, pool, store.persist, progress=False
        ).run()
    assert [r["reject_reason"] for r in outcome.rationales] == ["failed", None, None]
    failed = store.records[outcome.rationales[0]["request_hash"]]
    assert failed["status"] == "failed" and failed["attempts"] == 6


def test_ray_pool_preflight_and_breaker(
    teacher_server: TeacherServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from tutorloop.actors.teacher import RayTeacherPool

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        closed = teacher_cfg(f"http://127.0.0.1:{closed_port()}/v1")
        pool = RayTeacherPool(closed, num_actors=2, num_cpus=0.25)
        try:
            with pytest.raises(TeacherUnavailable, match=re.escape(REFUSED)):
                TeachingSession(
                    closed, plan_jobs(EXAMPLES, closed, 0), Store().lookup, pool, Store().persist, progress=False
                ).run()
        finally:
            pool.close()
        base_url = teacher_server.base_url
        cfg = teacher_cfg(base_url, concurrency=4, max_retries=5)
        store, journal = Store(), TeacherJournal(tmp_path)
        pool = RayTeacherPool(cfg, num_actors=2, num_cpus=0.25)
        try:
            message = run_until_broken(cfg, pool, journal, teacher_server.stop, store)
        finally:
            pool.close()
        assert broken(message, base_url) == REFUSED  # each actor counts its own share of the failures
        check_kept(store, journal)
    finally:
        if started_here:
            ray.shutdown()


# ----- as a new user would meet it -----------------------------------------------------------------
@pytest.mark.slow
def test_run_with_a_closed_teacher_port_fails_fast(tmp_path: Path) -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    overrides = [
        "run.baseline=false",
        "data.synthetic.train_size=48",
        "data.synthetic.test_size=24",
        "teacher.teachers.0.backend=openai",
        f"teacher.teachers.0.base_url={base_url}",
    ]
    command = [
        sys.executable,
        "-m",
        "tutorloop.loop.cli",
        "run",
        "configs/quick.yaml",
        "--run-dir",
        str(tmp_path / "quick"),
        *[a for o in overrides for a in ("--set", o)],
    ]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    # Besides the teacher's progress bar (erased on a terminal, one line per update in a pipe), the
    # error is the one line on stderr (the engine may add where to resume).
    lines = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip()]
    errors = [line for line in lines if not PROGRESS_BAR.match(line)]
    expected = f"tutorloop: error: teacher 'program' at {base_url}: {REFUSED}"
    assert len(errors) == 1 and re.fullmatch(
        re.escape(expected) + r"(; resume with `tutorloop resume \S+`)?", errors[0]
    ), result.stderr
    assert base_url not in result.stdout
    assert elapsed < 90, f"took {elapsed:.1f} s"
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "tutorloop.loop.cli",
            "sql",
            str(tmp_path / "quick"),
            "SELECT status FROM runs",
            "--format",
            "csv",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.stdout.split() == ["status", "failed"], status.stdout + status.stderr
