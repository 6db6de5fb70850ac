"""The replay teacher on the user's own recordings: a JSONL of question and rationale, or a file in the
recorded format the shipped data uses, replayed for any dataset through a real teaching session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tutorloop.actors.teacher import LocalTeacherPool
from tutorloop.actors.teacher.replay import load_recording
from tutorloop.loop.core.config import Config, config_from_dict
from tutorloop.loop.core.datasets import Example, load_recorded_teacher
from tutorloop.loop.core.errors import ConfigError, DataError
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.teaching import TeachingSession
from tutorloop.loop.teaching_plan import plan_jobs

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = [
    Example(f"hf/train/{i}", "hf", "train", q, a)
    for i, (q, a) in enumerate(
        [
            ("Tom has 3 apples and buys 4 more. How many apples?", "7"),
            ("A box holds 10 pens; 6 are taken. How many are left?", "4"),
            ("What is 5 times 2?", "10"),
        ]
    )
]


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def teach_with_calls(recording: Path, examples: list[Example], diverse: int = 1) -> tuple[list[dict], dict[str, dict]]:
    """The rationale records and the stored calls (by hash) of a round-0 teaching session with a replay
    teacher on `recording`."""
    cfg = TeacherSection.model_validate(
        {"teachers": [{"name": "mine", "backend": "replay", "recording": str(recording)}], "diverse_samples": diverse}
    )
    stored: dict[str, dict] = {}
    with LocalTeacherPool(cfg) as pool:
        outcome = TeachingSession(
            cfg,
            plan_jobs(examples, cfg, 0),
            lambda hashes: {},
            pool,
            lambda records: stored.update({r["request_hash"]: r for r in records}),
            progress=False,
        ).run()
    assert outcome.cost_usd == 0
    return outcome.rationales, stored


def teach(recording: Path, examples: list[Example], diverse: int = 1) -> list[dict]:
    return teach_with_calls(recording, examples, diverse)[0]


def test_a_jsonl_of_question_and_rationale_is_replayed_for_any_dataset(tmp_path: Path) -> None:
    recording = write_jsonl(
        tmp_path / "paid.jsonl",
        [
            {"question": EXAMPLES[0].question, "rationale": "3 + 4 = 7.", "answer": "7."},
            # no answer field: the rationale states its answer; extra whitespace in the question is ignored
            {
                "question": "A box holds 10 pens;  6 are taken. How many are left? ",
                "rationale": "10 - 6 = 4, so the answer is 4.",
            },
            {"question": EXAMPLES[0].question, "rationale": "3 + 4 = 8.", "answer": "8"},  # sample 1, wrong
        ],
    )
    by_id = {(r["example_id"], r["sample_index"]): r for r in teach(recording, EXAMPLES, diverse=2)}
    assert by_id[("hf/train/0", 0)]["accepted"] and by_id[("hf/train/0", 0)]["rationale"] == "3 + 4 = 7."
    assert by_id[("hf/train/0", 1)]["reject_reason"] == "wrong_answer"
    assert by_id[("hf/train/1", 0)]["accepted"] and by_id[("hf/train/1", 0)]["extracted"] == "4"
    assert by_id[("hf/train/1", 1)]["reject_reason"] == "miss"  # one recorded sample only
    assert by_id[("hf/train/2", 0)]["reject_reason"] == "miss"  # a question not recorded


def test_a_file_in_the_recorded_format_is_replayed_under_another_dataset(tmp_path: Path) -> None:
    shipped = json.loads((REPO / "data/recorded_teacher/text-davinci-002_zero-shot-cot/multiarith.json").read_text())
    kept = dict(list(shipped["data"].items())[:3])
    recording = tmp_path / "my_teacher.json"
    recording.write_text(json.dumps({"metadata": {"by": "me"}, "data": kept}))
    assert load_recording(recording) == {
        k: v for k, v in load_recorded_teacher(REPO / "data", "multiarith").items() if k in load_recording(recording)
    }
    examples = [
        Example(f"mine/train/{i}", "mine", "train", c[0]["question"].strip(), str(c[0]["answer"]))
        for i, c in enumerate(kept.values())
    ]
    rationales = teach(recording, examples)
    assert [r["reject_reason"] != "miss" for r in rationales] == [True] * 3
    first = kept[next(iter(kept))][0]
    assert rationales[0]["rationale"] and rationales[0]["rationale"] in first["reasoning_completion"]


@pytest.mark.parametrize(
    "rows, message",
    [
        (['{"question": "q", "rationale": "r"}', "{not json"], r"paid.jsonl: line 2: bad JSON"),
        ([{"question": "q"}], r"paid.jsonl: line 1: missing field 'rationale'$"),
        ([{"question": "q", "rationale": "   "}], r"paid.jsonl: line 1: field 'rationale' is empty$"),
        (["[1, 2]"], r"paid.jsonl: line 1: expected a JSON object$"),
    ],
)
def test_a_bad_line_is_one_line_naming_file_and_line(tmp_path: Path, rows: list, message: str) -> None:
    recording = write_jsonl(tmp_path / "paid.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_recording(recording)
    # In a run the same line ends each call it would answer (the teacher never raises).
    [rationale] = teach(recording, EXAMPLES[:1])
    assert rationale["reject_reason"] == "failed"


def test_a_bad_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing.jsonl: file not found$"):
        load_recording(tmp_path / "missing.jsonl")
    (tmp_path / "flat.json").write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(DataError, match=r"flat.json: missing key 'data'"):
        load_recording(tmp_path / "flat.json")
    (tmp_path / "partial.json").write_text(json.dumps({"data": {"0": [{"question": "q"}]}}))
    with pytest.raises(DataError, match=r"partial.json: data\['0'\]\[0\]: missing key 'answer'$"):
        load_recording(tmp_path / "partial.json")


def test_a_recording_needs_the_replay_backend() -> None:
    with pytest.raises(ConfigError, match="recording.*replayed by backend 'replay'"):
        config_from_dict({"teacher": {"teachers": [{"backend": "openai", "recording": "x.jsonl"}]}})
    # unset, the key stays out of the stored config (older runs keep their fingerprint)
    assert "recording" not in Config().to_dict()["teacher"]["teachers"][0]
