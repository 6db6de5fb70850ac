"""The cache folder of built student bases (env TUTORLOOP_CACHE, default ~/.cache/tutorloop).

A build is written to a temporary sibling folder and renamed into place, so concurrent actors never
see a half-written model and all of them load the identical base.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("TUTORLOOP_CACHE", Path.home() / ".cache" / "tutorloop")).expanduser()


def tmp_sibling(final: Path) -> Path:
    """A fresh temporary folder name beside `final` (same file system, so the rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"


def publish(tmp: Path, final: Path) -> Path:
    """Rename a finished build folder into place; a concurrent builder that won keeps its copy."""
    try:
        tmp.rename(final)
    except OSError:
        if not (final / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final
