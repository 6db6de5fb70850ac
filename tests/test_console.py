"""The quiet console: warnings, library logging and the actors' output go to the run's log file."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from tutorloop.loop.console import RUN_LOG_ENV, actor_runtime_env, console_to_log

RAY_PROBE = """
import os, sys, time, warnings
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # as the CLI sets them
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray
from tutorloop.loop import cluster
from tutorloop.loop.core.config import Config
from tutorloop.loop.console import console_to_log

@ray.remote
class Chatty:
    def __init__(self):
        print("actor init print")
        warnings.warn("actor init warning", FutureWarning)

    def work(self):
        from huggingface_hub.utils import tqdm
        for _ in tqdm(range(3), desc="Loading weights"):
            pass
        sys.stderr.write("actor stderr line\\n")
        return os.getpid()

log_file = sys.argv[1]
with console_to_log(log_file):
    owns = cluster.start_ray(Config(), log_file=log_file)
    pid = ray.get(Chatty.remote().work.remote())
    warnings.warn("driver warning")
    print(f"driver summary line {pid}", flush=True)
    time.sleep(1)
    if owns:
        ray.shutdown()
"""


def test_console_to_log_moves_warnings_and_library_logging(tmp_path) -> None:
    log_file = tmp_path / "run" / "run.log"
    ray_logger = logging.getLogger("ray")
    before = (ray_logger.handlers[:], ray_logger.propagate)
    with console_to_log(log_file):
        warnings.warn("a deprecation for the log", FutureWarning, stacklevel=1)
        ray_logger.warning("a ray banner")
        logging.getLogger("some.library").warning("a library warning")
    text = log_file.read_text()
    for line in ("a deprecation for the log", "a ray banner", "a library warning"):
        assert line in text
    assert (ray_logger.handlers, ray_logger.propagate) == before  # restored afterwards


def test_runtime_env_sends_worker_output_to_the_log_only_with_a_log_file(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert actor_runtime_env(None) == {"env_vars": {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}}
    env = actor_runtime_env(tmp_path / "run.log")
    assert env["env_vars"][RUN_LOG_ENV] == str(tmp_path / "run.log")
    assert env["worker_process_setup_hook"] == "tutorloop.loop.console.worker_output_to_log"
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user's own setting is kept
    assert actor_runtime_env(None) == {}


def test_a_local_run_prints_only_its_own_lines(tmp_path) -> None:
    """Real Ray: the token-auth banner, an actor's prints, warnings and progress bars stay off the
    terminal; the actor's output and the driver's warnings are in the log file."""
    log_file = tmp_path / "run.log"
    done = subprocess.run(
        [sys.executable, "-c", RAY_PROBE, str(log_file)], capture_output=True, text=True, timeout=600, check=True
    )
    console = done.stdout + done.stderr
    assert [line for line in console.splitlines() if line.strip()] == [
        line for line in done.stdout.splitlines() if line.startswith("driver summary line")
    ], console
    text = log_file.read_text()
    for line in (
        "actor init print",
        "actor init warning",
        "actor stderr line",
        "driver warning",
        "Token authentication",
    ):
        assert line in text, text
    assert "Loading weights" not in text  # progress bars are off in the actors


def test_elapsed_bar_ticks_while_the_wait_lasts(capsys) -> None:
    import time

    from tutorloop.loop.console import elapsed_bar

    with elapsed_bar("starting the teacher server: qwen (llama.cpp)"):
        time.sleep(1.3)  # no update from the waiting code: the bar refreshes by itself
    shown = capsys.readouterr().err
    frames = [f for f in shown.split("\r") if "starting the teacher server: qwen (llama.cpp)" in f]
    assert len(frames) >= 3 and "00:01" in shown  # redrawn while waiting, with the elapsed time
