"""The teaching session end to end: cache, persist-before-use, grading, budget, replay, tailoring, Ray."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from teacher_server import TeacherServer

from tutorloop.actors.teacher import CALL_COLUMNS, LocalTeacherPool
from tutorloop.loop.core.config import DataSection
from tutorloop.loop.core.datasets import Example, load_examples, load_recorded_teacher, normalize_question
from tutorloop.loop.core.records import RationaleRecord, columns
from tutorloop.loop.core.synthetic import generate_problems
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.strategies import clean_rationale
from tutorloop.loop.teaching import TeachingSession
from tutorloop.loop.teaching_plan import estimate_cost, plan_jobs

EXAMPLES = generate_problems(6, seed=5, min_steps=2, max_steps=3, max_value=9)
PLANTED_KEY = "sk-test-PLANTED-00112233445566778899aabb"


class DictCache:
    """The driver's cache in miniature: persist stores records, lookup reads them back."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.batches: list[list[dict]] = []

    def lookup(self, hashes: list[str]) -> dict[str, dict]:
        return {h: self.records[h] for h in hashes if h in self.records}

    def persist(self, records: list[dict]) -> None:
        self.batches.append(records)
        for record in records:
            assert record["request_hash"] not in self.records, "a stored request was sent again"
            self.records[record["request_hash"]] = record


def server_cfg(server: TeacherServer, **extra: object) -> TeacherSection:
    return TeacherSection.model_validate(
        {
            "teachers": [{"name": "t", "backend": "openai", "model": "program", "base_url": server.base_url}],
            "retry_backoff_s": 0.02,
            "timeout_s": 2.0,
            **extra,
        }
    )


def run_session(cfg: TeacherSection, jobs: list, cache: DictCache, spent: float = 0.0):
    with LocalTeacherPool(cfg) as pool:
        return TeachingSession(cfg, jobs, cache.lookup, pool, cache.persist, spent_usd=spent, progress=False).run()


def by_strategy(outcome) -> dict[tuple[str, str], dict]:
    return {(r["strategy"], r["example_id"]): r for r in outcome.rationales}


def test_strategies_through_server_cache_and_persist_order(teacher_server: TeacherServer) -> None:
    cfg = server_cfg(
        teacher_server, strategies=["zero_shot_cot", "cote", "rp", "crop", "few_shot_cot", "teacher_forcing"]
    )
    jobs = plan_jobs(EXAMPLES, cfg, 0)
    cache = DictCache()
    seen_by_server: dict[str, int] = {}  # stage-1 hash -> server calls when it was persisted

    def persist(records: list[dict]) -> None:
        for record in records:
            seen_by_server[record["request_hash"]] = teacher_server.calls
        cache.persist(records)

    with LocalTeacherPool(cfg) as pool:
        outcome = TeachingSession(cfg, jobs, cache.lookup, pool, persist, progress=False).run()
    assert len(outcome.rationales) == len(jobs) == 36
    assert all(tuple(r) == columns(RationaleRecord) for r in outcome.rationales)
    assert all(r["accepted"] and r["reject_reason"] is None for r in outcome.rationales), outcome.rationales
    for example in EXAMPLES:
        for strategy in ("zero_shot_cot", "cote", "rp", "crop", "few_shot_cot", "teacher_forcing"):
            record = by_strategy(outcome)[(strategy, example.id)]
            assert record["rationale"] == example.rationale and record["extracted"] == example.answer
            assert record["task"] == "explain" and record["request_hash"] in cache.records
    # zero-shot CoT: 2 calls; cote and crop share their identical first request: 6 * (2 + 1 + 1 + 1 + 1) calls
    assert outcome.calls_sent == teacher_server.calls == len(cache.records) == 36
    assert outcome.cache_hits == 0 and "36 calls sent" in outcome.message
    assert all(tuple(r) == CALL_COLUMNS for r in cache.records.values())
    # every stage-2 prompt reached the server only after its stage-1 answer was persisted
    stage1 = {r["request_hash"]: r for r in cache.records.values() if r["stage"] == "reason"}
    for index, entry in enumerate(teacher_server.requests):
        if entry["prompt"].endswith("(arabic numerals) is"):
            parent = [
                h
                for h, r in stage1.items()
                if entry["prompt"].startswith(json.loads(r["request"])["messages"][0]["content"])
            ]
            assert len(parent) == 1 and seen_by_server[parent[0]] <= index
    # the same jobs again: everything from the cache, not one request sent
    again = run_session(cfg, jobs, cache)
    assert teacher_server.calls == 36 and again.calls_sent == 0 and again.cache_hits == 36
    assert again.rationales == outcome.rationales


