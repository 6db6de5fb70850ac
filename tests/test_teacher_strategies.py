"""Prompt building for each strategy (exact strings), response parsing, and the program teacher."""

from __future__ import annotations

from pathlib import Path

import pytest

from tutorloop.actors.teacher import program
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.synthetic import generate_problems
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.strategies import (
    PromptBuilder,
    builtin_exemplars,
    clean_rationale,
    load_templates,
)
from tutorloop.loop.tailored_reply import parse_tailored_reply
from tutorloop.loop.teaching_job import JobRun
from tutorloop.loop.teaching_plan import plan_jobs

Q = "Tom has 3 apples. He gets 4 more. Then he gives away 2. How many apples does Tom have now?"
EXAMPLE = Example(
    id="synthetic/train/0",
    dataset="synthetic",
    split="train",
    question=Q,
    answer="5",
    rationale="Add 4: 3 + 4 = 7. Take away 2: 7 - 2 = 5.",
    meta={"steps": [{"op": "+", "a": 3, "b": 4, "result": 7}, {"op": "-", "a": 7, "b": 2, "result": 5}]},
)
OTHER = Example(
    id="synthetic/train/1",
    dataset="synthetic",
    split="train",
    answer="6",
    rationale="Add 5: 1 + 5 = 6.",
    question="Anna has 1 pens. She gets 5 more. How many pens does Anna have now?",
)
COIN = Example(
    id="coin_flip/train/0",
    dataset="coin_flip",
    split="train",
    answer="yes",
    answer_type="yesno",
    question="A coin is heads up. Ann flips the coin. Bo flips the coin. Is the coin still heads up?",
)


def cfg(**extra: object) -> TeacherSection:
    return TeacherSection.model_validate(
        {"teachers": [{"name": "t", "backend": "program", "model": "p"}], "exemplars": 1, **extra}
    )


def first_text(
    strategy: str,
    example: Example = EXAMPLE,
    pool: list[Example] | None = None,
    mistakes: dict | None = None,
    config: TeacherSection | None = None,
) -> str:
    config = config or cfg()
    job = plan_jobs(pool or [example], config, 0, [strategy], mistakes)[0]
    request = JobRun(job, PromptBuilder(load_templates(config.prompts_dir)), config).first_request()
    return request.text()


def test_zero_shot_cot_two_stages() -> None:
    config = cfg()
    job = plan_jobs([EXAMPLE], config, 0, ["zero_shot_cot"])[0]
    run = JobRun(job, PromptBuilder(load_templates()), config)
    first = run.first_request()
    assert first.messages == [{"role": "user", "content": f"Q: {Q}\nA: Let's think step by step."}]
    assert first.stage == "reason" and first.params == {"temperature": 0.0, "max_tokens": 256}
    record = {"request_hash": first.request_hash, "status": "ok", "response": " Add 4: 3 + 4 = 7.", "error": None}
    second = run.advance(first, record)
    assert second.text() == (
        f"Q: {Q}\nA: Let's think step by step. Add 4: 3 + 4 = 7. Therefore, the answer (arabic numerals) is"
    )
    assert second.stage == "answer" and second.params["temperature"] == 0.0
    # the answer as a completion continues the trigger (" 5."), a chat model replies without the space ("5")
    for reply in (" 5.", "5", "5\n"):
        answered = JobRun(job, PromptBuilder(load_templates()), config)
        answered.advance(first, record)
        assert answered.advance(second, dict(record, request_hash=second.request_hash, response=reply)) is None
        assert (answered.result["extracted"], answered.result["reject_reason"]) == ("5", None), reply
    # yes/no tasks get Zero-shot-CoT's yes/no trigger: asked the plain one, a chat teacher (the live Qwen on
    # coin_flip) restated "The coin is still heads up." in all 16 replies, none a yes or no
    job = plan_jobs([COIN], config, 0, ["zero_shot_cot"])[0]
    for reply, extracted in (
        (" Yes.", "yes"),
        ("No", "no"),
        ("yes, the coin is heads up.", "yes"),
        ("The coin is still heads up.", None),
    ):
        run = JobRun(job, PromptBuilder(load_templates()), config)
        first = run.first_request()
        second = run.advance(first, dict(record, request_hash=first.request_hash, response=" Ann flips it."))
        assert second.text().endswith("Let's think step by step. Ann flips it. Therefore, the answer (Yes or No) is")
        assert run.advance(second, dict(record, request_hash=second.request_hash, response=reply)) is None
        assert run.result["extracted"] == extracted, reply
    # other answer types get the plain trigger
    choice = Example(
        id="tracking/train/0",
        dataset="tracking_shuffled_objects",
        split="train",
        answer="A",
        answer_type="choice",
        question="Who has the ball? Options: (A) Ann (B) Bo",
    )
    job = plan_jobs([choice], config, 0, ["zero_shot_cot"])[0]
    run = JobRun(job, PromptBuilder(load_templates()), config)
    first = run.first_request()
    second = run.advance(first, dict(record, request_hash=first.request_hash, response=" Ann has it."))
    assert second.text().endswith("Let's think step by step. Ann has it. Therefore, the answer is")


