"""The `program` backend: a deterministic teacher for the synthetic arithmetic task (loop/core/synthetic.py).

It reads only the prompt text, exactly as a remote LLM would, so the same function serves the
in-process `ProgramBackend` and the test HTTP server (tests/teacher_server.py): both give the same
text for the same prompt. It recovers the problem's steps from the question (the synthetic
questions come from fixed templates), and answers the prompt kinds of loop/strategies.py:

- a stage-1 zero-shot CoT prompt (ends with "Let's think step by step."): the step-by-step
  rationale, in the gold rationale's form ("Add 4: 3 + 4 = 7. Take away 2: 7 - 2 = 5.");
- a stage-2 prompt (ends with an answer trigger "... the answer ... is"): " <answer>.";
- a tailored prompt (holds "Student's reasoning:"): the student's first wrong step, a one-line
  statement of what was wrong, and the corrected reasoning, in the format loop/tailored_reply.py reads;
- any other prompt (few-shot CoT, COTE, RP, teacher forcing): the rationale followed by
  "Therefore, the answer is <answer>." The question is the LAST synthetic question in the prompt, so
  in-context examples before it are skipped.
A prompt without a synthetic question gets a polite refusal without a number (graded "no_answer").
"""

from __future__ import annotations

import re
import time
from typing import Any

from tutorloop.actors.teacher.calls import TeacherRequest, call_record, estimate_tokens

# The question templates and step words are synthetic.py's; building the parser from them keeps
# the two in step if a phrase changes.
from tutorloop.loop.core.synthetic import OP_PHRASES, OP_WORDS, apply_op, parse_rationale_steps, solve_steps
from tutorloop.loop.core.teacher_config import TeacherEndpoint

# Labels of the tailored prompt (loop/teacher_prompts/tailored.txt) and of its answer format.
STUDENT_REASONING = "Student's reasoning:"
STUDENT_ANSWER = "Student's answer:"
MISTAKE = "Mistake:"
CORRECT_REASONING = "Correct reasoning:"
FINAL = "Therefore, the answer is"
REFUSAL = "I can only solve the synthetic arithmetic problems of this course."

_OP_SENTENCE = {op: re.escape(phrase).replace(re.escape("{b}"), r"(\d+)") for op, phrase in OP_PHRASES.items()}
_STEP_SENTENCE = re.compile(
    r"(?:He|She|Then he|Then she) (?:"
    + "|".join(f"(?P<op{i}>{p})" for i, p in enumerate(_OP_SENTENCE.values()))
    + r")\."
)
_QUESTION = re.compile(
    r"(?P<name>[A-Z][a-z]+) has (?P<start>\d+) (?P<things>[a-z]+)\.(?P<ops>(?: (?:He|She|Then he|Then she) [^.?]+\.)*)"
    r" How many (?P=things) does (?P=name) have now\?"
)
_ANSWER_TRIGGER_END = re.compile(r"the\s+answer[^\n]*\bis\s*$", re.IGNORECASE)


def _steps_of(match: re.Match) -> list[dict[str, Any]] | None:
    value = int(match.group("start"))
    steps = []
    ops = list(_OP_SENTENCE)
    for sentence in re.findall(r"[^.]+\.", match.group("ops")):
        found = _STEP_SENTENCE.fullmatch(sentence.strip())
        if not found:
            return None
        index = next(i for i in range(len(ops)) if found.group(f"op{i}"))
        op, b = ops[index], int(re.search(r"\d+", found.group(f"op{index}")).group())
        result = apply_op(op, value, b)
        steps.append({"op": op, "a": value, "b": b, "result": result})
        value = result
    return steps or None


def find_question(prompt: str) -> list[dict[str, Any]] | None:
    """Steps of the last synthetic question in a prompt (in-context examples come before it)."""
    for match in reversed(list(_QUESTION.finditer(prompt))):
        steps = _steps_of(match)
        if steps:
            return steps
    return None


