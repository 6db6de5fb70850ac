"""One small real run shared by the test modules that need one (report, compare, export).

The first module that asks runs `tutorloop run configs/quick.yaml` (with a smaller pool and test split,
and fewer epochs, so it takes about a minute) into the session's temporary folder; later modules reuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONSOLE = "console.txt"  # beside the run folder: what `tutorloop run` printed
SMALL = [
    "--set",
    "data.synthetic.train_size=48",
    "--set",
    "data.synthetic.test_size=24",
    "--set",
    "training.epochs=2",
    "--set",
    "training.max_mistakes=24",
    "--set",
    "student.recheck_mistakes=true",  # the takeaway's mechanism lines (tests/test_takeaway.py)
]


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tutorloop.loop.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def shared_quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished run directory (baseline, round 0, tailored rounds 1 and 2)."""
    base = tmp_path_factory.getbasetemp() / "shared-quick-run"
    run_dir = base / "quick"
    done = base / "finished"
    if not done.exists():
        result = cli("run", "configs/quick.yaml", "--run-dir", str(run_dir), "--overwrite", *SMALL, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        (base / CONSOLE).write_text(result.stdout)
        done.touch()
    return run_dir
