"""A local OpenAI-compatible HTTP server for tests: its model is the program teacher, with faults on demand.

    with TeacherServer(latency_s=0.0) as server:
        server.script("429", "500")                 # the next two requests fail, in this order
        server.rule("Tom has 3 apples", "reset")    # the next request whose prompt holds this text
        ... point the openai backend at server.base_url ...
        assert server.calls == 3

Endpoints: POST /v1/chat/completions and /v1/completions (the reply is program.respond of the
last user message or of the prompt), GET /v1/models (counted in `model_listings`, not in `calls`).
`TeacherServer(models=["a", "b"])` lists those models and answers 404 to a request for any other;
`list_models=False` answers 404 to GET /v1/models (a server without it); `api_key="..."` answers
401 to every request (GET or POST) that does not carry that key. Fault kinds (FAULTS): "429" (with Retry-After: retry_after),
"500", "503", "401" (echoes the request's API key in its message, as real servers partly do),
"hang" (no answer for hang_s, then the connection closes), "reset" (TCP reset, no response),
"truncated_json" (200 with half a body), "empty_choices", "empty_text", "length"
(finish_reason=length, text cut), "no_usage" (a good answer without usage), "slow" (a good answer
after slow_s). Every request is counted (thread-safe), faulted or not, and logged in `requests`.

A ThreadingHTTPServer (one thread per connection) in a daemon thread; `stop()` (or leaving the
`with` block) shuts it down, closes its open connections and releases hung handlers, so its port
is closed from then on.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tutorloop.actors.teacher import estimate_tokens, program

FAULTS = (
    "429",
    "500",
    "503",
    "401",
    "hang",
    "reset",
    "truncated_json",
    "empty_choices",
    "empty_text",
    "length",
    "no_usage",
    "slow",
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256
    owner: "TeacherServer"

    def server_activate(self) -> None:
        super().server_activate()
        self.connections: set[socket.socket] = set()  # open keep-alive connections, closed by stop()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and client time-outs are expected here; tests assert on outcomes instead


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    # Headers and body leave in one buffered write with Nagle off; otherwise the small writes meet
    # the client's delayed ACK and every response waits ~40 ms.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> None:
        data = body if body is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _refuse_key(self, owner: "TeacherServer") -> bool:
        """401 (as OpenAI words it) when the server wants a key and the request has another one."""
        if owner.api_key is None or self.headers.get("Authorization", "") == f"Bearer {owner.api_key}":
            return False
        self._send_json(
            401,
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        owner = self.server.owner
        with owner._lock:
            owner.model_listings += 1
        if self._refuse_key(owner):
            return
        if not owner.list_models or not self.path.rstrip("/").endswith("/models"):
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        names = owner.models or ["program"]
        self._send_json(
            200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "tests"} for name in names]}
        )

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        chat = self.path.rstrip("/").endswith("/chat/completions")
        if not chat and not self.path.rstrip("/").endswith("/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_json(400, {"error": {"message": "request body is not JSON"}})
            return
        if chat:
            users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
            prompt = users[-1] if users else ""
        else:
            prompt = body.get("prompt", "")
            prompt = prompt[0] if isinstance(prompt, list) else prompt
        auth = self.headers.get("Authorization", "")
        fault = owner._take(prompt, {"path": self.path, "prompt": prompt, "auth": auth, "body": body})
        if self._refuse_key(owner):
            return
        if owner.models is not None and body.get("model") not in owner.models:
            self._send_json(
                404,
                {
                    "error": {
                        "message": f"The model `{body.get('model')}` does not exist.",
                        "type": "invalid_request_error",
                        "code": "model_not_found",
                    }
                },
            )
            return
        with owner._lock:
            owner._in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner._in_flight)
        try:
            self._answer(owner, chat, body, prompt, auth, fault)
        finally:
            with owner._lock:
                owner._in_flight -= 1

    def _answer(
        self, owner: "TeacherServer", chat: bool, body: dict[str, Any], prompt: str, auth: str, fault: str | None
    ) -> None:
        if fault == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN, so the client sees a connection reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "hang":
            owner._stopping.wait(owner.hang_s)
            self.close_connection = True
            return
        if fault in ("429", "500", "503"):
            headers = {"Retry-After": owner.retry_after} if fault == "429" else {}
            self._send_json(int(fault), {"error": {"message": f"injected {fault}", "type": "server_error"}}, headers)
            return
        if fault == "401":
            key = auth.removeprefix("Bearer ").strip()
            self._send_json(
                401,
                {
                    "error": {
                        "message": f"Incorrect API key provided: {key}.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
            return
        delay = owner.slow_s if fault == "slow" else owner.latency_s
        if delay:
            owner._stopping.wait(delay)
        text = program.respond(prompt)
        finish = "stop"
        if fault == "length":
            text, finish = text[: max(1, len(text) // 2)], "length"
        if fault == "empty_text":
            text = ""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        payload: dict[str, Any] = {
            "id": f"cmpl-{owner.calls}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "program"),
            "choices": [] if fault == "empty_choices" else [choice],
        }
        if fault != "no_usage":
            prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(text)
            payload["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        data = json.dumps(payload).encode()
        if fault == "truncated_json":
            data = data[: len(data) // 2]
        self._send_json(200, None, body=data)


class TeacherServer:
    """The test server; see the module docstring. `base_url` is what the openai client needs."""

    def __init__(
        self,
        latency_s: float = 0.0,
        slow_s: float = 0.5,
        hang_s: float = 10.0,
        retry_after: str = "1",
        models: list[str] | None = None,
        list_models: bool = True,
        api_key: str | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.models = models  # None: any model name is answered (and "program" listed)
        self.list_models = list_models
        self.api_key = api_key
        self.model_listings = 0  # GET /v1/models requests
        self.slow_s = slow_s
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._queue: deque[str] = deque()
        self._rules: list[tuple[str, deque[str]]] = []
        self._stopping = threading.Event()
        self._in_flight = 0
        self.max_in_flight = 0  # most requests being answered at the same moment
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def settle(self, quiet_s: float = 0.3, timeout_s: float = 10.0) -> int:
        """Wait until no request is being answered and none has arrived for `quiet_s`; the call count then.

        A killed client's requests already on the wire still arrive after it is gone."""
        deadline, seen, quiet_since = time.monotonic() + timeout_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                now = (len(self.requests), self._in_flight)
            if now != seen:
                seen, quiet_since = now, time.monotonic()
            elif now[1] == 0 and time.monotonic() - quiet_since >= quiet_s:
                break
            time.sleep(0.05)
        return self.calls

    def script(self, *faults: str) -> None:
        """Faults for the next requests, in arrival order (one each); then requests are answered normally."""
        self._check(faults)
        with self._lock:
            self._queue.extend(faults)

    def rule(self, match: str, *faults: str) -> None:
        """Faults for the next requests whose prompt contains `match` (before the general script)."""
        self._check(faults)
        with self._lock:
            self._rules.append((match, deque(faults)))

    @staticmethod
    def _check(faults: tuple[str, ...]) -> None:
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")

    def _take(self, prompt: str, entry: dict[str, Any]) -> str | None:
        with self._lock:
            fault = None
            for match, queue in self._rules:
                if match in prompt and queue:
                    fault = queue.popleft()
                    break
            if fault is None and self._queue:
                fault = self._queue.popleft()
            entry["fault"] = fault
            self.requests.append(entry)
            return fault

    def start(self) -> "TeacherServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="teacher-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for connection in list(self._httpd.connections):  # a stopped server keeps no connection alive
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> "TeacherServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Serve from a process of its own (scripts/bench_teacher.py).

    Prints the base URL, serves until stdin closes, then prints one JSON line {"calls", "max_in_flight"}.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="local OpenAI-compatible program-teacher server")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    with TeacherServer(latency_s=args.latency) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()
        print(json.dumps({"calls": server.calls, "max_in_flight": server.max_in_flight}), flush=True)


if __name__ == "__main__":
    main()
