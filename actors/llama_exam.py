"""The student's exams through llama.cpp's server (`student.engine: llama.cpp`), on this process's node.

The server (xllamacpp, in this process) serves the student's GGUF, the file the transformers student is
dequantized from, with the round's LoRA adapter converted to llama.cpp's format (lora_gguf.py). llama.cpp
loads adapters when the server starts, so a new adapter means a new server; the base file is mmapped,
which keeps that restart to about a second. Rows go to the native `/completion` endpoint as the same
token ids the transformers exam feeds its model, from as many threads as the server has slots, and the
returned token ids are graded by the same code (exam.ExamRunner.run): the records have the same shape.

Decoding matches the transformers exam: greedy is top-1; sampling is temperature then top-p with a
seed per (seed, question, sample index); the exam's stop strings end a row; the calculator stops a row
at each "=", writes the exact result where the text ends in an arithmetic expression, and continues.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tutorloop.actors.exam import DecodeSettings, ExamRunner
from tutorloop.actors.lora_gguf import BaseModelInfo, adapter_bytes_to_gguf
from tutorloop.actors.models import DEFAULT_STUDENT_ALIAS, find_default_gguf, load_tokenizer, student_source
from tutorloop.actors.serving import LlamaCppServer
from tutorloop.loop.core.calculator import calculator_result
from tutorloop.loop.core.config import StudentSection
from tutorloop.loop.core.errors import ConfigError, RunError

# Each slot's context: the exam's longest prompt plus its answer must fit (prompts here run to ~300 tokens).
SLOT_CONTEXT = 1024
REQUEST_TIMEOUT_S = 600.0
_SEED_MASK = (1 << 32) - 1  # llama.cpp's sampler seed is 32 bits


def student_gguf(student_cfg: StudentSection) -> Path:
    """The GGUF file llama.cpp serves for this student; ConfigError naming the key when there is none."""
    if student_cfg.model == DEFAULT_STUDENT_ALIAS:
        found = find_default_gguf()
        if found is None:
            raise ConfigError(
                f"student.model '{DEFAULT_STUDENT_ALIAS}': its GGUF is not installed; "
                "run `python scripts/prepare_default_model.py`"
            )
        return found
    path = Path(student_cfg.model).expanduser()
    if student_cfg.gguf_file:
        path = path / student_cfg.gguf_file
    if path.suffix != ".gguf" or not path.is_file():
        raise ConfigError(f"student.engine 'llama.cpp': {path} is not a .gguf file on this node")
    return path


def _settings_body(settings: DecodeSettings) -> dict[str, Any]:
    """The sampler part of a request: top-1 for greedy, else temperature then top-p and nothing else."""
    if settings.greedy:
        return {"samplers": ["top_k"], "top_k": 1}
    return {"samplers": ["temperature", "top_p"], "temperature": settings.temperature, "top_p": settings.top_p}


class LlamaCppExaminer(ExamRunner):
    """Runs exams for one student through a llama.cpp server it owns (restarted when the adapter changes)."""

    def __init__(self, student_cfg: StudentSection, answer_type: str, threads: int = 0) -> None:
        self.cfg = student_cfg
        self.answer_type = answer_type
        self.gguf = student_gguf(student_cfg)
        self.base = BaseModelInfo(self.gguf)
        # The tokenizer of the transformers student: the same prompt ids, and the same decoding of answers.
        self.tokenizer = load_tokenizer(student_source(student_cfg))
        self.threads = threads or os.cpu_count() or 1
        self.slots = student_cfg.generation.batch_size
        self._workdir = tempfile.TemporaryDirectory(prefix="tutorloop-llama-exam-")
        self._adapter_key: str | None = None
        self._server: LlamaCppServer | None = None
        self._url = ""
        self._lora: list[dict[str, Any]] = []
        self._client = httpx.Client(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=self.slots))
        self._start_server(None)

    def _start_server(self, adapter: bytes | None) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        lora = []
        if adapter is not None:
            lora = [adapter_bytes_to_gguf(adapter, self.base, Path(self._workdir.name) / "adapter.gguf")]
        self._server = LlamaCppServer(
            self.gguf, threads=self.threads, ctx=SLOT_CONTEXT * self.slots, parallel=self.slots, lora_paths=lora
        )
        self._url = self._server.start().removesuffix("/v1")
        self._lora = [{"id": 0, "scale": 1.0}] if lora else []

    def set_adapter(self, adapter: bytes | None) -> None:
        """Serve this peft adapter (bytes) from now on, or the bare base with None."""
        key = None if adapter is None else hashlib.sha256(adapter).hexdigest()
        if key != self._adapter_key:
            self._start_server(adapter)
            self._adapter_key = key

    def _complete(self, prompt: list[int], n_predict: int, stop: list[str], body: dict[str, Any]) -> dict[str, Any]:
        request = {
            **body,
            "prompt": prompt,
            "n_predict": n_predict,
            "stop": stop,
            "return_tokens": True,
            "cache_prompt": True,
            "lora": self._lora,
        }
        response = self._client.post(f"{self._url}/completion", json=request)
        if response.status_code != 200:
            raise RunError(
                f"student llama.cpp server: /completion answered {response.status_code}: {response.text[:200]}"
            )
        return response.json()

    def decode_row(self, prompt: list[int], settings: DecodeSettings, seed: int) -> list[int]:
        """One row's generated ids (EOS excluded): a request, then one more after each calculator result."""
        limit = min(settings.max_new_tokens, SLOT_CONTEXT - len(prompt))
        stop = settings.stop + (["="] if settings.calculator else [])
        out: list[int] = []
        segment = 0
        while len(out) < limit:
            # A continuation draws with a seed of its own, derived from the row's.
            body = {**_settings_body(settings), "seed": (seed + 7919 * segment) & _SEED_MASK}
            reply = self._complete(prompt + out, limit - len(out), stop, body)
            tokens = reply["tokens"]
            # An end-of-generation token ends the list; the transformers exam leaves it out too.
            out += tokens[:-1] if reply.get("stop_type") == "eos" and tokens else tokens
            if reply.get("stop_type") != "word" or reply.get("stopping_word") != "=":
                break
            result = calculator_result(self.tokenizer.decode(out, skip_special_tokens=True))
            if result is not None:
                out += self.tokenizer(result, add_special_tokens=False).input_ids[: limit - len(out)]
            segment += 1
        return out[:limit] if limit > 0 else []

    def generate(
        self, prompts: list[list[int]], settings: DecodeSettings, seeds: list[int], batch_size: int | None
    ) -> list[list[int]]:
        """Every row from its own thread, as many at once as the server has slots."""
        with ThreadPoolExecutor(max_workers=min(batch_size or self.slots, self.slots)) as pool:
            return list(pool.map(lambda row: self.decode_row(prompts[row], settings, seeds[row]), range(len(prompts))))

    def close(self) -> None:
        """Stop the server and drop the converted adapter."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._client.close()
        self._workdir.cleanup()
