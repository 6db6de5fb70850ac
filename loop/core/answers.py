"""Answer extraction from free text and grading against gold answers.

One extractor serves every text that carries an answer: a teacher's stage-2 completion
(`... Therefore, the answer is 18.`), a GSM8K solution (`#### 72`), a Fine-tune-CoT student
output (`... --> 18 END`) and the student's own exam output.

Rule (as in the Fine-tune-CoT evaluator): when the text holds an explicit answer trigger, the answer
is the FIRST candidate after the LAST trigger; without a trigger it is the LAST candidate in the text
(the conclusion of a rationale comes at its end). A trigger followed by no candidate gives None: the
writer announced an answer and did not give one.

Free-form chat output (the prompted baseline) is read by the lenient `extract_chat_answer`.

Answer types: number | yesno | choice | text. Extracted answers come back normalized, so that
`answers_match` only has to compare like with like.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

ANSWER_TYPES = ("number", "yesno", "choice", "text")

# The qualifier of zero-shot CoT's stage-2 trigger: "(arabic numerals)" for numbers, "(Yes or No)" for yes/no.
TRIGGER_QUALIFIER = r"(?:\s*\((?:arabic numerals|yes or no)\))?"
# Explicit triggers, case-insensitive. Covers zero-shot CoT stage 2 ("Therefore, the answer is", with
# either qualifier), few-shot CoT ("The answer is"), GSM8K ("####") and the Fine-tune-CoT token format ("-->").
_TRIGGER = re.compile(rf"(?:the\s+(?:final\s+)?answer{TRIGGER_QUALIFIER}\s+is\b:?|####|-->)", re.IGNORECASE)

# Chat models answer in their own words: "Answer: 5", "the correct answer is (B)", "**Final answer:** 5".
_CHAT_TRIGGER = re.compile(_TRIGGER.pattern + r"|\banswer\b\W{0,4}:|\banswer\s+is\b", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{", re.IGNORECASE)  # LaTeX answers: "$\boxed{18}$"

# A number: optional sign (not a hyphen inside a word or a range), optional "$", digits with
# optional thousands commas and an optional decimal part.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\$\s?)?(?<![\w.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
# What normalize_number accepts: sign, optional "$", correctly grouped thousands, decimals, final period.
_WHOLE_NUMBER = re.compile(r"([-+]?)\$?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)\.?")
# A hyphenated word ("no-brainer", "yes-man") is not an answer.
_YESNO = re.compile(r"(?<![\w-])(yes|no)(?![\w-])", re.IGNORECASE)
_CHOICE_PAREN = re.compile(r"\(([A-H])\)")
_CHOICE_BARE = re.compile(r"(?<![\w'’])([A-H])(?![\w'’])")
_QUOTED = re.compile(r"[\"“”']([^\"“”'\n]+)[\"“”']")
# Yes/no tasks whose reasoning tracks a state that decides the answer: the last state it writes must agree.
# A negated state ("the coin is not heads up") is the other one.
_FINAL_STATES = {
    "coin_flip": (
        re.compile(r"\b(not\s+|no\s+longer\s+)?(heads|tails)\b", re.IGNORECASE),
        {"heads": "yes", "tails": "no"},
    )
}


def normalize_number(text: str) -> str | None:
    """Canonical text of a number: '1,800' -> '1800', '$18.00' -> '18', '-0.50' -> '-0.5'; None if not a number."""
    match = _WHOLE_NUMBER.fullmatch(text.strip())
    if not match:
        return None
    value = Decimal(match.group(1) + match.group(2).replace(",", ""))
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _normalize_text(text: str) -> str:
    """Case-, quote- and surrounding-punctuation-insensitive form of a short text answer."""
    text = " ".join(text.split()).lower()
    return text.strip(" \"'“”‘’.,;:!?`")


def normalize_gold(answer: str, answer_type: str) -> str:
    """Normalized form of a gold answer as stored in `Example.answer`; ValueError if it does not fit the type."""
    _check_type(answer_type)
    text = str(answer).strip()
    if answer_type == "number":
        value = normalize_number(text)
        if value is None:
            raise ValueError(f"gold answer {answer!r} is not a number")
        return value
    if answer_type == "yesno":
        value = text.lower().strip(" .\"'")
        if value not in ("yes", "no"):
            raise ValueError(f"gold answer {answer!r} is not yes/no")
        return value
    if answer_type == "choice":
        match = re.fullmatch(r"\(?([A-Ha-h])\)?\.?", text)
        if not match:
            raise ValueError(f"gold answer {answer!r} is not a choice letter")
        return match.group(1).upper()
    value = _normalize_text(text)
    if not value:
        raise ValueError("gold answer is empty")
    return value


def _check_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer type {answer_type!r}; expected one of {', '.join(ANSWER_TYPES)}")


def _candidates(text: str, answer_type: str) -> list[str]:
    """All normalized answers of the given type found in `text`, in order."""
    if answer_type == "number":
        found = (normalize_number(m.group(0)) for m in _NUMBER.finditer(text))
        return [n for n in found if n is not None]
    if answer_type == "yesno":
        return [m.group(1).lower() for m in _YESNO.finditer(text)]
    if answer_type == "choice":
        # "(C)" is unambiguous; a bare capital letter only counts when no parenthesized one exists.
        letters = _CHOICE_PAREN.findall(text) or _CHOICE_BARE.findall(text)
        return [letter.upper() for letter in letters]
    # text: one candidate per non-empty line; a quoted string on the line is the answer itself.
    lines = []
    for line in text.splitlines():
        line = re.sub(r"\s*\bEND\b\s*$", "", line)  # Fine-tune-CoT token format ends with " END"
        quoted = _QUOTED.search(line)
        value = _normalize_text(quoted.group(1) if quoted else line)
        if value:
            lines.append(value)
    return lines


def _after_last(trigger: re.Pattern, text: str, answer_type: str) -> list[str] | None:
    """Candidates after the last match of `trigger` (None when it does not occur)."""
    matches = list(trigger.finditer(text))
    return _candidates(text[matches[-1].end() :], answer_type) if matches else None


def extract_answer(text: str, answer_type: str) -> str | None:
    """The normalized answer stated in `text`, or None when there is none (see the module rule)."""
    _check_type(answer_type)
    if not text:
        return None
    found = _after_last(_TRIGGER, text, answer_type)
    if found is not None:
        return found[0] if found else None
    found = _candidates(text, answer_type)
    return found[-1] if found else None


def extract_chat_answer(text: str, answer_type: str) -> str | None:
    """Lenient reading of free-form chat output (the prompted baseline), which states its answer in its
    own words: the last `\\boxed{...}`, else the first candidate after the last answer phrase (the
    module's triggers, `Answer:`, `answer is`), else the last candidate of the text. Unlike
    `extract_answer`, an answer phrase followed by nothing usable falls back to the last candidate."""
    _check_type(answer_type)
    if not text:
        return None
    for trigger in (_BOXED, _CHAT_TRIGGER):
        found = _after_last(trigger, text, answer_type)
        if found:
            return found[0]
    found = _candidates(text, answer_type)
    return found[-1] if found else None


def answers_match(pred: str | None, gold: str, answer_type: str) -> bool:
    """Whether an extracted answer equals the gold one: numbers by value ('18' == '18.00', '1,800' == '1800')."""
    _check_type(answer_type)
    if pred is None:
        return False
    if answer_type == "number":
        a, b = normalize_number(pred), normalize_number(gold)
        if a is None or b is None:
            return False
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-6)
    try:
        a, b = normalize_gold(pred, answer_type), normalize_gold(gold, answer_type)
    except ValueError:
        return False
    if answer_type == "text":
        # Spacing inside a short text answer carries no meaning ("n a o a" spells "naoa").
        return a.replace(" ", "") == b.replace(" ", "")
    return a == b


def reasoning_reaches_answer(reasoning: str, gold: str, answer_type: str, dataset: str) -> bool:
    """Whether reasoning (without its closing answer sentence) arrives at the gold answer, not only states it
    after: a number task writes the answer's value somewhere in it; coin_flip's last coin state ("heads",
    "tails", "not heads") is the answer's ("heads" = yes). Other tasks and a coin reasoning naming no state pass."""
    if answer_type == "number":
        return any(answers_match(found, gold, "number") for found in _candidates(reasoning, "number"))
    if dataset in _FINAL_STATES:
        pattern, answer_of = _FINAL_STATES[dataset]
        states = pattern.findall(reasoning)
        if not states:
            return True
        negated, state = states[-1]
        answer = answer_of[state.lower()]
        return (answer != gold) if negated else (answer == gold)
    return True
