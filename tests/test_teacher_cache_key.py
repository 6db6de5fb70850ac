"""The teacher cache key names what answers a request: two replay teachers on their own recordings get
their own answers, a fork that changes the recording is not answered from its parent's cache, an
`openai` key follows the (normalised) address, a served one the model file; and a run stored before
the key named its source still resumes from its stored answers without sending them again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tutorloop.actors.teacher import LocalTeacherPool
from tutorloop.actors.teacher.sources import AnswerSources
from tutorloop.loop.call_keys import rekey_legacy_calls  # what the engine runs before a teach phase
from tutorloop.loop.core.config import Config, config_from_dict, load_config
from tutorloop.loop.core.datasets import Example, load_examples
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection
from tutorloop.loop.fork import fork_run
from tutorloop.loop.run_dir import create_run, stored_config
from tutorloop.loop.strategies import PromptBuilder, load_templates
from tutorloop.loop.teaching import TeachingOutcome, TeachingSession
from tutorloop.loop.teaching_job import JobRun, TeachingJob
from tutorloop.loop.teaching_plan import plan_jobs
from tutorloop.store.history import RunHistory, in_round
from tutorloop.store.query import fetch_rows

REPO = Path(__file__).resolve().parents[1]
QUESTION = Example("hf/train/0", "hf", "train", "Tom has 3 apples and buys 4 more. How many apples?", "7")


def write_recording(path: Path, rows: list[tuple[str, str, str]]) -> str:
    """A JSONL recording of (question, rationale, answer) rows; returns its path."""
    path.write_text("".join(json.dumps({"question": q, "rationale": r, "answer": a}) + "\n" for q, r, a in rows))
    return str(path)


def replay_section(recordings: dict[str, str]) -> TeacherSection:
    """Replay teachers by name, each on its own recording, all with the default model."""
    return TeacherSection.model_validate(
        {"teachers": [{"name": name, "backend": "replay", "recording": path} for name, path in recordings.items()]}
    )


def teach(
    cfg: TeacherSection, examples: list[Example], lookup=lambda hashes: {}, persist=lambda records: None
) -> TeachingOutcome:
    with LocalTeacherPool(cfg) as pool:
        return TeachingSession(cfg, plan_jobs(examples, cfg, 0), lookup, pool, persist, progress=False).run()


def first_hash(endpoint: TeacherEndpoint) -> str:
    """The key of the first request a zero-shot CoT job of `endpoint` sends, exactly as a run builds it."""
    cfg = TeacherSection(teachers=[endpoint])
    job = TeachingJob(QUESTION, endpoint, "zero_shot_cot", 0, 0)
    return JobRun(job, PromptBuilder(load_templates(None)), cfg, AnswerSources(cfg)).first_request().request_hash


def test_two_replay_teachers_with_their_own_recordings_get_their_own_answers(tmp_path: Path) -> None:
    cfg = replay_section(
        {
            "alice": write_recording(tmp_path / "alice.jsonl", [(QUESTION.question, "3 + 4 = 7.", "7")]),
            "bob": write_recording(tmp_path / "bob.jsonl", [(QUESTION.question, "Four more than three is 7.", "7")]),
        }
    )
    outcome = teach(cfg, [QUESTION])
    by_teacher = {r["teacher"]: r["rationale"] for r in outcome.rationales}
    assert by_teacher == {"alice": "3 + 4 = 7.", "bob": "Four more than three is 7."}
    assert outcome.calls_sent == 4  # two stages each, none shared


# ----- a fork that changes the recording ---------------------------------------------------------------
def run_config(recording: str) -> Config:
    data = load_config(REPO / "configs/quick.yaml").to_dict()
    data["data"]["synthetic"].update({"train_size": 8, "test_size": 4})
    data["teacher"].update(
        {"teachers": [{"name": "mine", "backend": "replay", "recording": recording}], "strategies": ["zero_shot_cot"]}
    )
    return config_from_dict(data, "test")


def teach_run(run_dir: Path, cfg: Config, examples: list[Example]) -> TeachingOutcome:
    """A teaching session of round 0 on the run's own store, as the engine asks it (cache first)."""
    history = RunHistory(run_dir)
    return teach(cfg.teacher, examples, history.stored_calls, history.persist_calls)


