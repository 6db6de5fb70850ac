"""The teacher's reply to a tailored prompt (loop/teacher_prompts/tailored.txt): parsed, then graded against gold.

The prompt asks for
    Mistake: <what the student did wrong>
    Correct reasoning: <the corrected step-by-step reasoning>
    Therefore, the answer is <answer>.
A small local teacher (Qwen2.5-Coder-1.5B-Instruct) decorates these labels: markdown bold or
headings (`**Mistake:**`, `### Correct Reasoning`), "Corrected reasoning", "The student's mistake",
a numbered list under the label. Those parse too; a reply without both labels does not (it may be
a plain re-solution, but then nothing says what the student did wrong). Whatever follows the answer
sentence (a closing remark, a second answer) is dropped. The teacher's own verdict is never
trusted: the corrected answer is graded against gold, like every other rationale.
`tailored_example` turns one taught mistake of a round into the note its summary prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from textwrap import shorten
from typing import Any

from tutorloop.loop.core.answers import TRIGGER_QUALIFIER, answers_match, extract_answer
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.strategies import clean_rationale

# A label at the start of a line, with optional markdown around it ("**", "#", "-", "1.").
_LEAD = r"(?:^|\n)[ \t]*(?:[#>*_\-]+[ \t]*|\d+\.[ \t]+)?"
_TAIL = r"[ \t*_]*:?[ \t*_]*:?[ \t]*"
_MISTAKE = re.compile(
    _LEAD + r"(?:the[ \t]+)?(?:student'?s[ \t]+)?(?:first[ \t]+)?(?:mistake|error)s?" + _TAIL, re.IGNORECASE
)
_REASONING_WORDS = r"correct(?:ed)?[ \t]+(?:reasoning|solution|steps)"
# The reasoning label starts a line, or follows the mistake on its line with a colon ("... x. Correct reasoning: y").
_REASONING = re.compile(
    rf"{_LEAD}(?:the[ \t]+)?{_REASONING_WORDS}{_TAIL}|[ \t*_]+{_REASONING_WORDS}[ \t*_]*:[ \t*_]*", re.IGNORECASE
)
# The closing answer sentence (the grader's trigger) and the end of its line.
_ANSWER_LINE = re.compile(rf"the\s+(?:final\s+)?answer{TRIGGER_QUALIFIER}\s+is\b[^\n]*", re.IGNORECASE)
_MARKUP = re.compile(r"[*_`]+|^#+\s*", re.MULTILINE)


@dataclass(frozen=True)
class TailoredReply:
    """A parsed tailored reply: what was wrong, and the corrected reasoning with its stated answer."""

    mistake: str  # one line, markup removed
    reasoning: str  # the corrected reasoning up to and including its answer sentence
    answer: str | None  # the answer it states, normalized (None: it states none)

    @property
    def rationale(self) -> str:
        """The corrected reasoning without its answer sentence (the student target adds its own)."""
        return clean_rationale(self.reasoning)


def _plain(text: str) -> str:
    return _MARKUP.sub("", text).strip()


def parse_tailored_reply(text: str | None, answer_type: str) -> TailoredReply | None:
    """The reply's mistake statement and corrected reasoning, or None when either label is missing."""
    text = text or ""
    mistake = _MISTAKE.search(text)
    reasoning = _REASONING.search(text, mistake.end()) if mistake else None
    if mistake is None or reasoning is None:
        return None
    body = text[reasoning.end() :]
    closing = list(_ANSWER_LINE.finditer(body))
    if closing:
        body = body[: closing[0].end()]  # the first answer sentence ends the reasoning
    body = "\n".join(line.rstrip() for line in _plain(body).splitlines() if line.strip())
    statement = " ".join(_plain(text[mistake.end() : reasoning.start()]).split())
    if not body or not statement:
        return None
    return TailoredReply(statement, body, _stated_answer(body, closing, answer_type))


def _stated_answer(body: str, closing: list[re.Match[str]], answer_type: str) -> str | None:
    """The answer of the reasoning; "the answer is 49 - 13 = 36" states the result after the last '='."""
    line = closing[0].group(0) if closing else ""
    if answer_type == "number" and "=" in line:
        return extract_answer(line.rsplit("=", 1)[1], answer_type)
    return extract_answer(body, answer_type)


def grade_tailored_reply(reply: TailoredReply, gold: str, answer_type: str) -> str | None:
    """The rejection reason of a parsed reply (None = accepted): its own answer must equal gold."""
    if not reply.rationale:
        return "empty"
    if reply.answer is None:
        return "no_answer"
    return None if answers_match(reply.answer, gold, answer_type) else "wrong_answer"


def _clip(text: str | None, width: int) -> str:
    return shorten(" ".join((text or "").split()), width, placeholder=" ...") or "(empty)"


def tailored_example(
    rationales: list[dict[str, Any]],
    mistakes: dict[str, list[dict[str, Any]]],
    examples: dict[str, Example],
    width: int = 220,
) -> str | None:
    """A tailored round's summary note: one mistake, what the teacher said was wrong, and its correction.

    From the round's rationale records (`feedback` holds the mistake statement, `rationale` the
    correction) and the exam attempts of `mistakes` (the student's wrong `output`); an accepted
    correction is shown first. None when no tailored reply parsed."""
    tailored = [r for r in rationales if r.get("strategy") == "tailored" and r.get("feedback")]
    if not tailored:
        return None
    chosen = next((r for r in tailored if r["accepted"]), tailored[0])
    example = examples[chosen["example_id"]]
    wrong = next((a for a in mistakes.get(example.id, []) if not a["correct"]), {})
    verdict = "accepted" if chosen["accepted"] else f"rejected: {chosen['reject_reason']}"
    return (
        f"a mistake taught, {example.id} (gold {example.answer}):\n"
        f"    student: {_clip(wrong.get('output'), width)} (answer {wrong.get('extracted')})\n"
        f"    teacher, what was wrong: {_clip(chosen['feedback'], width)}\n"
        f"    teacher's correction: {_clip(chosen['rationale'], width)} (answer {chosen['extracted']}, {verdict})"
    )