def test_faults_during_a_session_lose_nothing(teacher_server: TeacherServer) -> None:
    cfg = server_cfg(teacher_server, strategies=["zero_shot_cot"], concurrency=4)
    teacher_server.retry_after = "0.05"
    teacher_server.script("429", "500", "503", "reset", "truncated_json", "empty_choices", "length", "hang")
    cache = DictCache()
    outcome = run_session(cfg.model_copy(update={"timeout_s": 0.5}), plan_jobs(EXAMPLES, cfg, 0), cache)
    assert all(r["accepted"] for r in outcome.rationales)
    assert outcome.calls_sent == len(cache.records) == 12
    assert teacher_server.calls == 12 + 8
    assert sum(r["attempts"] for r in cache.records.values()) == 20


def test_wrong_answers_are_rejected(teacher_server: TeacherServer) -> None:
    cfg = server_cfg(teacher_server, strategies=["cote"])
    wrong_gold = dataclasses.replace(EXAMPLES[0], answer=str(int(EXAMPLES[0].answer) + 1))
    not_synthetic = Example(id="x/train/0", dataset="x", split="train", question="Why is the sky blue?", answer="7")
    outcome = run_session(cfg, plan_jobs([wrong_gold, not_synthetic, EXAMPLES[1]], cfg, 0), DictCache())
    wrong, refused, right = outcome.rationales
    assert not wrong["accepted"] and wrong["reject_reason"] == "wrong_answer"
    assert wrong["extracted"] == EXAMPLES[0].answer and wrong["rationale"] == EXAMPLES[0].rationale
    assert not refused["accepted"] and refused["reject_reason"] == "no_answer" and refused["extracted"] is None
    assert right["accepted"]


def test_crop_falls_back_to_rp(teacher_server: TeacherServer) -> None:
    cfg = server_cfg(teacher_server, strategies=["crop"], retry_unusable=False)
    teacher_server.rule("Reason step by step, then end with", "length")  # only the COTE prompt
    cache = DictCache()
    outcome = run_session(cfg, plan_jobs(EXAMPLES[:1], cfg, 0), cache)
    (record,) = outcome.rationales
    assert record["accepted"] and record["strategy"] == "crop"
    assert cache.records[record["request_hash"]]["stage"] == "rp"
    assert sorted(r["status"] for r in cache.records.values()) == ["ok", "unusable"]
    # unusable everywhere: the job ends rejected with the reason of its last call
    teacher_server.rule("Reason step by step, then end with", "length")
    teacher_server.rule("Explain step by step how to reach it", "empty_text")
    outcome = run_session(cfg, plan_jobs(EXAMPLES[1:2], cfg, 0), DictCache())
    assert outcome.rationales[0]["reject_reason"] == "empty"


def test_budget_stops_sending_and_says_so(teacher_server: TeacherServer) -> None:
    cfg = server_cfg(teacher_server, strategies=["cote"], max_tokens=100)
    cfg.teachers[0].price.input_per_mtok = 1000.0
    cfg.teachers[0].price.output_per_mtok = 1000.0
    jobs = plan_jobs(EXAMPLES, cfg, 0)
    estimate = estimate_cost(jobs, cfg)
    per_request = estimate["max_cost_usd"] / len(jobs)
    assert teacher_server.calls == 0 and estimate["requests"] == len(jobs)
    cfg.max_cost_usd = 2.5 * per_request + 0.5 * per_request  # room for three worst-case requests after 0.5 spent
    cache = DictCache()
    outcome = run_session(cfg, jobs, cache, spent=0.5 * per_request)
    assert outcome.budget_exhausted and "budget" in outcome.message
    assert outcome.calls_sent == teacher_server.calls == 2
    assert outcome.cost_usd <= cfg.max_cost_usd - 0.5 * per_request
    reasons = [r["reject_reason"] for r in outcome.rationales]
    assert reasons == [None, None, "budget", "budget", "budget", "budget"]
    assert all(r["request_hash"] is None for r in outcome.rationales[2:])
    # nothing left: no request at all, but cached answers still serve
    outcome = run_session(cfg, jobs, cache, spent=cfg.max_cost_usd)
    assert outcome.budget_exhausted and outcome.calls_sent == 0 and teacher_server.calls == 2
    assert [r["accepted"] for r in outcome.rationales] == [True, True, False, False, False, False]


