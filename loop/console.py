"""A quiet console: tutorloop's own progress bars and round summaries on the terminal, everything
else (Python warnings, library logging, the actors' output) in the run's log file.

The driver wraps a run in `console_to_log(log_file)` and hands the same path to `start_ray`, which
passes `actor_runtime_env(log_file)` to ray.init as the job's runtime_env. Every Ray worker of the job
then runs `worker_output_to_log` before its first actor or task: it points the worker's stdout and
stderr at the log file, so prints, warnings, progress bars and C-level messages all land there, live,
also when an actor dies mid-run. Copying Ray's per-worker files out of its session folder instead
would work only at the end of a run and only on the node that holds them. A node without the run
folder (a remote cluster without a shared file system) keeps its output in Ray's worker logs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

RUN_LOG_ENV = "TUTORLOOP_RUN_LOG"
# Libraries that give their logger its own terminal handler and stop propagation to the root (ray.init
# with configure_logging=False clears Ray's handler, so Python's last-resort handler prints it instead).
_OWN_HANDLER_LOGGERS = ("ray", "transformers")
# Progress bars of huggingface_hub and transformers ("Loading weights", downloads, shard writing).
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def console_to_log(log_file: str | Path) -> Iterator[None]:
    """While the block runs, Python warnings and library logging of this process (Ray's token-auth
    banner among them) go to `log_file`, appended; tutorloop's prints and tqdm bars stay on the terminal."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in _OWN_HANDLER_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [], True
    root.addHandler(handler)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the root's handler
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


def actor_runtime_env(log_file: str | Path | None) -> dict[str, Any]:
    """The job-level runtime_env for ray.init: progress bars off in every worker and, with a log file,
    the workers' output in it.

    Job-level on purpose: a per-actor runtime_env would make Ray boot a fresh worker for each actor
    instead of using the ones it has started already. A variable already set in the driver is left as
    the user set it (local workers inherit it, and a `ray job submit` job may not set it twice).
    """
    env = {key: value for key, value in _QUIET_ENV.items() if key not in os.environ}
    if log_file is None:
        return {"env_vars": env} if env else {}
    env[RUN_LOG_ENV] = str(Path(log_file).resolve())
    return {"env_vars": env, "worker_process_setup_hook": f"{__name__}.worker_output_to_log"}


def worker_output_to_log() -> None:
    """Ray worker_process_setup_hook: append this worker's stdout and stderr to the run's log file."""
    path = os.environ.get(RUN_LOG_ENV)
    if not path or not os.path.isdir(os.path.dirname(path)):
        return  # no run folder on this node: the output stays in Ray's worker logs
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"--- ray worker pid {os.getpid()} on {socket.gethostname()}\n".encode())
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


@contextmanager
def elapsed_bar(desc: str) -> Iterator[None]:
    """A bar for a wait of unknown length (a model loading, a server starting): its elapsed time ticks."""
    with tqdm(desc=desc, bar_format="{desc}: {elapsed}", leave=False, dynamic_ncols=True) as bar:
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