def test_single_stage_prompts_exact() -> None:
    assert first_text("cote") == (
        'Answer the question. Reason step by step, then end with "Therefore, the answer is" '
        f"followed by the answer.\n\nQ: {Q}\nA:"
    )
    assert first_text("rp") == (
        "The correct answer to the question below is 5. Explain step by step how to reach it, "
        f'then end with "Therefore, the answer is 5."\n\nQ: {Q}\nA:'
    )
    assert first_text("crop") == first_text("cote")
    assert first_text("few_shot_cot", pool=[EXAMPLE, OTHER]) == (
        f"Q: {OTHER.question}\nA: Add 5: 1 + 5 = 6. The answer is 6.\n\nQ: {Q}\nA:"
    )
    assert first_text("teacher_forcing", pool=[EXAMPLE, OTHER]) == (
        f"Q: {OTHER.question}\nThe correct answer is 6.\nA: Add 5: 1 + 5 = 6. Therefore, the answer is 6.\n\n"
        f"Q: {Q}\nThe correct answer is 5.\nA:"
    )


def test_few_shot_falls_back_to_builtin_exemplars() -> None:
    plain = Example(
        id="multiarith/train/3", dataset="multiarith", split="train", question="What is 2 plus 3?", answer="5"
    )
    text = first_text("few_shot_cot", plain, config=cfg(exemplars=2))
    assert text.startswith("Q: There are 15 trees in the grove.")
    assert "So there must have been 21 - 15 = 6. The answer is 6.\n\nQ: If there are 3 cars" in text
    assert text.endswith("The answer is 5.\n\nQ: What is 2 plus 3?\nA:")
    assert len(builtin_exemplars()) == 8
    with pytest.raises(ConfigError, match="no gold rationales"):
        plan_jobs([COIN], cfg(), 0, ["few_shot_cot"])


def test_tailored_prompt_exact() -> None:
    mistakes = {
        EXAMPLE.id: [
            {"output": " Add 4: 3 + 4 = 8. Take away 2: 8 - 2 = 6.\nTherefore, the answer is 6.", "extracted": "6"},
            {"output": "other", "extracted": "1"},
        ]
    }
    assert first_text("tailored", mistakes=mistakes) == (
        "A student answered the question below and got it wrong.\n\n"
        f"Question: {Q}\n"
        "Student's reasoning: Add 4: 3 + 4 = 8. Take away 2: 8 - 2 = 6.\n"
        "Student's answer: 6\n\n"
        "Find the student's first mistake, then solve the question again from the start. "
        "Reply in exactly this format:\n"
        "Mistake: <one sentence saying what was wrong>\n"
        "Correct reasoning: <your own step-by-step solution of the question, without mentioning the student>\n"
        "Therefore, the answer is <the answer>."
    )


def test_diverse_samples_differ_in_hash_and_temperature() -> None:
    config = cfg(diverse_samples=3, diverse_temperature=0.7)
    jobs = plan_jobs([EXAMPLE], config, 2, ["cote"])
    builder = PromptBuilder(load_templates())
    requests = [JobRun(job, builder, config).first_request() for job in jobs]
    assert [r.sample_index for r in requests] == [0, 1, 2]
    assert {r.params["temperature"] for r in requests} == {0.7}
    assert len({r.request_hash for r in requests}) == 3
    assert len({r.text() for r in requests}) == 1
    # metadata is not part of the hash
    request = requests[0]
    assert request.request_hash == type(request)(**{**request.__dict__, "round": 9, "example_id": "x"}).request_hash


def test_prompts_dir_overrides(tmp_path: Path) -> None:
    (tmp_path / "cote.txt").write_text("Solve: {question}\nReasoning:\n")
    config = cfg(prompts_dir=str(tmp_path))
    assert first_text("cote", config=config) == f"Solve: {Q}\nReasoning:"
    assert first_text("rp", config=config).startswith("The correct answer to the question below is 5.")
    (tmp_path / "rp.txt").write_text("{question} {nonsense}")
    with pytest.raises(ConfigError, match="rp.txt: bad placeholder 'nonsense'"):
        first_text("rp", config=config)
    with pytest.raises(ConfigError, match="prompts_dir"):
        load_templates(str(tmp_path / "missing"))


