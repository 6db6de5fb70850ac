"""Task `hf`: a Hugging Face dataset as the training pool and test split.

`data.dataset` names what `datasets` opens: a `save_to_disk` folder (read with `load_from_disk`), a
local folder of parquet, json or arrow files (`load_dataset` on the folder), or a hub id on a machine
with internet. `data.train_split` / `data.test_split` pick the splits; the field names and
`data.answer_type` are those the JSONL loader reads. `datasets` is imported only when task hf runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tutorloop.loop.core.answers import extract_answer, normalize_gold
from tutorloop.loop.core.config import DataSection
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import DataError

# Files `save_to_disk` writes: a DatasetDict's index, or a single Dataset's state.
_SAVED_MARKERS = ("dataset_dict.json", "state.json")


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError("data.task hf needs the `datasets` package: pip install 'tutorloop[hf]'") from None
    datasets.disable_progress_bars()  # the terminal shows tutorloop's bars only
    return datasets


def _looks_local(name: str) -> bool:
    """A name a hub id cannot be ('owner/name' or 'name'): absolute, ~, ./, ../, or deeper than one '/'."""
    return name.startswith(("/", "~", ".")) or name.count("/") > 1


def _open(data_cfg: DataSection) -> Any:
    """The DatasetDict `data.dataset` names (a Dataset saved alone stays a Dataset)."""
    name = data_cfg.dataset
    if not name:
        raise DataError("data.dataset: needed when data.task is 'hf' (a hub id or a local dataset folder)")
    datasets = _import_datasets()
    path = Path(name).expanduser()
    if path.is_dir() and any((path / marker).is_file() for marker in _SAVED_MARKERS):
        try:
            return datasets.load_from_disk(str(path))
        except Exception as exc:  # a damaged save_to_disk folder: datasets raises many kinds
            raise DataError(
                f"data.dataset {name}: cannot read the saved dataset ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
    if not path.exists() and _looks_local(name):
        raise DataError(f"data.dataset {name}: no such folder")
    if path.is_file():  # `datasets` would take a file's name for a hub id
        raise DataError(
            f"data.dataset {name}: a file; name the folder that holds the split files "
            f"(e.g. train.parquet and test.parquet)"
        )
    try:
        return datasets.load_dataset(str(path) if path.exists() else name, data_cfg.dataset_config)
    except Exception as exc:  # no such hub id, no network, unreadable files, a missing config name
        where = "folder" if path.exists() else "dataset (not a local folder; looked on the Hub)"
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"data.dataset {name}: cannot open the {where} ({type(exc).__name__}: {first[:200]})") from None


def _split(opened: Any, data_cfg: DataSection, split: str) -> Any:
    key = "train_split" if split == "train" else "test_split"
    wanted = getattr(data_cfg, key)
    if not hasattr(opened, "keys"):  # a Dataset saved alone
        raise DataError(
            f"data.dataset {data_cfg.dataset}: holds a single dataset, not splits; save a "
            f"DatasetDict with splits {data_cfg.train_split!r} and {data_cfg.test_split!r}"
        )
    if wanted not in opened:
        raise DataError(
            f"data.{key}: {wanted!r} is not a split of {data_cfg.dataset} (splits: {', '.join(opened.keys())})"
        )
    return opened[wanted]


def _columns(table: Any, data_cfg: DataSection, split: str) -> list[str]:
    """The configured field names, each checked against the split's columns."""
    fields = [("question_field", data_cfg.question_field), ("answer_field", data_cfg.answer_field)]
    if data_cfg.rationale_field:
        fields.append(("rationale_field", data_cfg.rationale_field))
    for key, column in fields:
        if column not in table.column_names:
            raise DataError(
                f"data.{key}: {column!r} is not a column of {data_cfg.dataset} split "
                f"{getattr(data_cfg, split + '_split')!r} (columns: {', '.join(table.column_names)})"
            )
    return [column for _, column in fields]


def _gold(raw: Any, answer_type: str, where: str, column: str) -> str:
    """The normalized gold answer; an answer carrying its working ('... #### 72') gives its final answer."""
    text = str(raw)
    try:
        return normalize_gold(text, answer_type)
    except ValueError:
        gold = extract_answer(text, answer_type)
        if gold is None:
            raise DataError(f"{where}: field '{column}' holds no {answer_type} answer ({text[:40]!r})") from None
        return gold


def load_hf_examples(data_cfg: DataSection, split: str) -> list[Example]:
    """The examples of one split ("train" or "test") of the configured Hugging Face dataset, in row order."""
    table = _split(_open(data_cfg), data_cfg, split)
    columns = _columns(table, data_cfg, split)
    hf_split = data_cfg.train_split if split == "train" else data_cfg.test_split
    examples = []
    for index, row in enumerate(table.select_columns(columns)):
        where = f"{data_cfg.dataset} split {hf_split!r} row {index}"
        for column in columns:
            if row[column] is None:
                raise DataError(f"{where}: field '{column}' is empty")
        rationale = str(row[data_cfg.rationale_field]).strip() if data_cfg.rationale_field else None
        examples.append(
            Example(
                id=f"hf/{split}/{index}",
                dataset="hf",
                split=split,
                question=str(row[data_cfg.question_field]).strip(),
                answer=_gold(row[data_cfg.answer_field], data_cfg.answer_type, where, data_cfg.answer_field),
                answer_type=data_cfg.answer_type,
                rationale=rationale,
                meta={"split": hf_split, "row": index},
            )
        )
    return examples
