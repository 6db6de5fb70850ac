"""Config loading: valid files, dotted overrides, and one-line errors naming the key and the file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tutorloop.loop.core.config import (
    RESUME_SAFE_KEYS,
    Config,
    ConfigError,
    DataSection,
    LoraSection,
    RunSection,
    StudentSection,
    SyntheticSection,
    TrainingSection,
    config_from_dict,
    load_config,
)
from tutorloop.loop.core.config_meta import FORK_FIXED, FORK_FREE, added_later_fields, marked_keys
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load() -> None:
    from tutorloop.loop.experiment_spec import load_spec

    configs = sorted((REPO / "configs").rglob("*.yaml"))  # experiments/ too
    assert configs, "configs/ holds the run configs"
    for path in configs:
        if "base" in yaml.safe_load(path.read_text()):  # an experiment spec (tutorloop experiment)
            assert load_spec(path).arms
            continue
        cfg = load_config(path)
        assert cfg.run.name


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "run:\n  name: x\nteacher:\n  teachers:\n    - name: t1\n      backend: program\n")
    cfg = load_config(
        path,
        [
            "teacher.concurrency=3",
            "training.lr=0.01",
            "run.baseline=false",
            "student.lora.target_modules=[c_attn]",
            "teacher.max_cost_usd=null",
        ],
    )
    assert cfg.teacher.concurrency == 3
    assert cfg.training.lr == 0.01
    assert cfg.run.baseline is False
    assert cfg.student.lora.target_modules == ["c_attn"]
    assert cfg.teacher.max_cost_usd is None
    assert cfg.teacher.teachers[0].backend == "program"
    cfg = load_config(path, ["teacher.teachers.0.model=gpt-4o-mini", "teacher.teachers.0.price.input_per_mtok=0.15"])
    assert cfg.teacher.teachers[0].model == "gpt-4o-mini" and cfg.teacher.teachers[0].price.input_per_mtok == 0.15
    assert cfg.data.synthetic.max_steps == 2


def test_fingerprint_ignores_resume_safe_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "run:\n  rounds: 2\n")
    a = load_config(path)
    b = load_config(path, ["run.rounds=5", "teacher.max_cost_usd=3"])
    c = load_config(path, ["training.lr=0.1"])
    assert a.fingerprint(RESUME_SAFE_KEYS) == b.fingerprint(RESUME_SAFE_KEYS)
    assert a.fingerprint(RESUME_SAFE_KEYS) != c.fingerprint(RESUME_SAFE_KEYS)
    # a key added later and left at its default keeps the fingerprint of the runs recorded before it
    assert "mistake_balance" not in a.to_dict()["training"]
    balanced = load_config(path, ["training.mistake_balance=answer"])
    assert balanced.to_dict()["training"]["mistake_balance"] == "answer"
    assert balanced.fingerprint(RESUME_SAFE_KEYS) != a.fingerprint(RESUME_SAFE_KEYS)
    assert "tailored_lr" not in a.to_dict()["training"]
    slower = load_config(path, ["training.tailored_lr=1e-4"])
    assert slower.training.tailored_lr == 1e-4
    assert slower.fingerprint(RESUME_SAFE_KEYS) != a.fingerprint(RESUME_SAFE_KEYS)
    assert "test_problems" not in a.to_dict()["data"]["synthetic"]
    reworded = load_config(path, ["data.synthetic.test_problems=reworded"])
    assert reworded.to_dict()["data"]["synthetic"]["test_problems"] == "reworded"
    assert reworded.fingerprint(RESUME_SAFE_KEYS) != a.fingerprint(RESUME_SAFE_KEYS)


BAD_INPUTS = [
    ("run:\n  nmae: x\n", [], "unknown key 'run.nmae'"),
    ("bogus_section: {}\n", [], "unknown key 'bogus_section'"),
    ("run:\n  rounds: many\n", [], "key 'run.rounds'"),
    ("run:\n  rounds: -1\n", [], "key 'run.rounds'"),
    ("training:\n  alpha: 1.5\n", [], "key 'training.alpha'"),
    ("training:\n  mistake_balance: label\n", [], "key 'training.mistake_balance'"),
    (
        "data:\n  task: coin_flip\ntraining:\n  mistake_balance: category\n",
        [],
        "key 'training.mistake_balance': 'category' balances over question categories, which only data.task",
    ),
    ("training:\n  tailored_lr: 0\n", [], "key 'training.tailored_lr'"),
    ("student:\n  quantization: 3bit\n", [], "key 'student.quantization'"),
    ("teacher:\n  teachers:\n    - name: a\n    - name: a\n", [], "key 'teacher.teachers'"),
    ("teacher:\n  teachers:\n    - name: a\n      backend: telepathy\n", [], "key 'teacher.teachers.0.backend'"),
    ("data:\n  synthetic:\n    min_steps: 3\n    max_steps: 1\n", [], "key 'data.synthetic'"),
    ("data:\n  synthetic:\n    test_problems: unseen_chains\n", [], "key 'data.synthetic.test_problems'"),
    ("run: [1, 2\n", [], "invalid YAML"),
    ("- just\n- a list\n", [], "expected a mapping"),
    ("run:\n  name: x\n", ["run.seed=abc"], "key 'run.seed'"),
    ("run:\n  name: x\n", ["run.name"], "expected KEY=VALUE"),
    ("run:\n  name: x\n", ["run.name.first=a"], "'name' is not a section"),
    ("student:\n  generation:\n    top_p: 0\n", [], "key 'student.generation.top_p'"),
    ("teacher:\n  teachers:\n    - name: a\n", ["teacher.teachers.3.model=m"], "'3' is not an index"),
]


@pytest.mark.parametrize("text,overrides,expected", BAD_INPUTS)
def test_bad_config_is_one_line_error_naming_key_and_file(
    tmp_path: Path, text: str, overrides: list[str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    if not expected.startswith(("expected KEY", "'name' is not", "'3' is not")):  # command-line mistakes name the --set
        assert str(path) in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "training:\n  lr: fast\n")
    result = subprocess.run(
        [sys.executable, "-m", "tutorloop.loop.cli", "run", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "training.lr" in lines[0] and str(path) in lines[0]


SERVED = "teacher:\n  teachers:\n    - name: local\n      backend: openai\n      serve:\n"


def test_served_teacher_section(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, SERVED + "        model: qwen2.5-coder-1.5b-instruct\n"),
        ["teacher.teachers.0.serve.llama_cpp.threads=2", "teacher.teachers.0.serve.parallel=3"],
    )
    serve = cfg.teacher.teachers[0].serve
    assert (serve.engine, serve.model, serve.ctx, serve.parallel, serve.llama_cpp.threads) == (
        "llama.cpp",
        "qwen2.5-coder-1.5b-instruct",
        4096,
        3,
        2,
    )
    assert cfg.to_dict()["teacher"]["teachers"][0]["serve"]["llama_cpp"] == {"threads": 2}
    plain = load_config(write(tmp_path, "run:\n  name: x\n"))
    # No serve key in the dump when unset: configs written before it existed keep their fingerprint.
    assert plain.teacher.teachers[0].serve is None and "serve" not in plain.to_dict()["teacher"]["teachers"][0]
    path = write(tmp_path, SERVED + "        model: ~/m/teacher.gguf\n")
    assert load_config(path).teacher.teachers[0].serve.model == "~/m/teacher.gguf"


BAD_SERVE = [
    (SERVED + "        ctx: 2048\n", "missing key 'teacher.teachers.0.serve.model'"),
    (SERVED + "        model: gpt-4o\n", "key 'teacher.teachers.0.serve.model'"),
    (SERVED + "        model: a.gguf\n        engine: sglang\n", "key 'teacher.teachers.0.serve.engine'"),
    (SERVED + "        model: a.gguf\n        threads: 2\n", "unknown key 'teacher.teachers.0.serve.threads'"),
    (
        SERVED + "        model: a.gguf\n        llama_cpp:\n          threads: 0\n",
        "key 'teacher.teachers.0.serve.llama_cpp.threads'",
    ),
    (SERVED + "        model: a.gguf\n        parallel: 0\n", "key 'teacher.teachers.0.serve.parallel'"),
    (SERVED.replace("openai", "replay") + "        model: a.gguf\n", "needs backend 'openai'"),
    (
        SERVED.replace("backend: openai", "backend: openai\n      base_url: http://h:1/v1") + "        model: a.gguf\n",
        "set base_url or serve, not both",
    ),
]


@pytest.mark.parametrize("text,expected", BAD_SERVE)
def test_bad_serve_section_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


# Every later-added key set away from its default (its value must reach the stored config).
LATER_KEYS_SET = {
    "run": {"report_to": ["tensorboard"]},
    "data": {
        "task": "synthetic",
        "synthetic": {"test_problems": "reworded"},
        "dataset": "x/y",
        "dataset_config": "main",
        "train_split": "a",
        "test_split": "b",
    },
    "teacher": {
        "teachers": [
            {"name": "t", "backend": "openai", "serve": {"model": "x.gguf"}, "rounds": "all"},
            {"name": "r", "recording": "r.json", "rounds": "all"},
        ]
    },
    "training": {"mistake_balance": "category", "tailored_lr": 1e-4},
}

# (config_hash, sha256 of the stored config's JSON in stored key order) as computed by the code before the
# key lists and the "added later" serializers became field metadata (issue 39 item 4): a run stored by
# that code resumes, forks and compares only while these stay the same. "defaults" has every later-added
# key at its default.
RECORDED_FINGERPRINTS = {
    "quick": (
        "51a5b7b59b277e16b6869422df7bd10b3d970899411d453333b3cd30cabdcff0",
        "f8d8a2535ddccfcf8e0e3aa6362ece4b8921835356f378cdb9dac441ad8aeac5",
    ),
    "demo": (
        "735aed8deaa8b8eda43ea8f55a509bef8dabca1dd641740faef3b0522a08a249",
        "0fca9c2f1cf7812e3ad1f7b46959e5c3678f5a897f81a42221ef3b92a15f61b1",
    ),
    "defaults": (
        "0c1561a6724c3a94f9193334241b6db55ac31f6b0cd87158f6083263ba83a620",
        "3ba646ffe9f675d4365309e17a460040ab8d214f2d0f3c7b1fb6a5e1e425f5e0",
    ),
    "later_keys_set": (
        "c9a5f23fbba4f1c579181567e178ee4170e8e2202a8e30a9f988fd4433606ff7",
        "c89503e7caa0af536e327c34c4d1ada43eecf08234b3e03fc88ec4a30f23cf7c",
    ),
}


def test_fingerprints_of_recorded_configs_are_unchanged() -> None:
    configs = {
        "quick": load_config(REPO / "configs" / "quick.yaml"),
        # the MultiArith demo as configs/demo.yaml was before it moved to Coin Flip (tests/data/recorded_configs)
        "demo": load_config(REPO / "tests" / "data" / "recorded_configs" / "demo_multiarith.yaml"),
        "defaults": Config(),
        "later_keys_set": config_from_dict(LATER_KEYS_SET),
    }
    for name, cfg in configs.items():
        stored = hashlib.sha256(json.dumps(cfg.to_dict()).encode()).hexdigest()
        assert (cfg.fingerprint(RESUME_SAFE_KEYS), stored) == RECORDED_FINGERPRINTS[name], name


def test_key_lists_come_from_the_fields() -> None:
    # The lists the code held by hand before the fields carried them.
    assert set(RESUME_SAFE_KEYS) == {
        "run.rounds",
        "run.patience",
        "run.run_dir",
        "run.report",
        "teacher.max_cost_usd",
        "teacher.concurrency",
        "teacher.requests_per_minute",
        "teacher.tokens_per_minute",
        "teacher.timeout_s",
        "teacher.max_retries",
        "teacher.retry_backoff_s",
        "teacher.retry_backoff_max_s",
        "teacher.max_consecutive_failures",
        "teacher.preflight_timeout_s",
        "run.report_to",
        "teacher.num_actors",
        "ray",
        "student.generation.batch_size",
        "training.gradient_checkpointing",
        "student.recheck_mistakes",
    }
    assert set(marked_keys(Config, FORK_FIXED)) == {"data", "student", "run.baseline", "run.seed"}
    assert marked_keys(Config, FORK_FREE) == ("student.generation", "student.recheck_mistakes", "student.engine")
    later = {
        f"{model.__name__}.{name}"
        for model in (
            RunSection,
            SyntheticSection,
            DataSection,
            StudentSection,
            TrainingSection,
            TeacherEndpoint,
            TeacherSection,
        )
        for name in added_later_fields(model)
    }
    assert later == {
        "RunSection.report_to",
        "SyntheticSection.test_problems",
        "DataSection.dataset",
        "DataSection.dataset_config",
        "DataSection.train_split",
        "DataSection.test_split",
        "DataSection.val_size",
        "StudentSection.recheck_mistakes",
        "StudentSection.engine",
        "TrainingSection.mistake_balance",
        "TrainingSection.tailored_lr",
        "TrainingSection.accepted_budget",
        "TeacherSection.tailored_show_answer",
        "TeacherSection.check_equations",
        "TeacherSection.check_reaches_answer",
        "TeacherEndpoint.serve",
        "TeacherEndpoint.recording",
        "TeacherEndpoint.rounds",
    }


def test_each_alpha_says_which_it_is() -> None:
    loss_mix = TrainingSection.model_fields["alpha"].description
    lora_scaling = LoraSection.model_fields["alpha"].description
    assert "loss" in loss_mix and "student.lora.alpha" in loss_mix
    assert "LoRA" in lora_scaling and "training.alpha" in lora_scaling
