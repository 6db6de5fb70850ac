"""Tiny students and synthetic data shared by the student-side tests (models are cached after the first build)."""

from __future__ import annotations

from tutorloop.loop.core.config import StudentSection, TrainingSection
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.student_prompt import student_prompt, student_target
from tutorloop.loop.core.synthetic import generate_problems

# A pretrained tiny llama that knows single-digit arithmetic (built once, ~40 s, then cached).
PRETRAINED_TINY = {
    "arch": "llama",
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "max_positions": 192,
    "pretrain_steps": 1200,
}
# Untrained (random) tiny models: instant to build, enough for code paths that need no skill.
RANDOM_GPT2 = {"arch": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "max_positions": 192}
RANDOM_LLAMA = {"arch": "llama", "n_layer": 2, "n_embd": 64, "n_head": 4, "max_positions": 192}


def student_cfg(tiny: dict, **overrides) -> StudentSection:
    data = {
        "model": "tiny",
        "tiny": tiny,
        "dtype": "float32",
        "device": "cpu",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "generation": {"max_new_tokens": 40, "batch_size": 8, "temperature": 1.0},
    }
    data.update(overrides)
    return StudentSection.model_validate(data)


def training_cfg(**overrides) -> TrainingSection:
    data = {"epochs": 1.0, "lr": 3e-3, "batch_size": 8, "reflection": "none", "checkpoint_every": 1000}
    data.update(overrides)
    return TrainingSection.model_validate(data)


def problems(n: int, split: str = "train", seed: int = 0, max_steps: int = 1) -> list[Example]:
    return generate_problems(n, seed, 1, max_steps, 9, split=split)


def samples_for(
    examples: list[Example], tasks: tuple[str, ...] = ("answer", "explain"), weight: float = 1.0
) -> list[dict]:
    return [
        {
            "example_id": ex.id,
            "task": task,
            "input": student_prompt(ex.question, task, ex.answer),
            "target": student_target(task, ex.answer, ex.rationale),
            "weight": weight,
        }
        for ex in examples
        for task in tasks
    ]


def _steps_text(ex: Example, offset: int = 0) -> str:
    return " ".join(f"{s['a']} {s['op']} {s['b']} = {s['result'] + offset}." for s in ex.meta["steps"])


def wrong_rationale(ex: Example) -> str:
    """A plausible but wrong rationale: the right steps with every result off by one."""
    return f" {_steps_text(ex, 1)}\nTherefore, the answer is {int(ex.answer) + 1}."


def pairs_for(examples: list[Example]) -> list[dict]:
    """Contrast pairs: anchor = gold rationale, positive = the same steps worded tersely, negative = wrong."""
    return [
        {
            "example_id": ex.id,
            "input": student_prompt(ex.question, "explain"),
            "anchor": student_target("explain", ex.answer, ex.rationale),
            "positive": f" {_steps_text(ex)}\nTherefore, the answer is {ex.answer}.",
            "negative": wrong_rationale(ex),
        }
        for ex in examples
    ]
