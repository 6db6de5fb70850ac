"""Run configs/quick.yaml in this process and report where the wall time went: model work inside
the student and trainer actors (loading and compute), teacher waits, and the rest (orchestration:
Ray start-up and calls, the store, data preparation), whose share is the overhead.

Last line: one JSON object with `overhead_fraction` and the seconds behind it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tutorloop.loop.cli import prefer_local_ray_env

prefer_local_ray_env(None)  # before Ray is imported: a local Ray on loopback

from tutorloop.actors.models import load_student  # noqa: E402
from tutorloop.loop.core.config import load_config  # noqa: E402
from tutorloop.loop.engine import RoundEngine  # noqa: E402
from tutorloop.loop.run_dir import create_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs" / "quick.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    # The report is written after the loop and is not part of it; measure the loop alone.
    cfg = load_config(args.config, ["run.report=false", *args.set])
    load_student(cfg.student)  # builds and caches the base model once, outside the measured run
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / cfg.run.name
        started = time.monotonic()
        create_run(cfg, run_dir)
        engine = RoundEngine(cfg, run_dir)
        code = engine.run()
        wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"the run failed with exit code {code}")
    load = engine.actor_seconds.get("load_s", 0.0)
    compute = engine.actor_seconds.get("compute_s", 0.0)
    teacher = engine.seconds["teacher_wait_s"]
    overhead = wall - load - compute - teacher
    # Fixed start-up inside the overhead: starting Ray, and the actor processes' boot (Python, Ray
    # worker, importing torch/transformers) before their model load; the rest is per-round work.
    ray_start = engine.seconds.get("ray_start_s", 0.0)
    actor_boot = max(engine.actor_seconds.get("boot_s", 0.0) - load, 0.0)
    steady = overhead - ray_start - actor_boot
    result = {
        "wall_s": round(wall, 2),
        "model_load_s": round(load, 2),
        "model_compute_s": round(compute, 2),
        "teacher_wait_s": round(teacher, 2),
        "overhead_s": round(overhead, 2),
        "ray_start_s": round(ray_start, 2),
        "actor_boot_s": round(actor_boot, 2),
        "overhead_fraction_after_startup": round(steady / (wall - ray_start - actor_boot), 4),
        "overhead_fraction": round(overhead / wall, 4),
    }
    print(
        f"wall {wall:.1f} s = model load {load:.1f} s + model compute {compute:.1f} s "
        f"+ teacher waits {teacher:.1f} s + overhead {overhead:.1f} s ({overhead / wall:.1%})"
    )
    print(
        f"overhead = Ray start {ray_start:.1f} s + actor process boot {actor_boot:.1f} s (both once per run) "
        f"+ per-round orchestration and store {steady:.1f} s "
        f"({result['overhead_fraction_after_startup']:.1%} of the time after start-up)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
