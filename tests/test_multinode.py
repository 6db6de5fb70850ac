"""Several Ray nodes on one machine (ray.cluster_utils.Cluster), as on a cluster without a shared disk.

The head node holds the driver and offers no resources, so every actor lands on a worker node: one
with CPUs only, one declaring GPUs (placement is checked without CUDA: the student falls back to the
CPU). The run's actors must not be handed any path under the run directory; the run directory must
hold everything the run made; a config the cluster cannot fit is one line before any actor starts.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from actor_args import record_actor_args
from shared_run import REPO, SMALL
from teacher_server import TeacherServer

from tutorloop.loop.core.config import load_config
from tutorloop.loop.core.errors import RunError

ray = pytest.importorskip("ray")

# Smaller than the shared quick run: two raylets more on a shared 2-core machine.
TINY_RUN = [
    *SMALL,
    "--set",
    "run.rounds=1",
    "--set",
    "data.synthetic.train_size=32",
    "--set",
    "data.synthetic.test_size=16",
    "--set",
    "student.eval_modes=[explain]",
    "--set",
    "training.epochs=1",
    "--set",
    "training.checkpoint_every=2",  # checkpoints travel to the driver several times per training
    "--set",
    "ray.torch_threads=1",
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict]:
    """A head node without resources for actors, a CPU node and a node declaring 2 GPUs."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    temp = {kind: tempfile.mkdtemp(prefix=f"tl-{kind}-") for kind in ("cpu", "gpu")}
    with pytest.MonkeyPatch.context() as env:  # each node's processes, actors included, get their own TMPDIR
        env.setenv("TMPDIR", temp["cpu"])
        cpu_node = nodes.add_node(num_cpus=2, resources={"cpu_node": 1})
        env.setenv("TMPDIR", temp["gpu"])
        gpu_node = nodes.add_node(num_cpus=2, num_gpus=2, resources={"gpu_node": 1})
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, log_to_driver=False)
    try:
        yield {
            "address": nodes.address,
            "cpu": cpu_node.node_id,
            "gpu": gpu_node.node_id,
            "nodes": nodes,
            **{f"{kind}_temp": Path(folder) for kind, folder in temp.items()},
        }
    finally:
        ray.shutdown()
        nodes.shutdown()
        for folder in temp.values():
            shutil.rmtree(folder, ignore_errors=True)


def actor_nodes() -> dict[str, set[str]]:
    """The node ids each actor class ran on (dead actors included), from Ray's actor table."""
    # The public list_actors needs the dashboard, which the head node here leaves out to stay light.
    from ray._private import state  # noqa: PLC2701

    placed: dict[str, set[str]] = {}
    for actor in state.actors().values():
        placed.setdefault(actor["ActorClassName"], set()).add(actor["Address"]["NodeID"])
    return placed


def watch_for(folder: Path, pattern: str) -> tuple[list[Path], threading.Event]:
    """Collects the paths matching `pattern` that appear in `folder` until the returned event is set."""
    seen: list[Path] = []
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(0.02):
            seen.extend(p for p in folder.glob(pattern) if p not in seen)

    threading.Thread(target=watch, daemon=True).start()
    return seen, finished


def test_a_run_lands_on_the_worker_nodes_and_hands_actors_no_driver_path(
    cluster: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tutorloop.loop.run_dir import run_from_config
    from tutorloop.store.query import fetch_rows

    cfg = load_config(REPO / "configs" / "quick.yaml", [o for o in TINY_RUN if o != "--set"])
    handed = record_actor_args(monkeypatch)
    run_dir = tmp_path / "run"
    trainer_temp, finished = watch_for(cluster["gpu_temp"], "tutorloop-trainer-*")
    try:
        assert run_from_config(cfg, run_dir=run_dir, address=cluster["address"]) == 0
    finally:
        finished.set()

    rounds = fetch_rows(run_dir, "SELECT round, status FROM rounds ORDER BY round")
    assert [(r["round"], r["status"]) for r in rounds] == [(-1, "done"), (0, "done"), (1, "done")]
    # Everything the run made is in its directory: the history, the adapters, the config and the log.
    for made in ("history.duckdb", "config.yaml", "run.log", "adapters/round-0", "adapters/round-1"):
        assert (run_dir / made).exists(), made
    assert not list(run_dir.glob("trainer_state/round-*"))  # removed once each adapter was stored
    # No actor (constructor or method call) was handed a path under the run directory.
    assert handed.calls and not handed.under(run_dir), handed.under(run_dir)[:3]
    # The GPU-asking actors are on the node declaring GPUs; the driver's node ran none.
    placed = actor_nodes()
    assert placed["StudentActor"] == {cluster["gpu"]} and placed["TrainerActor"] == {cluster["gpu"]}
    # The trainer checkpointed in its own node's temporary folder, and left nothing there.
    assert trainer_temp and not list(cluster["gpu_temp"].glob("tutorloop-trainer-*"))


def test_a_run_without_an_address_starts_its_own_ray_beside_a_running_cluster(cluster: dict, tmp_path: Path) -> None:
    # ray.init() with no address joins a cluster it finds on this machine; a local run must not.
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    run_dir = tmp_path / "local"
    command = ["run", "configs/quick.yaml", "--run-dir", str(run_dir), *TINY_RUN, "--set", "run.rounds=0"]
    result = subprocess.run(
        [sys.executable, "-m", "tutorloop.loop.cli", *command], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from tutorloop.store.query import fetch_rows

    assert [r["round"] for r in fetch_rows(run_dir, "SELECT round FROM rounds WHERE status = 'done'")] == [-1, 0]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        # 3.25 CPUs fit the cluster's 4 in total, but no single node has the trainer's 2.5.
        (["ray.student_cpus=0.5", "ray.trainer_cpus=2.5"], "a trainer actor (ray.trainer_cpus, ray.trainer_gpus)"),
        # One GPU each for 3 students and the trainer: the GPU node declares 2.
        (["ray.num_students=3", "ray.student_cpus=0.25", "ray.student_gpus=1"], "a student actor"),
    ],
)
def test_a_config_the_cluster_cannot_fit_is_one_line(cluster: dict, overrides: list[str], named: str) -> None:
    from tutorloop.loop.workers import RayWorkers

    cfg = load_config(REPO / "configs" / "quick.yaml", overrides)
    workers = RayWorkers(cfg, "number", cluster["address"])
    try:
        with pytest.raises(RunError) as info:
            workers.start()
    finally:
        workers.shutdown()
    message = str(info.value)
    assert "\n" not in message and named in message and "cannot place" in message


