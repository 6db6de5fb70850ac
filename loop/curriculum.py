"""What the student learns each round: mistake selection, multi-task samples, contrast pairs, replay.

Pure functions over plain records, so the choices of a round can be tested without models or Ray.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from tutorloop.loop.config import TeacherSection, TrainingSection
from tutorloop.loop.datasets import Example
from tutorloop.loop.student_prompt import student_prompt, student_target

EXPLANATION_SOURCES_FOR_RATIONALIZE = ("rp", "crop")


def find_mistakes(attempts: Iterable[dict]) -> dict[str, list[dict]]:
    """Questions with at least one wrong sample -> all of that question's attempts (wrong first)."""
    by_question: dict[str, list[dict]] = defaultdict(list)
    for attempt in attempts:
        by_question[attempt["example_id"]].append(attempt)
    mistakes = {}
    for example_id, rows in by_question.items():
        if any(not r["correct"] for r in rows):
            mistakes[example_id] = sorted(rows, key=lambda r: (r["correct"], r["sample_index"]))
    return mistakes


def order_mistakes(mistakes: dict[str, list[dict]], order: str, limit: int | None, seed: int) -> list[str]:
    """Which mistakes to teach first: `hardest` (fewest correct samples), `random`, or `pool` order."""
    ids = sorted(mistakes)
    if order == "random":
        random.Random(seed).shuffle(ids)
    elif order == "hardest":
        share = {i: sum(r["correct"] for r in mistakes[i]) / len(mistakes[i]) for i in ids}
        ids.sort(key=lambda i: (share[i], i))
    return ids[:limit] if limit is not None else ids


def random_selection(pool: list[Example], count: int, seed: int) -> list[str]:
    """Ids of `count` questions drawn at random from the pool (seeded, independent of pool order).

    Used for the ablation without tailoring (as many questions as there were mistakes) and for the
    part of the pool a tailored round examines (`training.exam_size`)."""
    ids = sorted(e.id for e in pool)
    random.Random(seed).shuffle(ids)
    return ids[:count]


@dataclass
class TeachingTargets:
    """What a round asks the teacher about: the questions, the strategies, and for tailored prompts the
    student's mistakes on them; `ask_teacher` is False where the training needs no rationale."""

    examples: list[Example]
    strategies: list[str]
    mistakes: dict[str, list[dict]] | None
    ask_teacher: bool


def teaching_targets(pool: list[Example], examples: dict[str, Example], mistakes: dict[str, list[dict]] | None,
                     training: TrainingSection, teacher: TeacherSection, seed: int) -> TeachingTargets:
    """Round 0 (`mistakes` None): the whole pool with the configured strategies. A tailored round: its
    mistakes in `training.mistake_order` up to `training.max_mistakes`, with tailored prompts; or, in
    the ablation without tailoring (`training.selection: random`), as many questions drawn at random
    from the pool and taught as in round 0."""
    strategies, job_mistakes = list(teacher.strategies), None
    if mistakes is None:
        targets = list(pool)
    else:
        ordered = order_mistakes(mistakes, training.mistake_order, training.max_mistakes, seed)
        if training.selection == "random":
            ordered = random_selection(pool, len(ordered), seed)
        else:
            strategies = tailored_strategies(teacher)
            job_mistakes = {i: mistakes[i] for i in ordered}
        targets = [examples[i] for i in ordered]
    # Fine-tuning on gold answers alone (the answer-only baseline) needs no teacher.
    return TeachingTargets(targets, strategies, job_mistakes, ask_teacher=set(training.tasks) != {"answer"})


def tailored_strategies(teacher: TeacherSection) -> list[str]:
    """`tailored` where a teacher can write corrections; a replay teacher can only re-explain."""
    backends = {t.backend for t in teacher.teachers}
    return ["tailored"] if backends - {"replay"} else ["zero_shot_cot"]


