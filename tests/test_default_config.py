"""Every default runs: an empty config trains the default tiny student on MultiArith without a crash.

The default tiny GPT-2 has 256 learned positions while training.max_length is 384, and MultiArith's
recorded rationales in the tiny tokenizer (one token per digit) run past 256 tokens: the trainer must
keep a sequence within the student's positions, as the exam already does when it decodes. Settings that
still cannot work stop with one line naming the key: tiny heads that do not split the width (config
validation), positions too few for any sample (the trainer actor's ConfigError, surfaced as itself).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from tiny_student import RANDOM_GPT2, problems, samples_for, student_cfg, training_cfg

from tutorloop.actors.models import load_tokenizer, student_source
from tutorloop.actors.training import LoraTrainer
from tutorloop.loop.core.config import StudentSection, config_from_dict
from tutorloop.loop.core.errors import ConfigError


def test_long_sample_is_cut_to_the_students_positions() -> None:
    trainer = LoraTrainer(student_cfg({**RANDOM_GPT2, "max_positions": 32}), training_cfg(max_length=384))
    encoded = trainer.encoder.encode("Question: 1 + 2 + 3?", " 1 + 2 = 3. 3 + 3 = 6. " * 20)
    assert encoded is not None and len(encoded.ids) == 32
    assert len(encoded.labels) == 32 and encoded.targets > 0


def test_max_length_below_the_positions_still_rules() -> None:
    trainer = LoraTrainer(student_cfg({**RANDOM_GPT2, "max_positions": 64}), training_cfg(max_length=20))
    encoded = trainer.encoder.encode("Question: 1 + 2?", " 1 + 2 = 3. " * 20)
    assert encoded is not None and len(encoded.ids) == 20


def test_no_target_within_the_positions_is_one_config_error() -> None:
    trainer = LoraTrainer(student_cfg({**RANDOM_GPT2, "max_positions": 16}), training_cfg())
    with pytest.raises(ConfigError, match=r"^training.max_length: .* within 16 tokens .*student.tiny.max_positions"):
        trainer.train(samples_for(problems(4)), [])


@pytest.mark.parametrize(
    "tiny,expected",
    [
        ({"n_head": 3}, "key 'student.tiny.n_head': .*must divide student.tiny.n_embd 64 \\(got 3\\)"),
        ({"arch": "llama", "n_embd": 24, "n_head": 8}, "key 'student.tiny.n_head': .*even width for llama"),
    ],
)
def test_tiny_heads_that_cannot_split_the_width_are_refused(tiny: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        config_from_dict({"student": {"tiny": tiny}}, "c.yaml")
    assert "\n" not in str(caught.value)


def test_tiny_heads_that_split_the_width_pass() -> None:
    config_from_dict({"student": {"tiny": {"arch": "gpt2", "n_embd": 24, "n_head": 8}}})
    config_from_dict({"student": {"tiny": {"arch": "llama", "n_embd": 32, "n_head": 8}}})


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`tutorloop run` on an empty config with `overrides`, in a fresh process (its own local Ray)."""
    (tmp_path / "empty.yaml").write_text("")
    args = [a for key in ("run.rounds=0", "run.name=defaults", *overrides) for a in ("--set", key)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tutorloop.loop.cli",
            "run",
            str(tmp_path / "empty.yaml"),
            *args,
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_empty_config_runs_round_zero(tmp_path: Path) -> None:
    """`tutorloop run EMPTY.yaml --set run.rounds=0`: every default but the number of questions (a whole run
    takes minutes on 2 shared cores), through baseline, teaching, training and evaluation."""
    done = run_cli(tmp_path, "data.pool_size=24", "data.test_size=16")
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    with duckdb.connect(str(tmp_path / "run" / "history.duckdb"), read_only=True) as con:
        rounds = [r for (r,) in con.execute("SELECT DISTINCT round FROM metrics ORDER BY round").fetchall()]
        trained = con.execute("SELECT input, target FROM samples WHERE round = 0").fetchall()
    assert rounds == [-1, 0]
    # The crash's condition was met: a sample longer than the default tiny model's 256 positions.
    tokenizer = load_tokenizer(student_source(StudentSection()))
    assert max(len(tokenizer(prompt + target).input_ids) for prompt, target in trained) > 256


def test_positions_too_few_for_any_sample_stop_with_one_line(tmp_path: Path) -> None:
    """The trainer actor's expected failure reaches the terminal as the CLI's one line, not Ray's traceback."""
    done = run_cli(tmp_path, "student.tiny.max_positions=16", "run.baseline=false")
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("tutorloop: error: ")]
    assert len(errors) == 1 and "student.tiny.max_positions" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
