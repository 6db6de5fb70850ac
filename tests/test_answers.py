"""Answer extraction and grading, on hand-made strings and on the shipped real data."""

from __future__ import annotations

import json

import pytest

from tutorloop.loop.core.answers import (
    answers_match,
    extract_answer,
    extract_chat_answer,
    normalize_gold,
    normalize_number,
)
from tutorloop.loop.core.config import DataSection
from tutorloop.loop.core.datasets import RECORDED_TEACHER_DIR, get_task, load_examples, resolve_data_dir
from tutorloop.loop.core.student_prompt import student_target

RECORDED_TASKS = [
    "addsub",
    "coin_flip",
    "date_understanding",
    "last_letter_concatenation",
    "multiarith",
    "strategy_qa",
    "tracking_shuffled_objects",
]

# Teacher train accuracy from data/README.md (Fine-tune-CoT's own re-scoring).
README_TRAIN_CORRECT = {
    "addsub": (209, 276),
    "coin_flip": (314, 350),
    "date_understanding": (170, 258),
    "last_letter_concatenation": (201, 350),
    "multiarith": (323, 420),
    "strategy_qa": (856, 1603),
    "tracking_shuffled_objects": (284, 525),
}


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict]:
    """The raw `data` mapping of each recorded-teacher file, read once."""
    root = resolve_data_dir("data") / RECORDED_TEACHER_DIR
    return {task: json.loads((root / f"{task}.json").read_text())["data"] for task in RECORDED_TASKS}


@pytest.fixture(scope="module")
def train_sets() -> dict[str, list]:
    return {task: load_examples(DataSection(task=task), "train") for task in RECORDED_TASKS}


def _teacher_answer(completion: dict, answer_type: str) -> str | None:
    # The stage-2 prompt ends with the trigger; the completion is what follows it.
    return extract_answer(completion["prompt"] + completion["completion"], answer_type)


# --- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("18", "18"),
        ("18.0", "18"),
        ("18.00", "18"),
        ("18.000", "18"),
        ("1,800", "1800"),
        ("$1,800.00", "1800"),
        ("-3", "-3"),
        ("-0.50", "-0.5"),
        ("0.25", "0.25"),
        ("14696.0", "14696"),
        ("007", "7"),
        ("abc", None),
        ("", None),
        ("1,8", None),
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "pred,gold,same",
    [
        ("18", "18.0", True),
        ("18.00", "18", True),
        ("18.000", "18.0", True),
        ("1,800", "1800", True),
        ("1800", "1,800.00", True),
        ("18", "180", False),
        ("1.8", "18", False),
        ("-5", "5", False),
        (None, "18", False),
        ("eighteen", "18", False),
    ],
)
def test_number_grading(pred: str | None, gold: str, same: bool) -> None:
    assert answers_match(pred, gold, "number") is same


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She has 74 - 35 = 39 pieces left.", "39"),  # the last number; "- 35" is not a negative number
        ("It is -5 degrees now.", "-5"),
        ("The total is $1,250.50 in all.", "1250.5"),
        ("He paid $ 18.00.", "18"),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,080\nThat is 3 more than 1077.", "1080"),  # the trigger wins over the last number
        ("First 3 + 4 = 7, then 7 * 2 = 14. Therefore, the answer is 14.", "14"),
        ("Therefore, the answer (arabic numerals) is 9. Check: 4 + 5 = 9, or 3 * 3.", "9"),
        ("Therefore, the answer is 12 apples, not 13.", "12"),  # first number after the trigger
        ("3 + 4 = 7 --> 7 END", "7"),  # Fine-tune-CoT token format
        ("Pages 5-6 are missing, so 6 pages.", "6"),
        ("The answer is 3. No wait, the answer is 4.", "4"),  # the last trigger counts
        ("Therefore, the answer is unclear, maybe 5.", "5"),
        ("Therefore, the answer is", None),  # announced, not given
        ("no numbers here", None),
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize(
    "text,answer_type,expected",
    [
        ("Yes, the coin is still heads up.", "yesno", "yes"),
        ("The coin was flipped twice, so no.", "yesno", "no"),
        ('Therefore, the answer is "No".', "yesno", "no"),
        ("It is a no-brainer.", "yesno", None),  # hyphen-joined words are not answers
        ("Nothing to say.", "yesno", None),
        ("The answer is (C).", "choice", "C"),
        ("Answer choices: (A) 1, (B) 2. Therefore, the answer is B.", "choice", "B"),
        ("(A) is wrong; I pick (D).", "choice", "D"),
        ('Therefore, the answer is "yajo".', "text", "yajo"),
        ("Therefore, the answer is yajo.", "text", "yajo"),
        ("so it spells naoa\n", "text", "so it spells naoa"),
    ],
)
def test_extract_other_types(text: str, answer_type: str, expected: str | None) -> None:
    assert extract_answer(text, answer_type) == expected


