"""Teacher prompts for each explanation strategy, built from the templates in loop/teacher_prompts/*.txt.

Strategies, and the papers behind them:
- zero_shot_cot (Fine-tune-CoT, Ho et al. 2023, "Large language models are reasoning teachers"; two
  stages): `zero_shot_cot_reason` ("Q: {question}\\nA: Let's think step by step.") asks for the
  rationale; `zero_shot_cot_answer` appends the rationale and the answer trigger, "Therefore, the
  answer is" ("Therefore, the answer (arabic numerals) is" for numbers, "Therefore, the answer (Yes or
  No) is" for yes/no, as Zero-shot-CoT asks).
- few_shot_cot (Wei et al. 2022): in-context examples (`few_shot_cot_exemplar` each), then the question.
- cote, rp, crop (Li et al. 2022, "Explanations from large language models make small reasoners
  better"): cote, the teacher reasons step by step and states its answer, kept only when it matches
  gold; rp, rationalization: the teacher is told the gold answer and explains it; crop, cote and rp
  where cote is wrong (a driver-side composition of the two prompts).
- teacher_forcing (TinyLLM, Tian et al. 2024): in-context examples with their answers, then the
  question with its gold answer.
- tailored (Wang et al. 2023, "Democratizing reasoning ability"): the question, the student's wrong
  rationale and answer; the teacher replies with "Mistake: ..." and "Correct reasoning: ..."
  (parsed by loop/tailored_reply.py). With `teacher.tailored_show_answer` the `tailored_show_answer`
  template also tells it the gold answer, as rp does.

A file of the same name in `teacher.prompts_dir` replaces a built-in template. Templates are
`str.format` strings; the fields are {question}, {answer} (gold), {answer_trigger}, {exemplars},
{reason_prompt}, {rationale}, {student_rationale}, {student_answer}. One trailing newline of a
template file is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tutorloop.loop.core.answers import TRIGGER_QUALIFIER
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import ConfigError, DataError
from tutorloop.loop.core.student_prompt import ANSWER_TRIGGER

NUMBER_TRIGGER = "Therefore, the answer (arabic numerals) is"
YESNO_TRIGGER = "Therefore, the answer (Yes or No) is"
TEMPLATE_NAMES = (
    "zero_shot_cot_reason",
    "zero_shot_cot_answer",
    "few_shot_cot",
    "few_shot_cot_exemplar",
    "cote",
    "rp",
    "teacher_forcing",
    "teacher_forcing_exemplar",
    "tailored",
    "tailored_show_answer",
)
EXEMPLARS_FILE = "few_shot_exemplars.txt"

# A closing answer sentence ("Therefore, the answer is 18.", "The answer is 6.") on the last line.
_ANSWER_TAIL = re.compile(
    r"(?:(?<=[.!?\n])|^)[ \t]*(?:(?:so|thus|therefore|hence),?\s+)?the\s+(?:final\s+)?answer"
    rf"{TRIGGER_QUALIFIER}\s+is\b[^\n]*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Exemplar:
    question: str
    rationale: str
    answer: str


def answer_trigger(answer_type: str) -> str:
    """The stage-2 trigger: Fine-tune-CoT's numeric variant for numbers, Zero-shot-CoT's (Kojima et al.
    2022) yes/no variant for yes/no (a chat model answers the plain one with "The coin is still heads
    up."), else the plain one."""
    return {"number": NUMBER_TRIGGER, "yesno": YESNO_TRIGGER}.get(answer_type, ANSWER_TRIGGER)


def _read_builtin(name: str) -> str:
    return resources.files("tutorloop.loop").joinpath("teacher_prompts", name).read_text(encoding="utf-8")


def _strip_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


def load_templates(prompts_dir: str | None = None) -> dict[str, str]:
    """Built-in templates, with those of `prompts_dir` (same file names, `.txt`) taking their place."""
    templates = {name: _strip_newline(_read_builtin(f"{name}.txt")) for name in TEMPLATE_NAMES}
    if prompts_dir is not None:
        folder = Path(prompts_dir)
        if not folder.is_dir():
            raise ConfigError(f"teacher.prompts_dir: {prompts_dir}: folder not found")
        for name in TEMPLATE_NAMES:
            path = folder / f"{name}.txt"
            if path.is_file():
                templates[name] = _strip_newline(path.read_text(encoding="utf-8"))
    return templates


def parse_exemplars(text: str, source: str = EXEMPLARS_FILE) -> list[Exemplar]:
    """Exemplars from blocks of 'Q: ...', 'A: ...', 'Answer: ...' lines separated by blank lines."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    exemplars = []
    for block in re.split(r"\n\s*\n", "\n".join(lines).strip()):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if set(fields) != {"Q", "A", "Answer"}:
            raise DataError(f"{source}: exemplar block {len(exemplars) + 1} needs lines 'Q: ', 'A: ' and 'Answer: '")
        exemplars.append(Exemplar(fields["Q"].strip(), fields["A"].strip(), fields["Answer"].strip()))
    return exemplars


def builtin_exemplars(prompts_dir: str | None = None) -> list[Exemplar]:
    """The shipped arithmetic exemplars (Wei et al. 2022), or `prompts_dir`'s file of the same name."""
    if prompts_dir is not None and (Path(prompts_dir) / EXEMPLARS_FILE).is_file():
        path = Path(prompts_dir) / EXEMPLARS_FILE
        return parse_exemplars(path.read_text(encoding="utf-8"), str(path))
    return parse_exemplars(_read_builtin(EXEMPLARS_FILE))


def clean_rationale(text: str | None) -> str:
    """A teacher's reasoning without its closing answer sentence (the student target adds its own)."""
    text = (text or "").strip()
    match = _ANSWER_TAIL.search(text)
    return text[: match.start()].strip() if match else text


class PromptBuilder:
    """Prompt texts of every strategy for one set of templates."""

    def __init__(self, templates: dict[str, str]) -> None:
        self.templates = templates

    def _fill(self, name: str, **fields: str) -> str:
        try:
            return self.templates[name].format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"prompt template {name}.txt: bad placeholder {exc} (fields: {', '.join(sorted(fields))})"
            ) from None

    def zero_shot_reason(self, example: Example) -> str:
        return self._fill("zero_shot_cot_reason", question=example.question)

    def zero_shot_answer(self, example: Example, reason_prompt: str, rationale: str) -> str:
        return self._fill(
            "zero_shot_cot_answer",
            question=example.question,
            reason_prompt=reason_prompt,
            rationale=rationale,
            answer_trigger=answer_trigger(example.answer_type),
        )

    def _exemplars(self, name: str, exemplars: list[Exemplar]) -> str:
        return "\n\n".join(
            self._fill(name, question=e.question, rationale=e.rationale, answer=e.answer) for e in exemplars
        )

    def few_shot(self, example: Example, exemplars: list[Exemplar]) -> str:
        return self._fill(
            "few_shot_cot", question=example.question, exemplars=self._exemplars("few_shot_cot_exemplar", exemplars)
        )

    def cote(self, example: Example) -> str:
        return self._fill("cote", question=example.question)

    def rp(self, example: Example) -> str:
        return self._fill("rp", question=example.question, answer=example.answer)

    def teacher_forcing(self, example: Example, exemplars: list[Exemplar]) -> str:
        return self._fill(
            "teacher_forcing",
            question=example.question,
            answer=example.answer,
            exemplars=self._exemplars("teacher_forcing_exemplar", exemplars),
        )

    def tailored(
        self, example: Example, student_output: str, student_answer: str | None, show_answer: bool = False
    ) -> str:
        return self._fill(
            "tailored_show_answer" if show_answer else "tailored",
            question=example.question,
            answer=example.answer,
            student_rationale=clean_rationale(student_output),
            student_answer=student_answer if student_answer is not None else "(none)",
        )