def build_samples(round_: int, examples: dict[str, Example], rationales: Iterable[dict], tasks: list[str],
                  teacher_weights: dict[str, float], taught: Iterable[str]) -> list[dict]:
    """Multi-task samples from accepted teacher rationales (Li et al. 2022).

    Each accepted rationale becomes an explanation sample under its teacher's task tag, and
    rationalization samples come from rationales the teacher wrote knowing the gold answer. Every
    taught question gets one answer-prediction sample: its gold answer is known even where the
    teacher's rationale was rejected.
    """
    samples: list[dict] = []
    if "answer" in tasks:
        samples += [_sample(round_, examples[i], "answer", "gold", None, 1.0) for i in dict.fromkeys(taught)]
    for r in rationales:
        if not r["accepted"]:
            continue
        example = examples[r["example_id"]]
        weight = teacher_weights.get(r["teacher"], 1.0)
        explain_task = r.get("task") or "explain"
        if "explain" in tasks:
            samples.append(_sample(round_, example, explain_task, r["teacher"], r["rationale"], weight))
        if "rationalize" in tasks and r["strategy"] in EXPLANATION_SOURCES_FOR_RATIONALIZE:
            samples.append(_sample(round_, example, "rationalize", r["teacher"], r["rationale"], weight))
    return samples


def _sample(round_: int, example: Example, task: str, source: str, rationale: str | None,
            weight: float) -> dict:
    return {
        "round": round_,
        "example_id": example.id,
        "task": task,
        "source": source,
        "input": student_prompt(example.question, task,
                                given_answer=example.answer if task == "rationalize" else None),
        "target": student_target(task, example.answer, rationale),
        "weight": float(weight),
    }


def build_contrast_pairs(round_: int, examples: dict[str, Example], rationales: Iterable[dict],
                         mistakes: dict[str, list[dict]], earlier_rationales: dict[str, list[str]]) -> list[dict]:
    """Self-reflection data (Wang et al. 2023): teacher rationale vs the student's own wrong one.

    anchor = an accepted teacher rationale; positive = another correct rationale for the question
    (the student's own correct sample, else another teacher rationale, else the gold rationale, else
    the anchor itself); negative = the student's wrong rationale from the exam.
    """
    pairs: list[dict] = []
    accepted: dict[str, list[dict]] = defaultdict(list)
    for r in rationales:
        if r["accepted"]:
            accepted[r["example_id"]].append(r)
    for example_id, taught in sorted(accepted.items()):
        attempts = mistakes.get(example_id)
        if not attempts:
            continue
        example = examples[example_id]
        anchor = student_target("explain", example.answer, taught[0]["rationale"])
        correct_outputs = [a["output"] for a in attempts if a["correct"] and a["output"]]
        other_teacher = [t["rationale"] for t in taught[1:]] + earlier_rationales.get(example_id, [])
        if correct_outputs:
            positive = correct_outputs[0]
        elif other_teacher:
            positive = student_target("explain", example.answer, other_teacher[0])
        elif example.rationale:
            positive = student_target("explain", example.answer, example.rationale)
        else:
            positive = anchor
        for wrong in (a for a in attempts if not a["correct"] and a["output"]):
            pairs.append({
                "round": round_,
                "example_id": example_id,
                "input": student_prompt(example.question, "explain"),
                "anchor": anchor,
                "positive": positive,
                "negative": wrong["output"] if wrong["output"].startswith(" ") else " " + wrong["output"],
            })
            break  # one pair per question: its first wrong sample
    return pairs


def replay_samples(round_: int, earlier: list[dict], new_count: int, fraction: float, seed: int) -> list[dict]:
    """Mix earlier rounds' samples into this round's training so the student does not forget them."""
    count = min(len(earlier), round(new_count * fraction / (1 - fraction))) if fraction < 1 else len(earlier)
    chosen = random.Random(seed).sample(earlier, count) if count else []
    return [dict(s, round=round_, source=f"replay:round-{s['round']}") for s in chosen]
