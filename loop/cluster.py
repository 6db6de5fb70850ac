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
    # address="local": a Ray of its own even where another one runs on this machine (ray.init would join that).
    ray.init(
        address="local",
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


def actor_demands(cfg: Config) -> list[tuple[str, dict[str, float]]]:
    """Each actor the run starts, named with the config keys that size it, and the resources it asks for."""
    from tutorloop.actors.student import student_actor_options

    demands = []
    for kind, count in (("student", cfg.ray.num_students), ("trainer", 1)):
        options = student_actor_options(cfg.ray, kind)
        wants = {"CPU": options["num_cpus"], "GPU": options["num_gpus"]}
        demands += [(f"a {kind} actor (ray.{kind}_cpus, ray.{kind}_gpus)", wants)] * count
    demands += [("a teacher actor (ray.teacher_cpus)", {"CPU": cfg.ray.teacher_cpus})] * cfg.teacher.num_actors
    for endpoint in cfg.teacher.teachers:
        if endpoint.serve is not None:
            key = "teacher.teachers.*.serve.num_cpus"
            demands.append((f"teacher '{endpoint.name}' server ({key})", {"CPU": endpoint.serve.num_cpus}))
    return demands


def unplaceable(cfg: Config) -> str | None:
    """One line naming the first actor no node can hold beside the others, or None when they all fit.

    Ray would leave such an actor pending forever (a hang); placing them first-fit, the largest GPU and
    CPU asks first, finds it before any starts. Each actor sits on one node, so cluster totals can hide it."""
    free = [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]
    for name, wants in sorted(actor_demands(cfg), key=lambda d: (-d[1].get("GPU", 0), -d[1]["CPU"])):
        asked = {key: value for key, value in wants.items() if value > 0}
        node = next((f for f in free if all(f.get(k, 0) + 1e-9 >= v for k, v in asked.items())), None)
        if node is None:
            most = {key: max((f.get(key, 0) for f in free), default=0) for key in asked}
            return (
                f"the Ray cluster cannot place {name}: it asks for "
                + ", ".join(f"{value:g} {key}" for key, value in asked.items())
                + "; the most any node has left beside the other actors is "
                + ", ".join(f"{value:g} {key}" for key, value in most.items())
                + "; add a node with them or lower the keys"
            )
        for key, value in asked.items():
            node[key] -= value
    return None
