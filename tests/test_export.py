"""`tutorloop export` on a real quick-config run: the default round is the best on the test split (and
says so), the peft folder reloads with PeftModel on the plain base, the merged folder reloads with
AutoModelForCausalLM alone, both generate what the run's own student generates, and the model card
states base, teacher, task, rounds and accuracies. Bad requests end in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from shared_run import cli, shared_quick_run

from tutorloop.actors.models import load_student, student_source
from tutorloop.loop.core.config import config_from_dict
from tutorloop.loop.core.student_prompt import student_prompt
from tutorloop.store.query import fetch_rows

PROMPT = student_prompt("Tom has 3 apples. He gets 4 more. How many apples does Tom have now?", "explain")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return shared_quick_run(tmp_path_factory)


def student_cfg(run_dir: Path):
    return config_from_dict(json.loads(fetch_rows(run_dir, "SELECT config FROM runs")[0]["config"])).student


def greedy(model, tokenizer, prompt: str = PROMPT) -> tuple[str, torch.Tensor]:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        logits = model(**ids).logits[0, -1]
    return tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True), logits


def best_round(run_dir: Path) -> tuple[int, float]:
    rows = fetch_rows(
        run_dir,
        "SELECT round, value FROM metrics WHERE split = 'test' AND name = 'accuracy' "
        "AND round >= 0 ORDER BY value DESC, round DESC LIMIT 1",
    )
    return rows[0]["round"], rows[0]["value"]


def test_peft_export_of_the_best_round_reloads_and_generates(run_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    result = cli("export", str(run_dir), "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    expected_round, accuracy = best_round(run_dir)
    assert f"round {expected_round}: best test accuracy ({accuracy:.1%}" in result.stdout
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and f"holds round {expected_round}" in card
    assert "program: synthetic-arithmetic via the program backend" in card and "**Task**: synthetic" in card
    assert "tiny from-scratch llama" in card and "baseline (untrained)" in card
    for row in fetch_rows(
        run_dir, "SELECT round, value FROM metrics WHERE split = 'test' AND name = 'accuracy_explain'"
    ):
        assert f"{row['value']:.1%}" in card

    # plain transformers + peft, no tutorloop code: the base folder and the exported adapter
    base = AutoModelForCausalLM.from_pretrained(student_source(student_cfg(run_dir)))
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(base, out).eval()
    text, logits = greedy(model, tokenizer)
    assert text.strip()
    # the same adapter as the run's own student loads it
    reference, ref_tokenizer = load_student(
        student_cfg(run_dir), adapter=str(run_dir / "adapters" / f"round-{expected_round}")
    )
    ref_text, ref_logits = greedy(reference, ref_tokenizer)
    assert text == ref_text
    assert torch.allclose(logits, ref_logits, atol=1e-5)


def test_merged_export_loads_in_plain_transformers(run_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    result = cli("export", str(run_dir), "--round", "1", "--out", str(out), "--merge", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "round 1 as asked" in result.stdout
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "holds round 1" in card and "round 1 as asked" in card
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    text, logits = greedy(model, tokenizer)
    assert text.strip()
    reference, ref_tokenizer = load_student(student_cfg(run_dir), adapter=str(run_dir / "adapters" / "round-1"))
    ref_text, ref_logits = greedy(reference, ref_tokenizer)
    assert text == ref_text
    assert torch.allclose(logits, ref_logits, atol=1e-4)


def test_export_refusals_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    missing = cli("export", str(run_dir), "--round", "9", "--out", str(tmp_path / "a"), timeout=120)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "--round 9: no adapter for that round; rounds with one: 0, 1, 2" in missing.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    taken = cli("export", str(run_dir), "--out", str(busy), timeout=120)
    assert taken.returncode == 1 and "not empty" in taken.stderr and taken.stderr.count("\n") == 1
    # an adapter changed on disk after the run stored it is refused (sha256 in checkpoints)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report*"))
    weights = copy / "adapters" / "round-0" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    tampered = cli("export", str(copy), "--round", "0", "--out", str(tmp_path / "b"), timeout=120)
    assert tampered.returncode == 1 and "sha256 differs" in tampered.stderr