def test_estimate_cost_counts_stages() -> None:
    cfg = TeacherSection.model_validate(
        {
            "teachers": [
                {"name": "a", "backend": "program", "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
                {"name": "b", "backend": "program", "model": "other"},
            ],
            "strategies": ["zero_shot_cot", "crop"],
            "max_tokens": 100,
        }
    )
    jobs = plan_jobs(EXAMPLES[:2], cfg, 0)
    estimate = estimate_cost(jobs, cfg)
    assert estimate["requests"] == 2 * 2 * 4  # 2 examples, 2 teachers, zs 2 + crop 2
    a = estimate["teachers"]["a"]
    assert a["max_tokens_out"] == 2 * (100 + 32 + 100 + 100)
    assert a["max_cost_usd"] == pytest.approx((a["tokens_in"] * 1.0 + a["max_tokens_out"] * 2.0) / 1e6)
    assert estimate["teachers"]["b"]["max_cost_usd"] == 0.0


def test_replay_matches_recording_and_reports_misses() -> None:
    cfg = TeacherSection()  # the default: one replay teacher, zero-shot CoT
    examples = load_examples(DataSection(task="multiarith"), "train")[:3]
    recorded = load_recorded_teacher("data", "multiarith")
    unknown = dataclasses.replace(examples[0], id="multiarith/train/x", question="How many legs do 3 cats have?")
    cache = DictCache()
    outcome = run_session(cfg, plan_jobs(examples + [unknown], cfg, 0), cache)
    for example, record in zip(examples, outcome.rationales):
        first = recorded[normalize_question(example.question)][0]
        if first["reasoning_finish_reason"] == "length":  # a recording cut off at 128 tokens is not used
            assert record["reject_reason"] == "truncated" and record["rationale"] is None
            assert cache.records[record["request_hash"]]["status"] == "unusable"
            continue
        assert record["rationale"] == clean_rationale(first["reasoning_completion"])
        answer_call = cache.records[record["request_hash"]]
        assert answer_call["response"] == first["completion"] and answer_call["cost_usd"] == 0
        assert record["accepted"] == (record["extracted"] == example.answer)
    assert [r["reject_reason"] for r in outcome.rationales[:3]] == [None, "truncated", None]
    assert outcome.rationales[0]["rationale"].endswith("39 pieces left.")
    missed = outcome.rationales[-1]
    assert not missed["accepted"] and missed["reject_reason"] == "miss"
    miss_call = cache.records[missed["request_hash"]]
    assert miss_call["status"] == "miss" and miss_call["response"] is None and miss_call["stage"] == "reason"
    assert outcome.calls_sent == 2 + 1 + 2 + 1  # the truncated one gets no stage 2


def test_tailored_feedback_corrects_a_planted_step(teacher_server: TeacherServer) -> None:
    example = EXAMPLES[0]
    steps = example.meta["steps"]
    planted = dict(steps[1], result=steps[1]["result"] + 3)  # step 2 computed wrongly
    wrong = (
        f"Step: {steps[0]['a']} {steps[0]['op']} {steps[0]['b']} = {steps[0]['result']}. "
        f"Step: {planted['a']} {planted['op']} {planted['b']} = {planted['result']}.\n"
        f"Therefore, the answer is {planted['result']}."
    )
    mistakes = {example.id: [{"output": wrong, "extracted": str(planted["result"])}]}
    expected = (
        f"Step 2 miscalculates: {steps[1]['a']} {steps[1]['op']} {steps[1]['b']} is {steps[1]['result']}, "
        f"not {planted['result']}."
    )
    remote = server_cfg(teacher_server, strategies=["tailored"])
    local = TeacherSection.model_validate(
        {"teachers": [{"name": "t", "backend": "program", "model": "program", "task_tag": "tailor"}]}
    )
    for cfg in (remote, local):
        cache = DictCache()
        outcome = run_session(cfg, plan_jobs(EXAMPLES, cfg, 3, ["tailored"], mistakes), cache)
        (record,) = outcome.rationales  # only the example with a mistake is taught
        assert record["feedback"] == expected
        assert record["rationale"] == example.rationale and record["extracted"] == example.answer
        # The store gives the rationale its round; the call it came from names the round itself.
        assert record["accepted"] and "round" not in record and cache.records[record["request_hash"]]["round"] == 3
        assert record["task"] == ("tailor" if cfg is local else "explain")
    assert teacher_server.calls == 1


def test_multi_teacher_tags(teacher_server: TeacherServer) -> None:
    cfg = TeacherSection.model_validate(
        {
            "teachers": [
                {
                    "name": "big",
                    "backend": "openai",
                    "model": "program",
                    "base_url": teacher_server.base_url,
                    "task_tag": "big",
                },
                {"name": "prog", "backend": "program", "model": "program"},
            ],
            "strategies": ["rp"],
            "retry_backoff_s": 0.02,
        }
    )
    outcome = run_session(cfg, plan_jobs(EXAMPLES[:2], cfg, 0), DictCache())
    assert sorted((r["teacher"], r["task"]) for r in outcome.rationales) == [
        ("big", "big"),
        ("big", "big"),
        ("prog", "explain"),
        ("prog", "explain"),
    ]
    assert all(r["accepted"] for r in outcome.rationales)
    assert teacher_server.calls == 2


def test_planted_key_stays_out_of_session_output(
    teacher_server: TeacherServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("TEACHER_KEY", PLANTED_KEY)
    caplog.set_level(logging.DEBUG)
    cfg = TeacherSection.model_validate(
        {
            "teachers": [
                {
                    "name": "t",
                    "backend": "openai",
                    "model": "program",
                    "base_url": teacher_server.base_url,
                    "api_key_env": "TEACHER_KEY",
                }
            ],
            "strategies": ["zero_shot_cot"],
            "retry_backoff_s": 0.02,
        }
    )
    teacher_server.rule(EXAMPLES[0].question, "401")
    cache = DictCache()
    with LocalTeacherPool(cfg) as pool:
        outcome = TeachingSession(
            cfg, plan_jobs(EXAMPLES[:2], cfg, 0), cache.lookup, pool, cache.persist, progress=True
        ).run()
    assert [r["reject_reason"] for r in outcome.rationales] == ["failed", None]
    assert teacher_server.requests[0]["auth"] == f"Bearer {PLANTED_KEY}"
    out, err = capsys.readouterr()
    dumped = json.dumps([list(cache.records.values()), outcome.rationales, outcome.message])
    for text in (dumped, caplog.text, out, err):
        assert "PLANTED" not in text
    assert "HTTP 401" in dumped


def test_ray_pool_runs_requests(teacher_server: TeacherServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from tutorloop.actors.teacher import RayTeacherPool

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = TeacherSection.model_validate(
            {
                "teachers": [
                    {"name": "t", "backend": "openai", "model": "program", "base_url": teacher_server.base_url},
                    {"name": "p", "backend": "program", "model": "p"},
                ],
                "strategies": ["zero_shot_cot"],
                "retry_backoff_s": 0.02,
                "concurrency": 4,
            }
        )
        teacher_server.script("500", "reset")
        pool = RayTeacherPool(cfg, num_actors=2, num_cpus=0.25)
        try:
            cache = DictCache()
            outcome = TeachingSession(
                cfg, plan_jobs(EXAMPLES, cfg, 0), cache.lookup, pool, cache.persist, progress=False
            ).run()
        finally:
            pool.close()
        assert len(outcome.rationales) == 12 and all(r["accepted"] for r in outcome.rationales)
        assert outcome.calls_sent == len(cache.records) == 24
        assert teacher_server.calls == 12 + 2
    finally:
        if started_here:
            ray.shutdown()


class Killed(Exception):
    """Stands for the driver dying between an answer's arrival and its store write."""


def test_journal_keeps_answers_that_never_reached_the_store(teacher_server: TeacherServer, tmp_path) -> None:
    from tutorloop.store.journal import TeacherJournal

    cfg = server_cfg(teacher_server, strategies=["cote"], concurrency=3)
    jobs = plan_jobs(EXAMPLES, cfg, 0)

    def die(records: list[dict]) -> None:
        raise Killed

    journal = TeacherJournal(tmp_path)
    with LocalTeacherPool(cfg) as pool, pytest.raises(Killed):
        TeachingSession(cfg, jobs, DictCache().lookup, pool, die, progress=False, journal=journal).run()
    journal.close()
    recovered = TeacherJournal(tmp_path).recover()
    first_calls = teacher_server.settle()
    assert recovered.answers and len(recovered.answers) + len(recovered.in_flight) == 3
    assert {a["request_hash"] for a in recovered.answers}.isdisjoint(recovered.in_flight)

    # Resuming as the engine does: the recovered answers are stored first and never asked for again.
    cache = DictCache()
    cache.persist(recovered.answers)
    with LocalTeacherPool(cfg) as pool:
        outcome = TeachingSession(
            cfg, jobs, cache.lookup, pool, cache.persist, progress=False, journal=TeacherJournal(tmp_path)
        ).run()
    assert all(r["accepted"] for r in outcome.rationales) and len(outcome.rationales) == 6
    assert outcome.cache_hits == len(recovered.answers)
    assert teacher_server.calls - first_calls == outcome.calls_sent == 6 - len(recovered.answers)
    answered_prompts = {json.loads(a["request"])["messages"][-1]["content"] for a in recovered.answers}
    sent_again = [r["prompt"] for r in teacher_server.requests[first_calls:]]
    assert answered_prompts.isdisjoint(sent_again)
