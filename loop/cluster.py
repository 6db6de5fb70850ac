"""Ray: joining or starting a cluster and placing the student, trainer and teacher actors.

Local by default (a head node on 127.0.0.1 without the dashboard); `--address` or RAY_ADDRESS joins
an existing cluster, which is also what `ray job submit -- tutorloop run ...` provides.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import ray

from tutorloop.loop.console import actor_runtime_env
from tutorloop.loop.core.config import Config


def start_ray(cfg: Config, address: str | None = None, log_file: str | Path | None = None) -> bool:
    """Connect to Ray; returns True when this process started a local Ray it must shut down.

    With `log_file`, the actors' output goes to that file instead of the terminal (see console.py);
    without it, it reaches the terminal as Ray forwards it. Progress bars in actors are off either way.
    """
    if ray.is_initialized():
        return False
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    quiet = {"runtime_env": actor_runtime_env(log_file) or None, "log_to_driver": log_file is None}
    if address:
        ray.init(address=address, **quiet)
        return False
    # Loopback needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 set before Ray is imported (the CLI does).
    ray.init(
        num_cpus=local_cpus(cfg),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        **quiet,
    )
    return True


def needed_cpus(cfg: Config) -> float:
    """CPUs the run's actors reserve together (they all live for the whole run; a teacher server from
    the first round that needs it to the end)."""
    served = sum(t.serve.num_cpus for t in cfg.teacher.teachers if t.serve is not None)
    return (
        cfg.ray.num_students * cfg.ray.student_cpus
        + cfg.ray.trainer_cpus
        + cfg.teacher.num_actors * cfg.ray.teacher_cpus
        + served
    )


def local_cpus(cfg: Config) -> int:
    """Logical CPUs of a local Ray: all cores, and at least what the actors reserve together.

    The actors work one phase at a time, so reserving more logical CPUs than there are cores
    costs nothing and keeps the trainer from waiting for a CPU forever.
    """
    return max(cfg.ray.num_cpus or os.cpu_count() or 1, math.ceil(needed_cpus(cfg)))


def missing_cpus(cfg: Config) -> float:
    """How many CPUs the cluster lacks for the run's actors (0 when they all fit)."""
    return max(needed_cpus(cfg) - float(ray.cluster_resources().get("CPU", 0)), 0.0)
