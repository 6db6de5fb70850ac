"""Task registry: the datasets `data.task` may name, their train/test splits and loaders.

Shipped data lives in the repository's `data/` folder (see data/README.md for provenance):
GSM8K (jsonl), seven datasets in the recorded-teacher format with split files, a synthetic
arithmetic generator (loop/core/synthetic.py) and a generic JSONL loader for a user's own data.
Answer extraction and grading live in loop/core/answers.py.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tutorloop.loop.core.answers import extract_answer, normalize_gold
from tutorloop.loop.core.config import DataSection
from tutorloop.loop.core.errors import DataError


@dataclass(frozen=True)
class Example:
    """One question of a dataset. `id` is unique across datasets and splits, e.g. 'multiarith/train/17'."""

    id: str
    dataset: str
    split: str  # "train" or "test"
    question: str
    answer: str  # gold answer, normalized (numbers without commas, 'yes'/'no', a letter, a word)
    answer_type: str = "number"  # number | yesno | choice | text
    rationale: str | None = None  # gold rationale where the data has one (gsm8k, synthetic)
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


REPO_ROOT = Path(__file__).resolve().parents[2]
RECORDED_TEACHER_DIR = "recorded_teacher/text-davinci-002_zero-shot-cot"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Task:
    name: str
    answer_type: str  # number | yesno | choice | text ("jsonl" takes it from the config)
    loader: Callable[[DataSection, str], list[Example]]


def resolve_data_dir(data_dir: str | Path) -> Path:
    """`data_dir` as given (absolute or relative to the current directory), else under the repository root.

    The fallback lets an editable install find the shipped `data/` from any working directory.
    """
    path = Path(data_dir).expanduser()
    if path.is_dir():
        return path
    if not path.is_absolute() and (REPO_ROOT / path).is_dir():
        return REPO_ROOT / path
    raise DataError(f"{data_dir}: data folder not found (looked in {Path.cwd()} and {REPO_ROOT})")


def normalize_question(text: str) -> str:
    """Key under which a question is looked up in recorded teacher outputs: stripped, whitespace collapsed."""
    return " ".join(text.split())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:  # a folder, no permission
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: bad JSON ({exc.msg})") from None


def recorded_path(data_dir: str | Path, task: str) -> Path:
    return resolve_data_dir(data_dir) / RECORDED_TEACHER_DIR / f"{task}.json"


def read_recorded(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The `data` mapping of a recorded-teacher file, checked for the keys the loaders use."""
    content = _read_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("data"), dict):
        raise DataError(
            f'{path}: missing key \'data\' (expected {{"metadata": ..., "data": {{index: [completion, ...]}}}})'
        )
    for index, completions in content["data"].items():
        if not isinstance(completions, list) or not completions:
            raise DataError(f"{path}: data['{index}']: expected a non-empty list of completions")
        for number, completion in enumerate(completions):
            for key in ("question", "answer"):
                if not isinstance(completion, dict) or key not in completion:
                    raise DataError(f"{path}: data['{index}'][{number}]: missing key '{key}'")
    return content["data"]


def load_recorded_teacher(data_dir: str | Path, task: str) -> dict[str, list[dict[str, Any]]]:
    """Recorded text-davinci-002 zero-shot-CoT outputs of a task, for the replay teacher backend.

    Returns {normalize_question(question): [completion, ...]}. Each completion is the stored dict:
    `question`, `answer` (gold), `reasoning_prompt` ("Q: ...\\nA: Let's think step by step."),
    `reasoning_completion` (the teacher's rationale), `prompt` (stage 2: rationale + "Therefore, the
    answer is" or "Therefore, the answer (arabic numerals) is"), `completion` (the teacher's answer
    text: grade it with `extract_answer(prompt + completion, answer_type)`), `reasoning_finish_reason`,
    `sample_index`, `completion_index`. Completions of questions that occur under several indices are
    concatenated in index order. The teacher is often wrong: grade before use.
    """
    by_question: dict[str, list[dict[str, Any]]] = {}
    for completions in read_recorded(recorded_path(data_dir, task)).values():
        key = normalize_question(completions[0]["question"])
        by_question.setdefault(key, []).extend(completions)
    return by_question