def test_text_and_choice_grading() -> None:
    assert answers_match("n a o a", "naoa", "text")
    assert answers_match("YajO", "yajo", "text")
    assert not answers_match("r-a-y-n", "rayn", "text")
    assert answers_match("(F)", "F", "choice") and not answers_match("E", "F", "choice")
    assert answers_match("yes", "Yes", "yesno") and not answers_match("no", "Yes", "yesno")
    with pytest.raises(ValueError, match="unknown answer type"):
        extract_answer("1", "float")


# --- real data ---------------------------------------------------------------------------------

# Looked at by hand: (task, data index, what the teacher's stage-2 completion says).
HAND_CHECKED = [
    ("addsub", "1", "26"),  # ' 26 bales.'
    ("coin_flip", "0", "yes"),  # ' "Yes, the coin is heads up."'
    ("date_understanding", "2", "A"),  # ' (A) 04/29/2021.'  (gold D: teacher wrong)
    ("date_understanding", "3", None),  # ' 04/20/2021.'  no letter at all
    ("last_letter_concatenation", "3", "aanck"),  # ' "aanck".'  (gold aank)
    ("last_letter_concatenation", "6", "r-a-y-n"),  # ' "r-a-y-n".'  (gold rayn)
    ("multiarith", "5", "38"),  # '\n\nx + y = 38 \n29 + y = 38 \ny = 9 ...' first after trigger
    ("strategy_qa", "5", "no"),  # ' most likely no.'
    ("strategy_qa", "9", None),  # ' inconclusive.'
    ("tracking_shuffled_objects", "27", "A"),  # ' A: green ball.'
]


@pytest.mark.parametrize("task,index,expected", HAND_CHECKED)
def test_hand_checked_teacher_answers(recorded: dict, task: str, index: str, expected: str | None) -> None:
    completion = recorded[task][index][0]
    assert _teacher_answer(completion, get_task(task).answer_type) == expected


@pytest.mark.parametrize("task", RECORDED_TASKS)
def test_regrading_reproduces_teacher_train_accuracy(recorded: dict, train_sets: dict, task: str) -> None:
    # Fine-tune-CoT scored the first completion of each question: with several (diverse) completions
    # counting any of them would over-count (e.g. multiarith 325, date 173).
    answer_type = get_task(task).answer_type
    examples = train_sets[task]
    correct = sum(
        answers_match(_teacher_answer(recorded[task][ex.meta["index"]][0], answer_type), ex.answer, answer_type)
        for ex in examples
    )
    expected, total = README_TRAIN_CORRECT[task]
    assert len(examples) == total
    assert abs(correct - expected) <= 2, f"{task}: {correct}/{total}, README says {expected}/{total}"


def _sample(train_sets: dict, per_task: int) -> list:
    """The first `per_task` train examples of every recorded task: 70 real questions."""
    return [ex for task in RECORDED_TASKS for ex in train_sets[task][:per_task]]


def test_real_golds_round_trip_through_student_format(train_sets: dict) -> None:
    # The student's target text (rationale + trigger + answer) must grade as right for every gold.
    sample = _sample(train_sets, 10)
    assert len(sample) >= 60
    for ex in sample:
        target = student_target("explain", ex.answer, rationale="We count 3 + 4 = 7 and check (B) too.")
        assert extract_answer(target, ex.answer_type) == ex.answer, ex.id
        assert answers_match(ex.answer, ex.answer, ex.answer_type)
        assert normalize_gold(ex.answer, ex.answer_type) == ex.answer  # golds are stored normalized


