"""Teacher backends through the real openai client and the local fault-injecting server."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from teacher_server import TeacherServer

from tutorloop.actors.teacher import (
    CALL_COLUMNS,
    LocalTeacherPool,
    TeacherRequest,
    TokenBucket,
    estimate_tokens,
    program,
    redact,
    retry_after_seconds,
)
from tutorloop.loop.core.synthetic import generate_problems
from tutorloop.loop.core.teacher_config import TeacherSection

PLANTED_KEY = "sk-test-PLANTED-9f8e7d6c5b4a3210fedcba"
QUESTIONS = [e.question for e in generate_problems(6, seed=3, min_steps=1, max_steps=3, max_value=9)]


def openai_cfg(server: TeacherServer, api: str = "chat", **overrides: object) -> TeacherSection:
    data = {
        "teachers": [
            {
                "name": "t",
                "backend": "openai",
                "model": "program",
                "base_url": server.base_url,
                "api": api,
                "price": {"input_per_mtok": 2.0, "output_per_mtok": 8.0},
            }
        ],
        "retry_backoff_s": 0.02,
        "retry_backoff_max_s": 5.0,
        "timeout_s": 1.0,
        "max_retries": 3,
    }
    data.update(overrides)
    return TeacherSection.model_validate(data)


def request_for(question: str, api: str = "chat", backend: str = "openai", suffix: str = "") -> TeacherRequest:
    text = f"Q: {question}\nA: Let's think step by step.{suffix}"
    chat = api == "chat"
    return TeacherRequest(
        teacher="t",
        backend=backend,
        model="program",
        api=api,
        messages=[{"role": "user", "content": text}] if chat else None,
        prompt=None if chat else text,
        params={"temperature": 0.0, "max_tokens": 64},
        strategy="zero_shot_cot",
        example_id=question[:20],
        stage="reason",
    )


def run_all(cfg: TeacherSection, requests: list[TeacherRequest]) -> dict[str, dict]:
    with LocalTeacherPool(cfg) as pool:
        records = [r for group in pool.ask(requests) for r in group]
    by_hash = {r["request_hash"]: r for r in records}
    assert len(records) == len(requests) == len(by_hash)  # nothing lost, nothing duplicated
    assert set(by_hash) == {r.request_hash for r in requests}
    for record in records:
        assert tuple(record) == CALL_COLUMNS
    return by_hash


TRANSIENT = ["429", "500", "503", "hang", "reset", "truncated_json", "empty_choices", "empty_text", "length", "slow"]


@pytest.mark.parametrize("fault", TRANSIENT)
def test_every_fault_is_survived(teacher_server: TeacherServer, fault: str) -> None:
    teacher_server.retry_after = "0.1"
    teacher_server.slow_s = 0.3
    requests = [request_for(q) for q in QUESTIONS[:4]]
    teacher_server.rule(QUESTIONS[0], fault)
    records = run_all(openai_cfg(teacher_server), requests)
    for request in requests:
        record = records[request.request_hash]
        assert record["status"] == "ok", record["error"]
        assert record["response"] == program.respond(request.text())
        assert record["error"] is None
    faulted = records[requests[0].request_hash]
    assert faulted["attempts"] == (1 if fault == "slow" else 2)
    assert teacher_server.calls == (4 if fault == "slow" else 5)
    if fault == "slow":
        assert faulted["latency_s"] >= 0.3


def test_retry_after_is_honoured(teacher_server: TeacherServer) -> None:
    teacher_server.retry_after = "1"
    request = request_for(QUESTIONS[0])
    teacher_server.rule(QUESTIONS[0], "429", "429")
    started = time.monotonic()
    record = run_all(openai_cfg(teacher_server), [request])[request.request_hash]
    elapsed = time.monotonic() - started
    assert record["status"] == "ok" and record["attempts"] == 3
    assert teacher_server.calls == 3
    # two waits of Retry-After (1 s) plus at most 10% jitter each, not the 0.02 s backoff
    assert 2.0 <= elapsed < 3.0
    assert record["latency_s"] >= 2.0


def test_backoff_without_retry_after_grows(teacher_server: TeacherServer) -> None:
    request = request_for(QUESTIONS[0])
    teacher_server.rule(QUESTIONS[0], "500", "500", "500")
    started = time.monotonic()
    record = run_all(openai_cfg(teacher_server, retry_backoff_s=0.2), [request])[request.request_hash]
    elapsed = time.monotonic() - started
    # delays are 0.2, 0.4, 0.8 s times a jitter factor in [0.5, 1]: 0.7 .. 1.4 s in all
    assert record["attempts"] == 4 and record["status"] == "ok"
    assert 0.7 <= elapsed < 2.0


def test_retries_run_out(teacher_server: TeacherServer) -> None:
    requests = [request_for(q) for q in QUESTIONS[:3]]
    teacher_server.rule(QUESTIONS[0], *["503"] * 4)
    records = run_all(openai_cfg(teacher_server, max_retries=3), requests)
    failed = records[requests[0].request_hash]
    assert failed["status"] == "failed" and failed["attempts"] == 4
    assert failed["response"] is None and failed["error"].startswith("HTTP 503")
    assert all(records[r.request_hash]["status"] == "ok" for r in requests[1:])
    assert teacher_server.calls == 6


def test_unusable_policy(teacher_server: TeacherServer) -> None:
    request = request_for(QUESTIONS[0])
    teacher_server.rule(QUESTIONS[0], "length")
    record = run_all(openai_cfg(teacher_server, retry_unusable=False), [request])[request.request_hash]
    # recorded with its reason and the cut text, never passed off as ok
    assert record["status"] == "unusable" and record["attempts"] == 1
    assert record["error"].startswith("length:") and record["finish_reason"] == "length"
    assert record["response"] and len(record["response"]) < len(program.respond(request.text()))
    # retried but unusable every time: still unusable, and every attempt is billed
    teacher_server.rule(QUESTIONS[1], *["empty_choices"] * 3)
    request = request_for(QUESTIONS[1])
    record = run_all(openai_cfg(teacher_server, max_retries=2), [request])[request.request_hash]
    assert record["status"] == "unusable" and record["attempts"] == 3
    assert record["error"].startswith("empty_choices:") and record["tokens_in"] == 3 * estimate_tokens(request.text())


def test_timeout_then_give_up(teacher_server: TeacherServer) -> None:
    request = request_for(QUESTIONS[0])
    teacher_server.rule(QUESTIONS[0], "hang", "hang")
    started = time.monotonic()
    record = run_all(openai_cfg(teacher_server, timeout_s=0.5, max_retries=1), [request])[request.request_hash]
    assert record["status"] == "failed" and record["attempts"] == 2
    assert record["error"].startswith("timeout")
    assert 1.0 <= time.monotonic() - started < 5.0


def test_usage_tokens_and_cost(teacher_server: TeacherServer) -> None:
    with_usage, without = request_for(QUESTIONS[0]), request_for(QUESTIONS[1])
    teacher_server.rule(QUESTIONS[1], "no_usage")
    records = run_all(openai_cfg(teacher_server), [with_usage, without])
    served = records[with_usage.request_hash]
    # the server's usage counts the prompt text only; our own estimate adds 4 tokens of chat framing
    assert served["tokens_in"] == estimate_tokens(with_usage.text())
    assert served["tokens_out"] == estimate_tokens(served["response"])
    estimated = records[without.request_hash]
    assert estimated["tokens_in"] == without.tokens_in_estimate() == estimate_tokens(without.text()) + 4
    for record in records.values():
        assert record["cost_usd"] == pytest.approx((record["tokens_in"] * 2.0 + record["tokens_out"] * 8.0) / 1e6)
        assert record["cost_usd"] > 0


def test_completions_api_and_program_backend_agree(teacher_server: TeacherServer) -> None:
    requests = [
        request_for(QUESTIONS[0], api="completions"),
        request_for(QUESTIONS[1], api="completions", suffix=" x. Therefore, the answer is"),
    ]
    records = run_all(openai_cfg(teacher_server, api="completions"), requests)
    assert all(r["body"].get("prompt") for r in teacher_server.requests)
    assert all(r["path"].endswith("/v1/completions") for r in teacher_server.requests)
    local_cfg = TeacherSection.model_validate(
        {"teachers": [{"name": "t", "backend": "program", "model": "program", "api": "completions"}]}
    )
    local_requests = [
        request_for(QUESTIONS[0], "completions", "program"),
        request_for(QUESTIONS[1], "completions", "program", " x. Therefore, the answer is"),
    ]
    local = run_all(local_cfg, local_requests)
    for remote_request, local_request in zip(requests, local_requests):
        assert records[remote_request.request_hash]["response"] == local[local_request.request_hash]["response"]
    assert local[local_requests[1].request_hash]["response"].strip() == f"{generate_problems(6, 3, 1, 3, 9)[1].answer}."


def test_concurrency_limit(teacher_server: TeacherServer) -> None:
    teacher_server.latency_s = 0.2
    requests = [request_for(q, suffix=f" {i}") for i, q in enumerate(QUESTIONS * 2)]
    started = time.monotonic()
    records = run_all(openai_cfg(teacher_server, concurrency=3), requests)
    assert all(r["status"] == "ok" for r in records.values())
    assert teacher_server.max_in_flight == 3
    assert time.monotonic() - started >= 4 * 0.2  # 12 requests, 3 at a time


def test_requests_per_minute_limit(teacher_server: TeacherServer) -> None:
    # 120/min = 2 per second with a 6 s burst (12 requests): 16 requests need >= 2 s
    requests = [request_for(q, suffix=f" {i}") for i, q in enumerate(QUESTIONS * 3)][:16]
    started = time.monotonic()
    records = run_all(openai_cfg(teacher_server, requests_per_minute=120), requests)
    assert all(r["status"] == "ok" for r in records.values())
    assert time.monotonic() - started >= 1.9


def test_token_bucket_waits_for_refill() -> None:
    async def main() -> tuple[float, float]:
        bucket = TokenBucket(6000)  # 100 tokens/s, 600 burst
        started = time.monotonic()
        await bucket.acquire(600)
        first = time.monotonic() - started
        await bucket.acquire(50)
        return first, time.monotonic() - started

    first, second = asyncio.run(main())
    assert first < 0.05 and 0.45 <= second < 1.0


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert (
        25
        < retry_after_seconds(
            {"retry-after": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))}
        )
        <= 30
    )
    assert retry_after_seconds({}) is None


def test_planted_key_never_leaks(
    teacher_server: TeacherServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    caplog.set_level(logging.DEBUG)
    requests = [request_for(q) for q in QUESTIONS[:3]]
    teacher_server.rule(QUESTIONS[0], "401")
    teacher_server.rule(QUESTIONS[1], "500", "500", "500", "500")
    records = run_all(openai_cfg(teacher_server), requests)
    rejected = records[requests[0].request_hash]
    assert rejected["status"] == "failed" and rejected["attempts"] == 1  # 401 is not retried
    assert rejected["error"].startswith("HTTP 401") and "Incorrect API key" in rejected["error"]
    assert records[requests[1].request_hash]["status"] == "failed"
    assert records[requests[2].request_hash]["status"] == "ok"
    # the key did reach the server (so it had every chance to leak) ...
    assert all(r["auth"] == f"Bearer {PLANTED_KEY}" for r in teacher_server.requests)
    # ... and the server echoed it back in its 401 body, yet it is nowhere in what we kept or printed
    out, err = capsys.readouterr()
    for text in (json.dumps(list(records.values())), caplog.text, out, err):
        assert PLANTED_KEY not in text and "PLANTED" not in text


def test_redact() -> None:
    assert redact(f"Incorrect API key provided: {PLANTED_KEY}.") == "Incorrect API key provided: ***."
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert redact("key=hunter22 x", ("hunter22",)) == "key=*** x"
    assert redact("sk-proj-****abcd leaked") == "*** leaked"


def test_pool_sends_more_only_when_asked(teacher_server: TeacherServer, tmp_path) -> None:
    from tutorloop.store.journal import TeacherJournal

    teacher_server.latency_s = 0.1
    requests = [request_for(q) for q in QUESTIONS]
    journal = TeacherJournal(tmp_path)
    with LocalTeacherPool(openai_cfg(teacher_server, concurrency=2)) as pool:
        answers = pool.ask(requests, journal=journal)
        first = next(answers)
        time.sleep(0.5)  # the caller is busy: nothing more goes out meanwhile
        assert teacher_server.calls == 2
        answers.close()  # the caller stops early: nothing more goes out at all
        time.sleep(0.3)
    journal.close()
    assert teacher_server.calls == 2
    recovered = TeacherJournal(tmp_path).recover()
    assert len(recovered.answers) + len(recovered.in_flight) == 2
    assert {r["request_hash"] for r in first} <= {a["request_hash"] for a in recovered.answers}


def test_package_import_leaves_ray_and_openai_unloaded() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tutorloop.actors.teacher as t; loaded = [m for m in ('ray', 'openai') if m in sys.modules]; "
        "t.RayTeacherPool; print(loaded, 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["[]", "True"]
