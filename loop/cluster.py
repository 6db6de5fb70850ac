"""Ray: joining or starting a cluster and placing the student, trainer and teacher actors.

Local by default (a head node on 127.0.0.1 without the dashboard); `--address` or RAY_ADDRESS joins
an existing cluster, which is also what `ray job submit -- tutorloop run ...` provides.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from tutorloop.loop.config import Config


def start_ray(cfg: Config, address: str | None = None) -> bool:
    """Connect to Ray; returns True when this process started a local Ray it must shut down."""
    if ray.is_initialized():
        return False
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    # A local Ray stays on loopback and reports no usage statistics.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=True, configure_logging=False)
    return True


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def actor_options(cfg: Config, kind: str) -> dict[str, Any]:
    """Resources for a student or trainer actor: one GPU each where the cluster has GPUs (config -1)."""
    gpus = cfg.ray.student_gpus if kind == "student" else cfg.ray.trainer_gpus
    cpus = cfg.ray.student_cpus if kind == "student" else cfg.ray.trainer_cpus
    if gpus < 0:
        gpus = 1.0 if cluster_gpus() >= 1 else 0.0
    return {"num_cpus": cpus, "num_gpus": gpus}
