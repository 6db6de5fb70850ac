"""Exam: batched greedy decoding equals one-at-a-time decoding; seeded sampling; records; adapter swaps."""

from __future__ import annotations

import re

import pytest
import torch
from tiny_student import PRETRAINED_TINY, RANDOM_GPT2, RANDOM_LLAMA, problems, student_cfg

from tutorloop.actors.exam import PROMPTED_STOP, DecodeSettings, Examiner, cut_at_stop, decode_batch, exam_format
from tutorloop.loop.core.answers import answers_match, extract_answer, extract_chat_answer
from tutorloop.loop.core.calculator import calculator_result
from tutorloop.loop.core.student_prompt import STEP_BY_STEP, student_prompt

RECORD_KEYS = {"example_id", "sample_index", "mode", "output", "extracted", "correct", "prompt_tokens", "output_tokens"}


@pytest.fixture(scope="module")
def pretrained() -> Examiner:
    return Examiner(student_cfg(PRETRAINED_TINY), "number")


@pytest.mark.parametrize("tiny", [RANDOM_GPT2, PRETRAINED_TINY], ids=["gpt2-random", "llama-pretrained"])
def test_batched_greedy_equals_one_at_a_time_token_for_token(tiny: dict) -> None:
    examiner = Examiner(student_cfg(tiny), "number")
    # 1 to 3 steps: prompts of clearly different lengths share batches, so left padding is exercised.
    examples = problems(20, max_steps=3)
    tok, model = examiner.tokenizer, examiner.model
    prompts = [tok(student_prompt(ex.question, "explain")).input_ids for ex in examples]
    assert len({len(p) for p in prompts}) >= 3
    settings = DecodeSettings(max_new_tokens=40, stop=["\n\n", "Question:"])
    batched = decode_batch(model, tok, prompts, settings)
    singles = [decode_batch(model, tok, [p], settings)[0] for p in prompts]
    assert batched == singles
    # The decoding loop itself agrees with transformers' own generate, one question at a time.
    for prompt, ours in zip(prompts[:6], singles):
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=40,
            do_sample=False,
            stop_strings=settings.stop,
            tokenizer=tok,
        )
        theirs = [t for t in out[0, len(prompt) :].tolist() if t != tok.eos_token_id]
        assert theirs == ours
    # And the records of a batched exam equal those of a batch-size-1 exam. Questions of an exam are
    # sorted by prompt length, so a row that ends early lets in a prompt wider than the running cache.
    alone = examiner.run(examples, "explain", batch_size=1)
    assert examiner.run(examples, "explain", batch_size=3) == alone
    assert examiner.run(examples, "explain", batch_size=8) == alone


def test_continuous_batching_refills_places_and_keeps_rows_independent() -> None:
    # Few positions: the position limit ends rows at different steps (longer prompts sooner), so
    # places free up one by one and later prompts join a batch whose cache is longer than theirs.
    examiner = Examiner(student_cfg({**RANDOM_GPT2, "max_positions": 72}), "number")
    tok, model = examiner.tokenizer, examiner.model
    prompts = [tok(student_prompt(ex.question, "explain")).input_ids for ex in problems(14, max_steps=3)]
    settings = DecodeSettings(max_new_tokens=40, stop=[])
    singles = [decode_batch(model, tok, [p], settings)[0] for p in prompts]
    assert len({len(s) for s in singles}) >= 3
    assert any(len(s) == 72 - len(p) for s, p in zip(singles, prompts))  # ended by the position limit
    for size in (1, 3, 5, len(prompts)):
        assert decode_batch(model, tok, prompts, settings, batch_size=size) == singles


def test_records_are_graded_and_complete(pretrained: Examiner) -> None:
    examples = problems(12, max_steps=2)
    records = pretrained.run(examples, "explain", num_samples=2, greedy=True)
    assert len(records) == 24
    assert [(r["example_id"], r["sample_index"]) for r in records] == [(ex.id, k) for ex in examples for k in (0, 1)]
    for rec, ex in zip(records, [ex for ex in examples for _ in (0, 1)]):
        assert set(rec) == RECORD_KEYS
        assert rec["mode"] == "explain"
        assert rec["extracted"] == extract_answer(rec["output"], "number")
        assert rec["correct"] == answers_match(rec["extracted"], ex.answer, "number")
        assert rec["prompt_tokens"] == len(pretrained.tokenizer(student_prompt(ex.question, "explain")).input_ids)
        assert 0 < rec["output_tokens"] <= 40
        assert "\n\n" not in rec["output"] and "Question:" not in rec["output"]
    # Greedy: every sample of a question is the same decode.
    assert all(records[i]["output"] == records[i + 1]["output"] for i in range(0, 24, 2))
    # The pretrained tiny model already knows some arithmetic: the grading must find some right answers.
    assert any(r["correct"] for r in records)


def _equations(records: list[dict]) -> list[tuple[str, str, str, str]]:
    return [eq for r in records for eq in re.findall(r"(\d+) ([-+*x]) (\d+) = (-?\d+)", r["output"])]


