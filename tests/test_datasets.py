"""Task registry loaders on the shipped data, subsetting, the generic JSONL loader, malformed files."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tutorloop.loop.core.config import DataSection
from tutorloop.loop.core.datasets import (
    RECORDED_TEACHER_DIR,
    TASKS,
    DataError,
    answer_type_of,
    drop_test_duplicates,
    get_task,
    load_examples,
    load_recorded_teacher,
    normalize_question,
    resolve_data_dir,
)

RECORDED_TASKS = [
    "addsub",
    "coin_flip",
    "date_understanding",
    "last_letter_concatenation",
    "multiarith",
    "strategy_qa",
    "tracking_shuffled_objects",
]
DATA = resolve_data_dir("data")


@pytest.fixture(scope="module")
def gsm8k() -> dict[str, list]:
    cfg = DataSection(task="gsm8k")
    return {split: load_examples(cfg, split) for split in ("train", "test")}


@pytest.mark.parametrize("task", RECORDED_TASKS)
def test_recorded_counts_match_split_files(task: str) -> None:
    splits = json.loads((DATA / "splits" / f"{task}__default.json").read_text())
    cfg = DataSection(task=task)
    seen = set()
    for split in ("train", "test"):
        examples = load_examples(cfg, split)
        assert [ex.id for ex in examples] == [f"{task}/{split}/{i}" for i in splits[split]]
        assert all(ex.dataset == task and ex.split == split and ex.question for ex in examples)
        assert all(ex.answer_type == get_task(task).answer_type for ex in examples)
        seen |= {ex.id.rsplit("/", 1)[1] for ex in examples}
    assert len(seen) == len(splits["train"]) + len(splits["test"])  # train and test are disjoint


def test_gold_answers_are_normalized() -> None:
    golds = {task: {ex.answer for ex in load_examples(DataSection(task=task), "test")} for task in RECORDED_TASKS}
    assert golds["strategy_qa"] == {"yes", "no"}  # stored as "Yes"/"No"
    assert golds["coin_flip"] == {"yes", "no"}
    assert golds["tracking_shuffled_objects"] == {"A", "B", "C"}
    assert golds["date_understanding"] <= set("ABCDEF")
    assert all(ans.isalpha() and ans == ans.lower() for ans in golds["last_letter_concatenation"])
    # addsub stores some golds as "14696.0": normalized to "14696"
    assert not any(ans.endswith(".0") for ans in golds["addsub"])


def test_gsm8k_counts_and_fields(gsm8k: dict) -> None:
    assert len(gsm8k["train"]) == 7473 and len(gsm8k["test"]) == 1319
    first = gsm8k["train"][0]
    assert first.id == "gsm8k/train/0" and first.answer == "72"
    assert first.rationale == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert not any("<<" in ex.rationale or "####" in ex.rationale for ex in gsm8k["train"])
    assert not any("," in ex.answer for ex in gsm8k["train"])  # "1,080" -> "1080"
    assert any(ex.answer == "1080" for ex in gsm8k["train"])
    assert len({ex.id for ex in gsm8k["train"] + gsm8k["test"]}) == 7473 + 1319


def test_pool_and_test_size_subsetting_is_deterministic(gsm8k: dict) -> None:
    cfg = DataSection(task="gsm8k", pool_size=50, test_size=20)
    a, b = load_examples(cfg, "train"), load_examples(cfg, "train")
    assert [ex.id for ex in a] == [ex.id for ex in b] and len(a) == 50
    assert [ex.id for ex in a] != [ex.id for ex in gsm8k["train"][:50]]  # shuffled, not the file head
    smaller = load_examples(DataSection(task="gsm8k", pool_size=20), "train")
    assert [ex.id for ex in smaller] == [ex.id for ex in a[:20]]  # a smaller pool is a prefix
    test = load_examples(cfg, "test")
    assert len(test) == 20 and all(ex.split == "test" for ex in test)
    big = load_examples(DataSection(task="addsub", pool_size=10_000), "train")
    assert len(big) == 276


def test_data_dir_falls_back_to_repo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no data/ here: the repository's data/ is used
    assert len(load_examples(DataSection(task="coin_flip"), "test")) == 150
    with pytest.raises(DataError, match="nowhere: data folder not found"):
        load_examples(DataSection(task="coin_flip", data_dir="nowhere"), "test")


def test_recorded_teacher_lookup_by_question() -> None:
    outputs = load_recorded_teacher("data", "multiarith")
    raw = json.loads((DATA / RECORDED_TEACHER_DIR / "multiarith.json").read_text())["data"]
    assert sum(len(v) for v in outputs.values()) == sum(len(v) for v in raw.values())
    assert len(outputs) < len(raw)  # multiarith repeats some questions under several indices
    for ex in load_examples(DataSection(task="multiarith"), "train"):
        completions = outputs[normalize_question(ex.question)]
        assert {"reasoning_prompt", "reasoning_completion", "prompt", "completion", "answer"} <= set(completions[0])
    several = [v for v in load_recorded_teacher("data", "coin_flip").values() if len(v) == 5]
    assert len(several) == 8  # the diverse-reasoning questions keep all their completions
    assert normalize_question("  A  coin\nis up. ") == "A coin is up."


def test_registry() -> None:
    assert set(TASKS) == set(RECORDED_TASKS) | {"gsm8k", "synthetic", "jsonl"}
    assert answer_type_of(DataSection(task="strategy_qa")) == "yesno"
    assert answer_type_of(DataSection(task="jsonl", answer_type="choice")) == "choice"
    with pytest.raises(DataError, match="unknown task 'mnist'"):
        get_task("mnist")
    with pytest.raises(ValueError, match="split must be"):
        load_examples(DataSection(task="addsub"), "dev")


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_loader_custom_fields(tmp_path: Path) -> None:
    train = _write_lines(
        tmp_path / "mine_train.jsonl",
        [
            json.dumps({"q": "What is 2 + 2?", "a": "4", "why": "2 + 2 = 4."}),
            "",  # blank lines are skipped
            json.dumps({"q": "What is 1,000 + 200?", "a": "1000 + 200 = 1200\n#### 1,200", "why": "Add."}),
        ],
    )
    test = _write_lines(
        tmp_path / "mine_test.jsonl", [json.dumps({"q": "What is 3 - 1?", "a": 2.0, "why": "3 - 1 = 2."})]
    )
    cfg = DataSection(
        task="jsonl",
        train_path=str(train),
        test_path=str(test),
        question_field="q",
        answer_field="a",
        rationale_field="why",
    )
    examples = load_examples(cfg, "train")
    assert [(ex.id, ex.question, ex.answer, ex.rationale) for ex in examples] == [
        ("jsonl/train/0", "What is 2 + 2?", "4", "2 + 2 = 4."),
        ("jsonl/train/1", "What is 1,000 + 200?", "1200", "Add."),
    ]
    assert examples[1].meta["line"] == 3
    assert load_examples(cfg, "test")[0].answer == "2"

    yesno = _write_lines(tmp_path / "yn.jsonl", [json.dumps({"question": "Is ice cold?", "answer": "Yes"})])
    cfg = DataSection(task="jsonl", train_path=str(yesno), test_path=str(yesno), answer_type="yesno")
    assert load_examples(cfg, "test")[0].answer == "yes" and answer_type_of(cfg) == "yesno"


def test_jsonl_paths_relative_to_data_dir(tmp_path: Path) -> None:
    _write_lines(tmp_path / "t.jsonl", [json.dumps({"question": "1 + 1?", "answer": "2"})])
    cfg = DataSection(task="jsonl", data_dir=str(tmp_path), train_path="t.jsonl", test_path="t.jsonl")
    assert load_examples(cfg, "train")[0].answer == "2"
    with pytest.raises(DataError, match="data.test_path: needed"):
        load_examples(DataSection(task="jsonl", train_path="t.jsonl"), "test")


@pytest.mark.parametrize(
    "lines,message",
    [
        (
            ['{"question": "a", "answer": "1"}', '{"question": "b", "answer": "2"}', '{"question": "c", "answer": '],
            r"bad\.jsonl: line 3: bad JSON",
        ),
        (['{"question": "a", "answer": "1"}', '{"answer": "2"}'], r"bad\.jsonl: line 2: missing field 'question'"),
        (['{"question": "a"}'], r"bad\.jsonl: line 1: missing field 'answer'"),
        (['["question", "a"]'], r"bad\.jsonl: line 1: expected a JSON object"),
        (['{"question": "a", "answer": "seven"}'], r"bad\.jsonl: line 1: field 'answer' holds no number answer"),
    ],
)
def test_malformed_jsonl(tmp_path: Path, lines: list[str], message: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    cfg = DataSection(task="jsonl", train_path=str(path), test_path=str(path))
    with pytest.raises(DataError, match=message) as info:
        load_examples(cfg, "train")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_unreadable_jsonl_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "folder.jsonl").mkdir()
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "caf\xe9?", "answer": "1"}\n'.encode("latin-1"))
    for path, message in (
        (tmp_path / "folder.jsonl", r"folder\.jsonl: cannot read \(Is a directory\)"),
        (latin, r"latin\.jsonl: not UTF-8 text"),
    ):
        with pytest.raises(DataError, match=message) as info:
            load_examples(DataSection(task="jsonl", train_path=str(path), test_path=str(path)), "train")
        assert "\n" not in str(info.value)


def test_jsonl_lines_split_only_at_newlines(tmp_path: Path) -> None:
    # U+2028 is legal inside a JSON string; it must not cut the record in two.
    records = [{"question": "a\u2028b", "answer": "3"}, {"question": "c", "answer": "4"}]
    path = _write_lines(tmp_path / "sep.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
    examples = load_examples(DataSection(task="jsonl", train_path=str(path), test_path=str(path)), "train")
    assert [(e.question, e.answer, e.meta["line"]) for e in examples] == [("a\u2028b", "3", 1), ("c", "4", 2)]


def test_malformed_gsm8k(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    _write_lines(
        tmp_path / "gsm8k" / "train.jsonl",
        [
            json.dumps({"question": "q", "answer": "1 + 1 = 2\n#### 2"}),
            json.dumps({"question": "q2", "answer": "no final answer"}),
        ],
    )
    with pytest.raises(DataError, match=r"train\.jsonl: line 2: field 'answer' has no '#### <answer>'"):
        load_examples(DataSection(task="gsm8k", data_dir=str(tmp_path)), "train")
    with pytest.raises(DataError, match=r"test\.jsonl: file not found"):
        load_examples(DataSection(task="gsm8k", data_dir=str(tmp_path)), "test")


def _recorded_copy(tmp_path: Path, task: str) -> tuple[Path, Path, dict, dict]:
    """A data dir holding a copy of one shipped recorded file and its split file."""
    (tmp_path / RECORDED_TEACHER_DIR).mkdir(parents=True)
    (tmp_path / "splits").mkdir()
    recorded = tmp_path / RECORDED_TEACHER_DIR / f"{task}.json"
    split = tmp_path / "splits" / f"{task}__default.json"
    shutil.copy(DATA / RECORDED_TEACHER_DIR / f"{task}.json", recorded)
    shutil.copy(DATA / "splits" / f"{task}__default.json", split)
    return recorded, split, json.loads(recorded.read_text()), json.loads(split.read_text())


def test_malformed_recorded_files(tmp_path: Path) -> None:
    recorded, split, content, splits = _recorded_copy(tmp_path, "addsub")
    cfg = DataSection(task="addsub", data_dir=str(tmp_path))
    assert len(load_examples(cfg, "train")) == 276  # the copy itself loads

    splits["test"].append(99999)
    split.write_text(json.dumps(splits))
    with pytest.raises(DataError, match=r"addsub__default\.json: test index 99999 not in .*addsub\.json"):
        load_examples(cfg, "test")

    other = DataSection(task="addsub", data_dir=str(tmp_path), split="other")
    with pytest.raises(DataError, match=r"addsub__other\.json: file not found"):
        load_examples(other, "test")

    first = next(iter(content["data"]))
    del content["data"][first][0]["answer"]
    recorded.write_text(json.dumps(content))
    with pytest.raises(DataError, match=rf"addsub\.json: data\['{first}'\]\[0\]: missing key 'answer'"):
        load_examples(cfg, "train")

    recorded.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(DataError, match=r"addsub\.json: missing key 'data'"):
        load_recorded_teacher(str(tmp_path), "addsub")

    recorded.write_text('{"metadata": {},\n "data": {"1": [}')
    with pytest.raises(DataError, match=r"addsub\.json: line 2: bad JSON"):
        load_examples(cfg, "train")


def test_bad_gold_in_recorded_file(tmp_path: Path) -> None:
    recorded, _, content, splits = _recorded_copy(tmp_path, "coin_flip")
    index = str(splits["train"][0])
    content["data"][index][0]["answer"] = "maybe"
    recorded.write_text(json.dumps(content))
    with pytest.raises(DataError, match=rf"coin_flip\.json: data\['{index}'\]: gold answer 'maybe' is not yes/no"):
        load_examples(DataSection(task="coin_flip", data_dir=str(tmp_path)), "train")


def test_pool_questions_of_the_test_split_are_dropped() -> None:
    # The published MultiArith train and test splits share questions word for word.
    cfg = DataSection(task="multiarith")
    pool, test = load_examples(cfg, "train"), load_examples(cfg, "test")
    asked = {normalize_question(e.question) for e in test}
    shared = [e for e in pool if normalize_question(e.question) in asked]
    assert len(shared) >= 3
    kept, dropped = drop_test_duplicates(pool, test)
    assert dropped == len(shared) and len(kept) == len(pool) - dropped
    assert not {normalize_question(e.question) for e in kept} & asked
    assert [e.id for e in kept] == [e.id for e in pool if e not in shared]  # pool order kept
    # Spacing and case do not hide a duplicate; a split without shared questions loses nothing.
    twin = next(e for e in test if normalize_question(e.question) == normalize_question(shared[0].question))
    respaced = replace(twin, question="  " + twin.question.upper().replace(" ", "\n "))
    assert drop_test_duplicates([shared[0], kept[0]], [respaced]) == ([kept[0]], 1)
    assert drop_test_duplicates(kept, test) == (kept, 0)