def test_trigger_beats_numbers_in_real_teacher_rationales(recorded: dict, train_sets: dict) -> None:
    # Real rationales are full of numbers, letters and yes/no words; an appended trigger still decides.
    for ex in _sample(train_sets, 10):
        rationale = recorded[ex.dataset][ex.meta["index"]][0]["reasoning_completion"]
        text = f"{rationale}\nTherefore, the answer is {ex.answer}."
        assert answers_match(extract_answer(text, ex.answer_type), ex.answer, ex.answer_type), ex.id


def test_teacher_answers_have_the_right_shape(recorded: dict, train_sets: dict) -> None:
    for ex in _sample(train_sets, 10):
        answer = _teacher_answer(recorded[ex.dataset][ex.meta["index"]][0], ex.answer_type)
        if answer is None:
            continue
        if ex.answer_type == "number":
            assert normalize_number(answer) == answer
        elif ex.answer_type == "yesno":
            assert answer in ("yes", "no")
        elif ex.answer_type == "choice":
            assert answer in "ABCDEF" and len(answer) == 1
        else:
            assert answer and answer == answer.strip().lower()


def test_gsm8k_solutions_grade_against_their_gold() -> None:
    # The full solution text (with calculator annotations and intermediate numbers) extracts to the
    # number after '####'; stripping the '####' line leaves the last computed number instead.
    examples = load_examples(DataSection(task="gsm8k", test_size=40), "test")
    raw = [json.loads(line) for line in (resolve_data_dir("data") / "gsm8k" / "test.jsonl").read_text().splitlines()]
    for ex in examples:
        solution = raw[int(ex.id.rsplit("/", 1)[1])]["answer"]
        assert extract_answer(solution, "number") == ex.answer
    assert sum(answers_match(extract_answer(ex.rationale, "number"), ex.answer, "number") for ex in examples) >= 30


@pytest.mark.parametrize(
    "text, answer_type, expected",
    [
        # SmolLM2-135M-Instruct's own answers to MultiArith in the prompted baseline
        (
            " If 4 cupcakes and 29 cookies ...\nSo Wendy sold 112 - 4 = 108 pastries.\n#### 108\nThe answer is: 108",
            "number",
            "108",
        ),
        (
            " Now, we add these two totals together: 17 + 36 = 44 points.\n\n"
            "Therefore, Carol had 44 points at the end of the game.",
            "number",
            "44",
        ),
        ("So, the answer is 10.\n\nThe answer is 10.", "number", "10"),
        ("The total is $1,800.00 in all.\n\n**Final Answer:** $1,800", "number", "1800"),
        ("We get 3 + 4 = 7, so the final answer is $\\boxed{7}$. Check: 7 - 4 = 3.", "number", "7"),
        ("Answer: 12 (after 3 steps)", "number", "12"),
        ("The correct answer is (B) 05/01/2021.", "choice", "B"),
        ("Alice ends with the pink ball.\n\nAnswer: (C)", "choice", "C"),
        ("Yes. The coin was flipped twice, so it is still heads up.\nThe answer is yes.", "yesno", "yes"),
        ("Let me see: Ka flips it, so no, the coin is not heads up.", "yesno", "no"),
        ('The last letters are "n" and "a", so the answer is "na".', "text", "na"),
        # an answer phrase with nothing usable after it falls back to the text's last candidate
        ("3 + 4 = 7 apples. The answer is the number of apples.", "number", "7"),
        ("I cannot tell.", "number", None),
    ],
)
def test_chat_answers_are_read_leniently(text: str, answer_type: str, expected: str | None) -> None:
    assert extract_chat_answer(text, answer_type) == expected


def test_chat_reading_differs_from_the_strict_rule_only_where_meant() -> None:
    # The strict rule: a trigger followed by no answer is no answer; the lenient one looks back.
    text = "3 + 4 = 7 apples. The answer is the number of apples."
    assert extract_answer(text, "number") is None and extract_chat_answer(text, "number") == "7"
    # Training-format outputs read the same either way.
    assert extract_chat_answer(student_target("explain", "7", "3 + 4 = 7."), "number") == "7"