def test_calculator_writes_exact_results_after_each_equation(pretrained: Examiner) -> None:
    examples = problems(30, max_steps=3)
    plain = pretrained.run(examples, "explain")
    wrong = [eq for eq in _equations(plain) if calculator_result(f"{eq[0]} {eq[1]} {eq[2]} =") != f" {eq[3]}"]
    assert wrong, "the tiny student should get some of its own arithmetic wrong"
    with_calculator = Examiner(
        student_cfg(
            PRETRAINED_TINY, generation={"max_new_tokens": 40, "batch_size": 8, "temperature": 1.0, "calculator": True}
        ),
        "number",
    )
    records = with_calculator.run(examples, "explain")
    equations = _equations(records)
    assert len(equations) >= len(_equations(plain)) // 2
    assert all(calculator_result(f"{a} {op} {b} =") == f" {c}" for a, op, b, c in equations)
    # The student's own words stay its own: outputs with no wrong equation are unchanged.
    changed = {r["example_id"] for r, p in zip(records, plain) if r["output"] != p["output"]}
    assert changed and len(changed) <= len(wrong)
    # Forced tokens are per row: batching does not change them.
    assert with_calculator.run(examples, "explain", batch_size=1) == records


def test_sampling_is_reproducible_and_independent_of_batching(pretrained: Examiner) -> None:
    examples = problems(6, max_steps=2)
    a = pretrained.run(examples, "explain", num_samples=3, greedy=False, seed=7, batch_size=8)
    b = pretrained.run(examples, "explain", num_samples=3, greedy=False, seed=7, batch_size=3)
    c = pretrained.run(examples[2:4], "explain", num_samples=3, greedy=False, seed=7)
    assert a == b
    assert c == a[6:12]  # a question's samples do not depend on the other questions
    d = pretrained.run(examples, "explain", num_samples=3, greedy=False, seed=8)
    assert [r["output"] for r in d] != [r["output"] for r in a]
    # k samples of one question differ from each other (temperature 1.0).
    assert len({r["output"] for r in a}) > len(examples)


def test_top_p_and_stop_strings() -> None:
    examiner = Examiner(
        student_cfg(RANDOM_LLAMA, generation={"max_new_tokens": 30, "top_p": 1e-6, "temperature": 1.0, "stop": ["e"]}),
        "number",
    )
    examples = problems(4)
    # top_p near 0 keeps only the most likely token: sampling equals greedy decoding.
    sampled = examiner.run(examples, "answer", greedy=False, seed=3)
    greedy = examiner.run(examples, "answer", greedy=True)
    assert [r["output"] for r in sampled] == [r["output"] for r in greedy]
    assert all("e" not in r["output"] for r in greedy)
    assert cut_at_stop("abc\n\nQuestion: x", ["Question:", "\n\n"]) == "abc"


def test_adapter_swap_matches_fresh_load(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    from tutorloop.actors.models import adapter_to_bytes, load_student

    cfg = student_cfg(RANDOM_GPT2)
    adapters = []
    for seed in (1, 2):
        base, _ = load_student(cfg)
        torch.manual_seed(seed)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["c_attn"], init_lora_weights=False))
        peft.save_pretrained(tmp_path / f"a{seed}")
        adapters.append(adapter_to_bytes(tmp_path / f"a{seed}"))
    examples = problems(6)
    examiner = Examiner(cfg, "number")
    plain = examiner.run(examples, "explain")
    outputs = []
    for adapter in adapters:
        examiner.set_adapter(adapter)
        outputs.append(examiner.run(examples, "explain"))
        fresh = Examiner(cfg, "number")
        fresh.set_adapter(adapter)
        assert fresh.run(examples, "explain") == outputs[-1]
    assert outputs[0] != plain and outputs[1] != outputs[0]
    examiner.set_adapter(None)
    assert examiner.run(examples, "explain") == plain


def test_bad_mode_is_rejected(pretrained: Examiner) -> None:
    with pytest.raises(ValueError, match="exam mode"):
        pretrained.run(problems(1), "rationalize")


def test_prompted_mode_asks_in_the_students_own_chat_template(pretrained: Examiner) -> None:
    from tutorloop.actors.models import load_tokenizer, student_source
    from tutorloop.loop.core.config import StudentSection

    tokenizer = load_tokenizer(student_source(StudentSection(model="smollm2-135m-instruct")))
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    form = exam_format(tokenizer, [question], "prompted", stop=["\n\n"])
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(form.prompts[0]) == chat + STEP_BY_STEP
    assert chat.endswith("<|im_start|>assistant\n") and f"<|im_start|>user\n{question}<|im_end|>" in chat
    assert form.prompts[0].count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # no doubled specials
    # Chat answers run over paragraphs, and are read leniently.
    assert form.stop == PROMPTED_STOP and "\n\n" not in form.stop and form.extract is extract_chat_answer
    assert exam_format(tokenizer, [question], "explain", ["\n\n"]).stop == ["\n\n"]
    # A model without a chat template (the tiny student) gets Fine-tune-CoT's plain zero-shot-CoT prompt.
    plain = exam_format(pretrained.tokenizer, [question], "prompted", stop=[])
    assert pretrained.tokenizer.decode(plain.prompts[0]) == f"Q: {question}\nA: {STEP_BY_STEP}"
    records = pretrained.run(problems(3), "prompted")
    assert [r["mode"] for r in records] == ["prompted"] * 3


@pytest.mark.slow
def test_smollm2_batched_equals_one_at_a_time() -> None:
    from tutorloop.loop.core.config import DataSection, StudentSection
    from tutorloop.loop.core.datasets import load_examples

    cfg = StudentSection(model="smollm2-135m-instruct", generation={"max_new_tokens": 24, "batch_size": 8})
    examiner = Examiner(cfg, "number")
    examples = load_examples(DataSection(task="multiarith"), "test")[:8]
    assert examiner.run(examples, "explain") == examiner.run(examples, "explain", batch_size=1)