def test_plan_jobs_rules() -> None:
    two = TeacherSection.model_validate(
        {
            "teachers": [
                {"name": "a", "backend": "program", "model": "p", "task_tag": "a"},
                {"name": "b", "backend": "program", "model": "q"},
            ],
            "diverse_samples": 2,
        }
    )
    jobs = plan_jobs([EXAMPLE, OTHER], two, 1, ["cote", "rp"])
    assert len(jobs) == 2 * 2 * 2 * 2
    with pytest.raises(ConfigError, match="needs the student's mistakes"):
        plan_jobs([EXAMPLE], two, 1, ["tailored"])
    jobs = plan_jobs([EXAMPLE, OTHER], two, 1, ["tailored"], {OTHER.id: [{"output": "x", "extracted": "1"}]})
    assert {j.example.id for j in jobs} == {OTHER.id}
    replay = TeacherSection.model_validate({"teachers": [{"name": "r", "backend": "replay"}]})
    with pytest.raises(ConfigError, match="replay backend serves only zero_shot_cot"):
        plan_jobs([EXAMPLE], replay, 0, ["zero_shot_cot", "cote"])


@pytest.mark.parametrize(
    "text, expected",
    [
        (" Add 4: 3 + 4 = 7.\nTherefore, the answer is 7.", "Add 4: 3 + 4 = 7."),
        (
            "They have 74 - 35 = 39 pieces left. Therefore, the answer (arabic numerals) is 39.",
            "They have 74 - 35 = 39 pieces left.",
        ),
        ("So 21 - 15 = 6. The answer is 6.", "So 21 - 15 = 6."),
        (
            "Benito flips it, so it is heads up.\nTherefore, the final answer is yes, the coin is heads up.",
            "Benito flips it, so it is heads up.",
        ),
        (
            "The answer is not obvious at first.\nWe add 2 + 2 = 4.",
            "The answer is not obvious at first.\nWe add 2 + 2 = 4.",
        ),
        ("", ""),
    ],
)
def test_clean_rationale(text: str, expected: str) -> None:
    assert clean_rationale(text) == expected


def test_parse_tailored() -> None:
    reply = parse_tailored_reply(
        "Mistake: Step 1 is wrong.\nCorrect reasoning: Add 4: 3 + 4 = 7.\nTherefore, the answer is 7.", "number"
    )
    assert (reply.mistake, reply.rationale, reply.answer) == ("Step 1 is wrong.", "Add 4: 3 + 4 = 7.", "7")
    assert parse_tailored_reply("Add 4: 3 + 4 = 7.", "number") is None
    assert parse_tailored_reply("Mistake: x\nCorrect reasoning:   ", "number") is None


@pytest.mark.parametrize(
    "student, answer, mistake",
    [
        ("Add 4: 3 + 4 = 8. Take away 2: 8 - 2 = 6.", "6", "Step 1 miscalculates: 3 + 4 is 7, not 8."),
        ("Add 4: 3 + 4 = 7. Take away 2: 7 - 2 = 4.", "4", "Step 2 miscalculates: 7 - 2 is 5, not 4."),
        (
            "Add 4: 3 + 4 = 7. Add 2: 7 + 2 = 9.",
            "9",
            "Step 2 computes 7 + 2, but the problem says to take away 2 here: 7 - 2 = 5.",
        ),
        (
            "Add 4: 3 + 4 = 7. Take away 2: 6 - 2 = 4.",
            "4",
            "Step 2 starts from 6, but the amount at that point is 7: 7 - 2 = 5.",
        ),
        ("Add 4: 3 + 4 = 7.", "7", "The reasoning stops after step 1; it still has to take away 2: 7 - 2 = 5."),
        ("I do not know.", "3", "The reasoning computes no step; the first step is to add 4: 3 + 4 = 7."),
        (
            "Add 4: 3 + 4 = 7. Take away 2: 7 - 2 = 5. Add 1: 5 + 1 = 6.",
            "6",
            "Step 3 (5 + 1) is not in the problem; the answer is 5.",
        ),
        (
            "Add 4: 3 + 4 = 7. Take away 2: 7 - 2 = 5.",
            "7",
            "The steps are right, but the final answer should be 5, not 7.",
        ),
    ],
)
def test_program_teacher_finds_first_wrong_step(student: str, answer: str, mistake: str) -> None:
    prompt = first_text("tailored", mistakes={EXAMPLE.id: [{"output": student, "extracted": answer}]})
    reply = program.respond(prompt)
    assert reply == (
        f"Mistake: {mistake}\nCorrect reasoning: Add 4: 3 + 4 = 7. Take away 2: 7 - 2 = 5.\nTherefore, the answer is 5."
    )
    assert parse_tailored_reply(reply, "number").mistake == mistake


def test_program_teacher_parses_every_generated_question() -> None:
    examples = generate_problems(40, seed=1, min_steps=1, max_steps=4, max_value=12, allow_mul=True)
    assert any(s["op"] == "*" for e in examples for s in e.meta["steps"])
    for example in examples:
        assert program.find_question(example.question) == example.meta["steps"]
        reply = program.respond(first_text("cote", example))
        assert reply == f"{example.rationale}\nTherefore, the answer is {example.answer}."
    assert program.respond("Q: What is the capital of France?\nA:") == program.REFUSAL