def legacy_hash(row: dict) -> str:
    """The key as tutorloop computed it before it named the answering source."""
    request = json.loads(row["request"])
    key = {
        "backend": row["backend"],
        "model": row["model"],
        "api": request["api"],
        "params": request["params"],
        "sample_index": row["sample_index"],
    }
    key["messages" if "messages" in request else "prompt"] = request.get("messages", request.get("prompt"))
    return hashlib.sha256(
        json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


def make_legacy(run_dir: Path) -> None:
    """The run's stored answers re-keyed as the old code stored them (the rationales point at them)."""
    history = RunHistory(run_dir)
    for row in fetch_rows(run_dir, "SELECT * FROM teacher_calls"):
        for table in ("teacher_calls", "rationales"):
            history.writer.sql(
                f"UPDATE {table} SET request_hash = ? WHERE request_hash = ?", [legacy_hash(row), row["request_hash"]]
            )


def parent_run(tmp_path: Path, legacy: bool) -> tuple[Path, list[Example], Path]:
    """A run whose round 0 was taught by replay on recording A (its answers stored); and recording B."""
    probe = run_config(str(tmp_path / "a.jsonl"))
    examples = load_examples(probe.data, "train")[:2]
    rows_a = [(e.question, f"Recording A says {e.answer}.", e.answer) for e in examples]
    rows_b = [(e.question, f"Recording B works it out: {e.answer}.", e.answer) for e in examples]
    cfg = run_config(write_recording(tmp_path / "a.jsonl", rows_a))
    recording_b = Path(write_recording(tmp_path / "b.jsonl", rows_b))
    parent = tmp_path / "parent"
    create_run(cfg, parent)
    outcome = teach_run(parent, cfg, examples)
    assert outcome.calls_sent == 4 and all(r["rationale"].startswith("Recording A") for r in outcome.rationales)
    history = RunHistory(parent)
    history.writer.insert("rationales", in_round(outcome.rationales, 0))
    history.writer.sql("INSERT INTO rounds (round, kind, status) VALUES (0, 'core', 'done')")
    if legacy:
        make_legacy(parent)
    return parent, examples, recording_b


@pytest.mark.parametrize("legacy", [False, True], ids=["parent-current", "parent-stored-by-old-code"])
def test_a_fork_that_changes_the_recording_is_not_answered_from_the_parents_cache(tmp_path: Path, legacy: bool) -> None:
    parent, examples, recording_b = parent_run(tmp_path, legacy)
    fork = tmp_path / "fork"
    cfg = fork_run(parent, fork, 0, [f"teacher.teachers.0.recording={recording_b}"])
    outcome = teach_run(fork, cfg, examples)
    assert outcome.calls_sent == 4 and outcome.cache_hits == 0
    assert all(r["rationale"].startswith("Recording B") for r in outcome.rationales)

    # A fork that keeps the recording is still answered from the parent's stored answers.
    same = fork_run(parent, tmp_path / "same", 0, ["training.epochs=1"])
    again = teach_run(tmp_path / "same", same, examples)
    assert again.calls_sent == 0 and again.cache_hits == 4
    assert all(r["rationale"].startswith("Recording A") for r in again.rationales)


def test_a_run_stored_by_the_old_code_resumes_without_sending_again(tmp_path: Path) -> None:
    parent, examples, _ = parent_run(tmp_path, legacy=True)
    cfg, _ = stored_config(parent)
    before = fetch_rows(parent, "SELECT count(*) AS n, sum(cost_usd) AS usd FROM teacher_calls")
    assert rekey_legacy_calls(RunHistory(parent), cfg.teacher, cfg.data.data_dir) == 4
    outcome = teach_run(parent, cfg, examples)
    assert outcome.calls_sent == 0 and outcome.cache_hits == 4
    assert all(r["rationale"].startswith("Recording A") for r in outcome.rationales)
    # Nothing lost or doubled, the rationales still point at their answers, and a second pass finds nothing to do.
    assert fetch_rows(parent, "SELECT count(*) AS n, sum(cost_usd) AS usd FROM teacher_calls") == before
    assert fetch_rows(parent, "SELECT count(*) AS n FROM rationales r JOIN teacher_calls c USING (request_hash)") == [
        {"n": 2}
    ]
    assert rekey_legacy_calls(RunHistory(parent), cfg.teacher, cfg.data.data_dir) == 0


def test_the_engine_resumes_an_old_run_from_its_stored_answers(tmp_path: Path) -> None:
    """Round 0 taught by replay and stored under the old key; the resumed run's tailored round re-explains
    its mistakes with the same requests, all answered from the history."""
    from test_engine_plan import engine_for

    probe = load_config(REPO / "configs/quick.yaml", ["data.synthetic.train_size=12", "data.synthetic.test_size=6"])
    pool = load_examples(probe.data, "train")
    recording = write_recording(tmp_path / "mine.jsonl", [(e.question, e.rationale, e.answer) for e in pool])
    overrides = [
        "data.synthetic.train_size=12",
        "data.synthetic.test_size=6",
        "run.report=false",
        f"teacher.teachers=[{{name: mine, backend: replay, recording: {recording}}}]",
        "teacher.strategies=[zero_shot_cot]",
    ]
    cfg = load_config(REPO / "configs/quick.yaml", [*overrides, "run.rounds=0"])
    run_dir = tmp_path / "run"
    create_run(cfg, run_dir)
    (tmp_path / "work").mkdir()
    engine, _ = engine_for(cfg, run_dir, tmp_path / "work")
    assert engine.run() == 0
    assert fetch_rows(run_dir, "SELECT value FROM metrics WHERE round = 0 AND name = 'teacher_calls'")[0]["value"] > 0
    make_legacy(run_dir)

    resumed, _ = engine_for(
        load_config(REPO / "configs/quick.yaml", [*overrides, "run.rounds=1"]), run_dir, tmp_path / "work"
    )
    assert resumed.run() == 0
    round_1 = {
        r["name"]: r["value"]
        for r in fetch_rows(
            run_dir, "SELECT name, value FROM metrics WHERE round = 1 AND name IN ('teacher_calls', 'cache_hits')"
        )
    }
    assert round_1["teacher_calls"] == 0 and round_1["cache_hits"] > 0


# ----- the openai address, the served model file ---------------------------------------------------------
def openai(base_url: str | None) -> TeacherEndpoint:
    return TeacherEndpoint(name="remote", backend="openai", model="gpt-4o-mini", base_url=base_url)


def test_an_openai_key_follows_the_normalised_address(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = first_hash(openai("https://api.example.com/v1"))
    for spelling in ("https://API.Example.com/v1/", "HTTPS://api.example.com:443/v1", "https://api.example.com/v1//"):
        assert first_hash(openai(spelling)) == plain, spelling
    for other in (
        "https://other.example.com/v1",
        "http://api.example.com/v1",
        "https://api.example.com:8443/v1",
        "https://api.example.com/v2",
    ):
        assert first_hash(openai(other)) != plain, other
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1/")
    assert first_hash(openai(None)) == plain
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    assert first_hash(openai(None)) != plain


def test_a_served_teacher_is_keyed_by_its_model_file_not_its_port(tmp_path: Path) -> None:
    def served(model_file: Path) -> TeacherSection:
        return TeacherSection.model_validate(
            {"teachers": [{"name": "local", "backend": "openai", "model": "qwen", "serve": {"model": str(model_file)}}]}
        )

    one, other = tmp_path / "one.gguf", tmp_path / "other.gguf"
    one.write_bytes(b"GGUF one")
    other.write_bytes(b"GGUF other")
    key = AnswerSources(served(one), "data").of("local", "hf")
    assert key == AnswerSources(served(one), "data").of("local", "hf")
    assert key != AnswerSources(served(other), "data").of("local", "hf")
    copy = tmp_path / "copy.gguf"  # the same weights under another name answer the same
    copy.write_bytes(one.read_bytes())
    assert AnswerSources(served(copy), "data").of("local", "hf") == key