def first_mistake(steps: list[dict[str, Any]], student_reasoning: str, student_answer: str | None) -> str:
    """One line saying what is wrong in a student's rationale, judged at its first wrong step."""
    correct = [(s["a"], s["op"], s["b"], s["result"]) for s in steps]
    student = parse_rationale_steps(student_reasoning)
    for i, (a, op, b, result) in enumerate(correct):
        verb = f"{OP_WORDS[op].lower()} {b}"
        if i >= len(student):
            if i == 0:
                return f"The reasoning computes no step; the first step is to {verb}: {a} {op} {b} = {result}."
            return f"The reasoning stops after step {i}; it still has to {verb}: {a} {op} {b} = {result}."
        sa, sop, sb, sc = student[i]
        if (sa, sop, sb, sc) == (a, op, b, result):
            continue
        if (sop, sb) != (op, b):
            return (
                f"Step {i + 1} computes {sa} {sop} {sb}, but the problem says to {verb} here: {a} {op} {b} = {result}."
            )
        if sa != a:
            return f"Step {i + 1} starts from {sa}, but the amount at that point is {a}: {a} {op} {b} = {result}."
        return f"Step {i + 1} miscalculates: {a} {op} {b} is {result}, not {sc}."
    final = correct[-1][3]
    if len(student) > len(correct):
        extra = student[len(correct)]
        return (
            f"Step {len(correct) + 1} ({extra[0]} {extra[1]} {extra[2]}) is not in the problem; the answer is {final}."
        )
    if student_answer is not None and student_answer.strip() != str(final):
        return f"The steps are right, but the final answer should be {final}, not {student_answer.strip()}."
    return "No mistake: the reasoning and the answer are right."


def _section(prompt: str, label: str, until: str | None = None) -> str:
    """The text after `label`, up to `until` when given."""
    head = prompt.split(label, 1)[1]
    if until and until in head:
        head = head.split(until, 1)[0]
    return head.strip()


def worked_steps(steps: list[dict[str, Any]]) -> str:
    """The same correct steps worded as a running total: a second, distinct correct rationale."""
    value, parts = int(steps[0]["a"]), [f"We start with {steps[0]['a']}."]
    for step in steps:
        result = apply_op(step["op"], value, int(step["b"]))
        parts.append(f"Then {value} {step['op']} {step['b']} = {result}.")
        value = result
    return " ".join(parts)


def tailored_response(
    steps: list[dict[str, Any]], student_reasoning: str, student_answer: str | None, sample_index: int = 0
) -> str:
    """The tailored answer: what was wrong, then the correct reasoning and answer. A second sample of
    the same request words the reasoning differently, as a sampled LLM reply would (a contrast positive)."""
    mistake = first_mistake(steps, student_reasoning, student_answer)
    rationale = " ".join(solve_steps(steps)) if sample_index == 0 else worked_steps(steps)
    return f"{MISTAKE} {mistake}\n{CORRECT_REASONING} {rationale}\n{FINAL} {steps[-1]['result']}."


def respond(prompt: str, sample_index: int = 0) -> str:
    """The program teacher's reply to a prompt (the text of the user message or the completion prompt);
    `sample_index` > 0 words a tailored correction differently."""
    tailored = STUDENT_REASONING in prompt
    # In a tailored prompt the question comes before the student's text, which may echo other numbers.
    steps = find_question(prompt.split(STUDENT_REASONING, 1)[0] if tailored else prompt)
    if not steps:
        return REFUSAL
    if tailored:
        reasoning = _section(prompt, STUDENT_REASONING, STUDENT_ANSWER)
        stated = _section(prompt, STUDENT_ANSWER) if STUDENT_ANSWER in prompt else ""
        return tailored_response(steps, reasoning, stated.splitlines()[0] if stated else None, sample_index)
    answer = steps[-1]["result"]
    text = prompt.rstrip()
    if _ANSWER_TRIGGER_END.search(text.splitlines()[-1]):
        return f" {answer}."
    rationale = " ".join(solve_steps(steps))
    if text.endswith("Let's think step by step."):
        return f" {rationale}"
    return f"{rationale}\n{FINAL} {answer}."


class ProgramBackend:
    """The program teacher as a backend, in-process; priced like a remote teacher for its token counts."""

    def __init__(self, endpoint: TeacherEndpoint) -> None:
        self.endpoint = endpoint

    async def complete(self, request: TeacherRequest) -> dict[str, Any]:
        started = time.monotonic()
        text = respond(request.text(), request.sample_index)
        tokens_in, tokens_out = request.tokens_in_estimate(), estimate_tokens(text)
        return call_record(
            request,
            status="ok",
            response=text,
            finish_reason="stop",
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=self.endpoint.price.cost_usd(tokens_in, tokens_out),
            latency_s=time.monotonic() - started,
        )