def _recorded_loader(task: str, answer_type: str) -> Callable[[DataSection, str], list[Example]]:
    def load(data_cfg: DataSection, split: str) -> list[Example]:
        path = recorded_path(data_cfg.data_dir, task)
        data = read_recorded(path)
        split_path = resolve_data_dir(data_cfg.data_dir) / "splits" / f"{task}__{data_cfg.split}.json"
        splits = _read_json(split_path)
        if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
            raise DataError(f"{split_path}: missing key '{split}' (expected a list of indices)")
        examples = []
        for index in splits[split]:
            completions = data.get(str(index))
            if completions is None:
                raise DataError(f"{split_path}: {split} index {index} not in {path}")
            first = completions[0]
            try:
                gold = normalize_gold(first["answer"], answer_type)
            except ValueError as exc:
                raise DataError(f"{path}: data['{index}']: {exc}") from None
            examples.append(
                Example(
                    id=f"{task}/{split}/{index}",
                    dataset=task,
                    split=split,
                    question=first["question"].strip(),
                    answer=gold,
                    answer_type=answer_type,
                    meta={"index": str(index)},
                )
            )
        return examples

    return load


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-empty line."""
    rows = []
    # split("\n"), not splitlines(): a JSON string may hold U+2028 and other characters splitlines() breaks at.
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: bad JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object")
        rows.append((number, record))
    return rows


def required_field(record: dict[str, Any], name: str, path: Path, number: int) -> str:
    value = record.get(name)
    if value is None:
        raise DataError(f"{path}: line {number}: missing field '{name}'")
    return str(value)


_CALCULATOR = re.compile(r"<<[^>]*>>")


def _load_gsm8k(data_cfg: DataSection, split: str) -> list[Example]:
    path = resolve_data_dir(data_cfg.data_dir) / "gsm8k" / f"{split}.jsonl"
    examples = []
    for index, (number, record) in enumerate(read_jsonl(path)):
        question = required_field(record, "question", path, number)
        solution = required_field(record, "answer", path, number)
        if "####" not in solution:
            raise DataError(f"{path}: line {number}: field 'answer' has no '#### <answer>'")
        reasoning, _, final = solution.rpartition("####")
        try:
            gold = normalize_gold(final.replace(",", ""), "number")
        except ValueError as exc:
            raise DataError(f"{path}: line {number}: {exc}") from None
        examples.append(
            Example(
                id=f"gsm8k/{split}/{index}",
                dataset="gsm8k",
                split=split,
                question=question.strip(),
                answer=gold,
                answer_type="number",
                rationale=_CALCULATOR.sub("", reasoning).strip(),
            )
        )
    return examples


def _jsonl_path(data_cfg: DataSection, split: str) -> Path:
    given = data_cfg.train_path if split == "train" else data_cfg.test_path
    if not given:
        raise DataError(f"data.{split}_path: needed when data.task is 'jsonl'")
    path = Path(given).expanduser()
    if path.exists() or path.is_absolute():
        return path
    try:
        return resolve_data_dir(data_cfg.data_dir) / path
    except DataError:
        return path  # reported as "file not found" under the name the user gave


def _load_jsonl(data_cfg: DataSection, split: str) -> list[Example]:
    path = _jsonl_path(data_cfg, split)
    answer_type = data_cfg.answer_type
    examples = []
    for index, (number, record) in enumerate(read_jsonl(path)):
        question = required_field(record, data_cfg.question_field, path, number)
        raw = required_field(record, data_cfg.answer_field, path, number)
        try:
            gold = normalize_gold(raw, answer_type)
        except ValueError:
            # An answer that carries its working ("... #### 72") is reduced to its final answer.
            gold = extract_answer(raw, answer_type)
            if gold is None:
                raise DataError(
                    f"{path}: line {number}: field '{data_cfg.answer_field}' holds no "
                    f"{answer_type} answer ({raw[:40]!r})"
                ) from None
        rationale = None
        if data_cfg.rationale_field:
            rationale = required_field(record, data_cfg.rationale_field, path, number).strip()
        examples.append(
            Example(
                id=f"jsonl/{split}/{index}",
                dataset="jsonl",
                split=split,
                question=question.strip(),
                answer=gold,
                answer_type=answer_type,
                rationale=rationale,
                meta={"line": number},
            )
        )
    return examples


def _load_hf(data_cfg: DataSection, split: str) -> list[Example]:
    from tutorloop.loop.core.hf_dataset import load_hf_examples  # hf_dataset imports Example from here

    return load_hf_examples(data_cfg, split)


def _load_synthetic(data_cfg: DataSection, split: str) -> list[Example]:
    from tutorloop.loop.core.synthetic import generate_problems, reworded_problems  # they import Example from here

    cfg = data_cfg.synthetic
    # Fixed seeds: the split itself partitions the problem space (see synthetic.py), so the seed only
    # has to be stable.
    pool = generate_problems(
        cfg.train_size,
        seed=0,
        min_steps=cfg.min_steps,
        max_steps=cfg.max_steps,
        max_value=cfg.max_value,
        split="train",
        allow_mul=cfg.allow_mul,
    )
    if split == "train":
        return pool
    if cfg.test_problems == "reworded":
        return reworded_problems(pool, cfg.test_size, seed=0)
    return generate_problems(
        cfg.test_size,
        seed=0,
        min_steps=cfg.min_steps,
        max_steps=cfg.max_steps,
        max_value=cfg.max_value,
        split="test",
        allow_mul=cfg.allow_mul,
    )


TASKS: dict[str, Task] = {
    name: Task(name, answer_type, _recorded_loader(name, answer_type))
    for name, answer_type in [
        ("multiarith", "number"),
        ("addsub", "number"),
        ("coin_flip", "yesno"),
        ("date_understanding", "choice"),
        ("last_letter_concatenation", "text"),
        ("strategy_qa", "yesno"),
        ("tracking_shuffled_objects", "choice"),
    ]
}
TASKS["gsm8k"] = Task("gsm8k", "number", _load_gsm8k)
TASKS["synthetic"] = Task("synthetic", "number", _load_synthetic)
TASKS["jsonl"] = Task("jsonl", "number", _load_jsonl)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"data.task: unknown task {name!r}; known: {', '.join(TASKS)}") from None


def answer_type_of(data_cfg: DataSection) -> str:
    """Answer type of the configured task (a generic JSONL or Hugging Face dataset declares its own)."""
    if data_cfg.task in ("jsonl", "hf"):
        return data_cfg.answer_type
    return get_task(data_cfg.task).answer_type


def subset(examples: list[Example], size: int | None, dataset: str, split: str) -> list[Example]:
    """First `size` examples after a shuffle seeded by the dataset name and split (stable across runs).

    A smaller size gives a prefix of a larger one. `size=None` keeps every example in file order.
    """
    if size is None:
        return list(examples)
    shuffled = list(examples)
    random.Random(f"{dataset}/{split}").shuffle(shuffled)
    return shuffled[:size]


def drop_test_duplicates(pool: list[Example], test: list[Example]) -> tuple[list[Example], int]:
    """The pool without questions whose text (whitespace and case aside) is a test question, and how many
    went: the published MultiArith train and test splits share questions word for word, and a pool
    that holds a test question would train on the test."""
    asked = {normalize_question(e.question).casefold() for e in test}
    kept = [e for e in pool if normalize_question(e.question).casefold() not in asked]
    return kept, len(pool) - len(kept)


def load_examples(data_cfg: DataSection, split: str) -> list[Example]:
    """Examples of the configured task and split ("train" or "test"), cut to pool_size / test_size."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    # task hf (a Hugging Face dataset, loop/core/hf_dataset.py) is dispatched here, beside the registry
    loader = _load_hf if data_cfg.task == "hf" else get_task(data_cfg.task).loader
    examples = loader(data_cfg, split)
    size = data_cfg.pool_size if split == "train" else data_cfg.test_size
    return subset(examples, size, data_cfg.task, split)
