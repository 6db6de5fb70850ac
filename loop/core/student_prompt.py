"""The student's prompt format, shared by the exam and the trainer so both see the same text.

Each training task has its own prefix (multi-task learning, Li et al. 2022); a model that has
learned the prefixes can be asked for a bare answer or for a rationale followed by the answer.
"""

from __future__ import annotations

from typing import Any

ANSWER_TRIGGER = "Therefore, the answer is"

TASK_PREFIXES = {
    "answer": "[answer]",
    "explain": "[explain]",
    "rationalize": "[rationalize]",
}


def task_prefix(task: str) -> str:
    """Prefix of a task; a teacher-specific task (multi-teacher) gets `[explain:<name>]`."""
    return TASK_PREFIXES.get(task, f"[explain:{task}]")


def student_prompt(question: str, task: str, given_answer: str | None = None) -> str:
    """The text the student is conditioned on. `rationalize` also shows the gold answer to explain."""
    prompt = f"{task_prefix(task)} Question: {question.strip()}\n"
    if task == "rationalize":
        prompt += f"Known answer: {given_answer}\n"
    return prompt + "Answer:"


def student_target(task: str, answer: str, rationale: str | None = None) -> str:
    """The text the student learns to produce after its prompt (without the end-of-sequence token)."""
    if task == "answer":
        return f" {answer}"
    if rationale is None:
        raise ValueError(f"task {task!r} needs a rationale")
    # Exams stop at a blank line (student.generation.stop): a target with one would teach the student
    # to end its answer before the answer sentence. Paragraphs become lines.
    steps = "\n".join(line.strip() for line in rationale.splitlines() if line.strip())
    return f" {steps}\n{ANSWER_TRIGGER} {answer}."


# The prompted zero-shot baseline (Kojima et al. 2022, zero-shot CoT): the untrained student asked in a
# format it knows instead of the training prefixes it has never seen.
STEP_BY_STEP = "Let's think step by step."


def prompted_prompt(question: str, tokenizer: Any) -> tuple[str, bool]:
    """The prompted baseline's text, and whether it already holds the model's special tokens.

    A chat model gets the question as a user turn of its own chat template, its answer opening on the
    step-by-step trigger; a model without a template gets Fine-tune-CoT's `Q: ... A: Let's think step by step.`"""
    if getattr(tokenizer, "chat_template", None):
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": question.strip()}], tokenize=False, add_generation_prompt=True
        )
        return chat + STEP_BY_STEP, True
    return f"Q: {question.strip()}\nA: {STEP_BY_STEP}", False
