"""Task hf: Hugging Face datasets on disk (parquet, json, arrow, save_to_disk), read through `datasets`."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tutorloop.loop.core.config import DataSection
from tutorloop.loop.core.datasets import answer_type_of, load_examples
from tutorloop.loop.core.errors import DataError

datasets = pytest.importorskip("datasets")

ROWS = {
    "train": {
        "q": ["What is 2 + 3?", "What is 10 - 4?", "What is 1,000 + 1?"],
        "gold": ["5", "6", "So 1000 + 1 = 1001. #### 1,001"],
        "why": ["2 + 3 = 5.", "10 - 4 = 6.", "add"],
    },
    "test": {"q": ["What is 7 + 1?", "What is 9 - 9?"], "gold": [8, 0], "why": ["7 + 1 = 8.", "9 - 9 = 0."]},
}
FIELDS = {"question_field": "q", "answer_field": "gold"}


def dataset_dict() -> "datasets.DatasetDict":
    # test answers are integers: a column of numbers works as well as one of strings
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(rows) for split, rows in ROWS.items()})


def write(kind: str, folder: Path) -> Path:
    """The same two splits in one of the layouts `data.dataset` may name."""
    splits = dataset_dict()
    if kind == "save_to_disk":
        splits.save_to_disk(str(folder))
        return folder
    folder.mkdir()
    for split, table in splits.items():
        if kind == "parquet":
            table.to_parquet(str(folder / f"{split}.parquet"))
        elif kind == "json":
            table.to_json(str(folder / f"{split}.jsonl"))
        else:  # arrow: an Arrow IPC stream per split
            arrow = table.data.table
            with (
                pa.OSFile(str(folder / f"{split}.arrow"), "wb") as sink,
                pa.ipc.new_stream(sink, arrow.schema) as writer,
            ):
                writer.write_table(arrow)
    return folder


def cfg(dataset: str | Path, **keys) -> DataSection:
    return DataSection(task="hf", dataset=str(dataset), **{**FIELDS, **keys})


@pytest.mark.parametrize("kind", ["parquet", "json", "arrow", "save_to_disk"])
def test_each_local_layout_loads_both_splits(tmp_path: Path, kind: str) -> None:
    folder = write(kind, tmp_path / kind)
    train = load_examples(cfg(folder, rationale_field="why"), "train")
    test = load_examples(cfg(folder), "test")
    assert [(e.id, e.question, e.answer) for e in train] == [
        ("hf/train/0", "What is 2 + 3?", "5"),
        ("hf/train/1", "What is 10 - 4?", "6"),
        ("hf/train/2", "What is 1,000 + 1?", "1001"),
    ]  # an answer with its working gives its final answer
    assert [e.rationale for e in train] == ["2 + 3 = 5.", "10 - 4 = 6.", "add"]
    assert [(e.split, e.answer, e.rationale, e.meta) for e in test] == [
        ("test", "8", None, {"split": "test", "row": 0}),
        ("test", "0", None, {"split": "test", "row": 1}),
    ]


def test_named_splits_pool_size_and_answer_type(tmp_path: Path) -> None:
    folder = tmp_path / "yesno"
    datasets.DatasetDict(
        {
            "dev": datasets.Dataset.from_dict(
                {"q": [f"Is {n} even?" for n in range(10)], "gold": ["Yes" if n % 2 == 0 else "No" for n in range(10)]}
            ),
            "heldout": datasets.Dataset.from_dict({"q": ["Is 11 even?"], "gold": ["no"]}),
        }
    ).save_to_disk(str(folder))
    data = cfg(folder, train_split="dev", test_split="heldout", answer_type="yesno", pool_size=4)
    pool = load_examples(data, "train")
    assert len(pool) == 4 and len({e.id for e in pool}) == 4
    assert {e.answer for e in load_examples(data.model_copy(update={"pool_size": None}), "train")} == {"yes", "no"}
    assert [e.answer for e in load_examples(data, "test")] == ["no"]
    assert answer_type_of(data) == "yesno"


@pytest.mark.parametrize(
    "keys, message",
    [
        (
            {"train_split": "validation"},
            "data.train_split: 'validation' is not a split of {path} (splits: train, test)",
        ),
        (
            {"question_field": "question"},
            "data.question_field: 'question' is not a column of {path} split 'train' (columns: q, gold, why)",
        ),
        ({"rationale_field": "notes"}, "data.rationale_field: 'notes' is not a column"),
        ({"answer_type": "yesno"}, "{path} split 'train' row 0: field 'gold' holds no yesno answer ('5')"),
    ],
)
def test_a_bad_split_field_or_answer_is_one_line_naming_it(tmp_path: Path, keys: dict, message: str) -> None:
    folder = write("parquet", tmp_path / "set")
    with pytest.raises(DataError) as error:
        load_examples(cfg(folder, **keys), "train")
    assert message.format(path=folder) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_bad_path_or_no_dataset_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^data.dataset .*/missing: no such folder$"):
        load_examples(cfg(tmp_path / "missing"), "train")
    with pytest.raises(DataError, match=r"^data.dataset: needed when data.task is 'hf'"):
        load_examples(DataSection(task="hf"), "train")
    folder = write("parquet", tmp_path / "files")
    with pytest.raises(DataError, match=r"train.parquet: a file; name the folder that holds the split files"):
        load_examples(cfg(folder / "train.parquet"), "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"^data.dataset .*/empty: cannot open the folder \("):
        load_examples(cfg(empty), "train")
    alone = tmp_path / "alone"
    datasets.Dataset.from_dict(ROWS["train"]).save_to_disk(str(alone))
    with pytest.raises(DataError, match="holds a single dataset, not splits"):
        load_examples(cfg(alone), "train")


def test_an_empty_cell_names_its_row(tmp_path: Path) -> None:
    folder = tmp_path / "holes"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"q": ["a", None], "gold": ["1", "2"]}),
            "test": datasets.Dataset.from_dict({"q": ["b"], "gold": ["3"]}),
        }
    ).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"split 'train' row 1: field 'q' is empty$"):
        load_examples(cfg(folder), "train")
