"""`tutorloop fork` on a real quick-config run: the fork inherits the parent's rounds up to the chosen one
(same metrics, same adapter bytes, nothing retrained), runs its own later rounds under the changed
config through real local Ray, records its parent, and leaves the parent untouched. Forks that would
change what the inherited rounds were made with are refused in one line, leaving nothing behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from shared_run import REPO, cli, shared_quick_run

from tutorloop.loop.core.config import config_from_dict, load_config
from tutorloop.loop.core.datasets import load_examples
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.curriculum import random_selection
from tutorloop.loop.fork import fork_config
from tutorloop.loop.round_plan import derive_seed
from tutorloop.store.query import fetch_rows


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_quick_run(tmp_path_factory)


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def metrics(run_dir: Path, max_round: int) -> list[dict]:
    return fetch_rows(
        run_dir,
        "SELECT round, split, name, value FROM metrics WHERE round <= ? AND name NOT LIKE '%seconds%' ORDER BY ALL",
        [max_round],
    )


def taught(run_dir: Path, round_: int) -> set[str]:
    return {
        r["example_id"]
        for r in fetch_rows(run_dir, "SELECT DISTINCT example_id FROM rationales WHERE round = ?", [round_])
    }


def test_fork_after_round_0_runs_the_random_selection_ablation(parent: Path, tmp_path: Path) -> None:
    parent_summary = fetch_rows(parent, "SELECT * FROM round_summary ORDER BY round")
    parent_history = (parent / "history.duckdb").read_bytes()
    fork = tmp_path / "random"
    result = cli(
        "fork",
        str(parent),
        "--after-round",
        "0",
        "--run-dir",
        str(fork),
        "--set",
        "training.selection=random",
        "--set",
        "training.exam_size=20",
        "--set",
        "run.rounds=1",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"forked {parent} after round 0" in result.stdout
    assert "round -1 (baseline): done earlier" in result.stdout
    assert "round  0 (core): done earlier" in result.stdout
    assert "round  1 (tailored): test accuracy" in result.stdout

    # The inherited rounds are the parent's, byte for byte; nothing of them was recomputed.
    assert metrics(fork, 0) == metrics(parent, 0)
    assert tree_digest(fork / "adapters" / "round-0") == tree_digest(parent / "adapters" / "round-0")
    assert fetch_rows(fork, "SELECT count(*) AS n FROM train_steps WHERE round = 0") == fetch_rows(
        parent, "SELECT count(*) AS n FROM train_steps WHERE round = 0"
    )
    assert [r["round"] for r in fetch_rows(fork, "SELECT round FROM rounds ORDER BY round")] == [-1, 0, 1]

    # Round 1 ran under the fork's config: it examined a seeded draw of 20 pool questions and taught as
    # many questions as it found mistakes there (capped), drawn at random from the whole pool.
    run = fetch_rows(fork, "SELECT name, status, parent, config FROM runs")[0]
    assert (run["name"], run["status"], run["parent"]) == ("random", "finished", f"{parent}@round 0")
    cfg = config_from_dict(json.loads(run["config"]))
    assert (cfg.training.selection, cfg.training.exam_size) == ("random", 20)
    pool = load_examples(cfg.data, "train")
    exam = fetch_rows(
        fork,
        "SELECT example_id, bool_or(NOT correct) AS wrong FROM attempts "
        "WHERE round = 1 AND phase = 'exam' GROUP BY example_id",
    )
    assert {r["example_id"] for r in exam} == set(random_selection(pool, 20, derive_seed(cfg.run.seed, 1, "exam-draw")))
    count = min(sum(r["wrong"] for r in exam), cfg.training.max_mistakes)
    assert taught(fork, 1) == set(random_selection(pool, count, derive_seed(cfg.run.seed, 1, "teach")))
    assert fetch_rows(fork, "SELECT count(*) AS n FROM train_steps WHERE round = 1")[0]["n"] > 0
    assert (fork / "adapters" / "round-1" / "adapter_config.json").exists()

    # The parent is untouched.
    assert (parent / "history.duckdb").read_bytes() == parent_history
    assert fetch_rows(parent, "SELECT * FROM round_summary ORDER BY round") == parent_summary


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--after-round", "0", "--set", "data.task=addsub"], "--set data.task: a fork keeps the parent's data"),
        (["--after-round", "0", "--set", "student.lora.r=4"], "--set student.lora.r: a fork keeps"),
        (["--after-round", "7"], "round 7 is not finished there (finished rounds: -1, 0, 1, 2)"),
        (["--after-round", "0", "--set", "training.selection=sometimes"], "training.selection"),
    ],
)
def test_bad_fork_is_refused_in_one_line(parent: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    fork = tmp_path / "bad"
    result = cli("fork", str(parent), "--run-dir", str(fork), *args)
    assert result.returncode != 0
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not fork.exists()


def test_fork_of_a_missing_run_is_refused(tmp_path: Path) -> None:
    result = cli("fork", str(tmp_path / "nothing"), "--after-round", "0", "--name", "x")
    assert result.returncode != 0
    assert "no run history here" in result.stderr
    assert not (tmp_path / "x").exists()


def test_fork_may_change_decoding_but_not_the_student() -> None:
    parent = load_config(REPO / "configs/quick.yaml")
    cfg = fork_config(parent, ["student.generation.calculator=true", "student.generation.temperature=0.5"], "calc")
    assert cfg.student.generation.calculator and cfg.student.generation.temperature == 0.5
    assert cfg.student.lora == parent.student.lora and cfg.run.name == "calc"
    with pytest.raises(RunError, match="student.model"):
        fork_config(parent, ["student.generation.calculator=true", "student.model=other"], "x")