def remove_when_checkpointed(nodes, node, state_dir: Path, done: threading.Event) -> None:
    """Removes `node` once the driver holds a checkpoint of the training in `state_dir`."""
    deadline = time.monotonic() + 300
    while not (state_dir / "latest").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    nodes.remove_node(node)
    done.set()


@pytest.mark.slow
def test_losing_the_trainer_node_stops_in_one_line_and_resume_finishes(
    cluster: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs last in this module: it replaces the GPU node by a new one."""
    from tutorloop.loop.run_dir import resume_run, run_from_config
    from tutorloop.store.query import fetch_rows

    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    nodes = cluster["nodes"]
    gpu_node = next(n for n in nodes.worker_nodes if n.node_id == cluster["gpu"])
    run_dir = tmp_path / "run"
    with TeacherServer() as server:
        teacher = [
            "teacher.teachers.0.backend=openai",
            f"teacher.teachers.0.base_url={server.base_url}",
            "teacher.teachers.0.model=program",
            "training.epochs=4",  # long enough a training to lose its node in the middle
        ]
        cfg = load_config(REPO / "configs" / "quick.yaml", [o for o in TINY_RUN if o != "--set"] + teacher)
        removed = threading.Event()
        args = (nodes, gpu_node, run_dir / "trainer_state" / "round-0", removed)
        threading.Thread(target=remove_when_checkpointed, args=args, daemon=True).start()
        with pytest.raises(RunError) as info:
            run_from_config(cfg, run_dir=run_dir, address=cluster["address"])
        assert removed.is_set()
        message = str(info.value)
        assert "\n" not in message and "trainer actor died" in message and "step-" in message
        before = Counter(request["prompt"] for request in server.requests)

        nodes.add_node(num_cpus=2, num_gpus=2, resources={"gpu_node": 1})
        nodes.wait_for_nodes()
        assert resume_run(run_dir, address=cluster["address"]) == 0
        after = Counter(request["prompt"] for request in server.requests) - before
    rounds = fetch_rows(run_dir, "SELECT round, status FROM rounds ORDER BY round")
    assert [(r["round"], r["status"]) for r in rounds] == [(-1, "done"), (0, "done"), (1, "done")]
    # Round 0's teaching was stored before its training lost the node: not one of its requests went out again.
    assert before and not set(before) & set(after)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def job_head() -> Iterator[str]:
    """A head node of our own with the dashboard (the Jobs API's server), as scripts/ray_job_local.sh starts
    one; its address for JobSubmissionClient. Stopped by its PID, never `ray stop`."""
    temp_dir = tempfile.mkdtemp(prefix="tl-ray-")  # short: Ray's socket paths live under it
    port = free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # jobs run with the project's venv
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         "--port=0", "--num-cpus=3", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={port}", f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_job_submitted_with_the_jobs_api_finishes_and_its_history_is_readable(job_head: str, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tutorloop.store.query import fetch_rows

    # A head node may ask for Ray's token (token auth): sent as `ray job submit` sends it.
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    token = os.environ.get("RAY_AUTH_TOKEN") or (token_file.read_text().strip() if token_file.exists() else "")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    deadline = time.monotonic() + 120
    while True:
        try:
            client = JobSubmissionClient(job_head, headers=headers)
            break
        except (ConnectionError, RuntimeError) as exc:  # the dashboard is still starting
            assert time.monotonic() < deadline, f"no Jobs API at {job_head}: {exc}"
            time.sleep(2)
    run_dir = tmp_path / "job-run"
    command = [sys.executable, "-m", "tutorloop.loop.cli", "run", str(REPO / "configs" / "quick.yaml")]
    entrypoint = shlex.join([*command, "--run-dir", str(run_dir), *TINY_RUN])
    while True:
        try:
            job = client.submit_job(entrypoint=entrypoint)
            break
        except RuntimeError as exc:  # "No available agent to submit job": the head's agent is still starting
            assert time.monotonic() < deadline, str(exc)
            time.sleep(2)
    deadline = time.monotonic() + 600
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        time.sleep(2)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    rounds = fetch_rows(run_dir, "SELECT round, status FROM rounds ORDER BY round")
    assert [(r["round"], r["status"]) for r in rounds] == [(-1, "done"), (0, "done"), (1, "done")]
