"""`tutorloop fork`: a new run that starts from a finished round of another run.

Ablations change what happens after round 0 (tailoring, self-reflection, replay) while round 0 itself
is the expensive part; a fork copies the parent's history and adapters up to that round, so both
branches share exactly the same starting point and the shared rounds are neither retrained nor
re-bought from the teacher.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from tutorloop.loop.call_keys import rekey_legacy_calls
from tutorloop.loop.core.config import RESUME_SAFE_KEYS, Config, apply_overrides, config_from_dict
from tutorloop.loop.core.config_meta import FORK_FIXED, FORK_FREE, changed_keys, marked_keys
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.run_dir import CONFIG_FILE, stored_config
from tutorloop.store.history import RunHistory, copy_rounds
from tutorloop.store.query import HISTORY_FILE

# What the copied rounds were made with: changing any of these would make the fork's history
# describe a different student, data or evaluation than the rounds it inherits (marked on the fields).
FORK_FIXED_KEYS = marked_keys(Config, FORK_FIXED)
# Keys inside those that only shape the fork's own rounds; the inherited rounds keep what they recorded.
FORK_FREE_KEYS = marked_keys(Config, FORK_FREE)


def fork_config(parent: Config, overrides: list[str], name: str) -> Config:
    """The parent's config with `overrides`; refuses changes to what the inherited rounds depend on."""
    cfg = config_from_dict(apply_overrides(parent.to_dict(), [*overrides, f"run.name={name}"]), "--set")
    fixed = sorted(
        k
        for k in changed_keys(parent.to_dict(), cfg.to_dict())
        if any(k == f or k.startswith(f + ".") for f in FORK_FIXED_KEYS)
        and not any(k == f or k.startswith(f + ".") for f in FORK_FREE_KEYS)
    )
    if fixed:
        raise RunError(
            f"--set {', '.join(fixed)}: a fork keeps the parent's {', '.join(FORK_FIXED_KEYS)} "
            f"(its inherited rounds were made with them; only {', '.join(FORK_FREE_KEYS)} may change); "
            f"start a new run instead"
        )
    return cfg


def fork_run(
    parent_dir: Path, run_dir: Path, after_round: int, overrides: list[str] | None = None, overwrite: bool = False
) -> Config:
    """Create `run_dir` holding `parent_dir`'s rounds up to `after_round` (inclusive); returns its config.

    The parent is read through a read-only attach (a consistent snapshot, also while the parent runs
    between writes) and is never modified.
    """
    history = parent_dir / HISTORY_FILE
    if not history.exists():
        raise RunError(f"{parent_dir}: no run history here (expected {history})")
    if run_dir.resolve() == parent_dir.resolve():
        raise RunError(f"{run_dir}: a fork needs its own run directory")
    parent, _ = stored_config(parent_dir)
    cfg = fork_config(parent, overrides or [], run_dir.name)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(f"{run_dir}: folder exists; choose another directory or pass --overwrite")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        copy_rounds(history, run_dir / HISTORY_FILE, after_round)
        fork = RunHistory(run_dir)
        # A parent stored by an older version: its answers re-keyed with the config that made them, so a
        # fork that changes a teacher's recording or endpoint is not answered from them.
        rekey_legacy_calls(fork, parent.teacher, parent.data.data_dir)
        for relative in fork.adapter_paths():
            shutil.copytree(parent_dir / relative, run_dir / relative)
        fork.become_fork(
            uuid.uuid4().hex,
            cfg.run.name,
            cfg.to_dict(),
            cfg.fingerprint(RESUME_SAFE_KEYS),
            f"{parent_dir}@round {after_round}",
        )
        cfg.write_yaml(run_dir / CONFIG_FILE)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # never leave a half-made fork behind
        raise
    return cfg
