"""Run directories: creating one, resuming one, its stored config and what may change on resume.

A run directory holds `history.duckdb`, `config.yaml` (the resolved config, no secrets: keys stay in
the environment), `adapters/round-<k>/`, `run.log` (warnings and the actors' output) and, while a
round trains, the trainer's state in `trainer_state/round-<k>/` (`checkpoints/round-<k>/` in older runs).
"""

from __future__ import annotations

import json
import platform
import shutil
import uuid
from datetime import datetime
from pathlib import Path

from tutorloop.loop.core.config import RESUME_SAFE_KEYS, Config, apply_overrides, config_from_dict
from tutorloop.loop.core.config_meta import changed_keys
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.engine import RoundEngine
from tutorloop.loop.planner import load_pool
from tutorloop.loop.round_plan import planned_rounds
from tutorloop.store.history import RunHistory, read_run
from tutorloop.store.query import HISTORY_FILE

CONFIG_FILE = "config.yaml"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("tutorloop", "torch", "transformers", "peft", "ray", "duckdb", "openai"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def stored_config(run_dir: Path) -> tuple[Config, str]:
    """The config a run was started (or last resumed) with, and the run's status."""
    run = read_run(run_dir)
    if run is None:
        raise RunError(f"{run_dir}: the history holds no run")
    return config_from_dict(json.loads(run["config"]), str(run_dir / CONFIG_FILE)), run["status"]


def create_run(cfg: Config, run_dir: Path) -> None:
    """A new run directory: the resolved config, and the history with the run and its examples."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.write_yaml(run_dir / CONFIG_FILE)
    questions = load_pool(cfg)  # the pool the engine uses
    examples = questions.pool + questions.test + questions.val
    RunHistory(run_dir).create(
        {
            "run_id": uuid.uuid4().hex,
            "name": cfg.run.name,
            "created_at": datetime.now(),
            "status": "created",
            "config": cfg.to_dict(),
            "config_hash": cfg.fingerprint(RESUME_SAFE_KEYS),
            "versions": _versions(),
        },
        [
            {
                "example_id": e.id,
                "dataset": e.dataset,
                "split": e.split,
                "question": e.question,
                "gold": e.answer,
                "answer_type": e.answer_type,
                "rationale": e.rationale,
            }
            for e in examples
        ],
    )


def run_from_config(
    cfg: Config,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    address: str | None = None,
) -> int:
    """`tutorloop run`: a new run (or, with `resume`, the one already in the directory) to its end."""
    run_dir = Path(run_dir) if run_dir else Path(cfg.run.run_dir) / cfg.run.name
    if (run_dir / HISTORY_FILE).exists():
        if resume:
            stored, _ = stored_config(run_dir)
            check_resumable(stored, cfg, run_dir)
            update_config(run_dir, cfg)
            return RoundEngine(cfg, run_dir, address).run()
        if not overwrite:
            raise RunError(
                f"{run_dir}: a run exists here; continue it with `tutorloop resume {run_dir}` "
                f"or start over with --overwrite"
            )
        shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunError(f"{run_dir}: folder exists and is not a run; choose another run.name or --run-dir")
    create_run(cfg, run_dir)
    return RoundEngine(cfg, run_dir, address).run()


def check_resumable(stored: Config, new: Config, run_dir: Path) -> None:
    """Refuses a config that differs from the stored one outside the resume-safe keys."""
    if stored.fingerprint(RESUME_SAFE_KEYS) != new.fingerprint(RESUME_SAFE_KEYS):
        changed = sorted(changed_keys(stored.to_dict(), new.to_dict()))
        changed = [k for k in changed if not any(k == s or k.startswith(s + ".") for s in RESUME_SAFE_KEYS)]
        raise RunError(
            f"{run_dir}: config changed since the run started ({', '.join(changed)}); only "
            f"{', '.join(RESUME_SAFE_KEYS)} may change on resume"
        )


def update_config(run_dir: Path, cfg: Config) -> None:
    """The run goes on under `cfg` (differing at most in resume-safe keys): config.yaml and the history."""
    cfg.write_yaml(run_dir / CONFIG_FILE)
    RunHistory(run_dir).set_config(cfg.to_dict())


def resume_run(run_dir: Path, overrides: list[str] | None = None, address: str | None = None) -> int:
    """`tutorloop resume`: the run goes on from where it stopped, with resume-safe `overrides`."""
    if not (run_dir / HISTORY_FILE).exists():
        raise RunError(f"{run_dir}: no run history here (expected {run_dir / HISTORY_FILE})")
    stored, status = stored_config(run_dir)
    cfg = config_from_dict(apply_overrides(stored.to_dict(), overrides or []), "--set")
    check_resumable(stored, cfg, run_dir)
    done = RunHistory(run_dir).done_rounds()
    if status == "finished" and set(planned_rounds(cfg.run)) <= done:
        print(
            f"tutorloop: {run_dir} is already finished ({len(done)} rounds); nothing to resume. "
            f"Add rounds with --set run.rounds=N",
            flush=True,
        )
        return 0
    update_config(run_dir, cfg)
    return RoundEngine(cfg, run_dir, address).run()
