"""What the student learns each round: mistake selection, multi-task samples, contrast pairs, replay.

Pure functions over plain records (loop/core/records.py), so the choices of a round can be tested without
models or Ray. The records they build carry no round: the store sets it as it commits the round's phase.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from tutorloop.loop.core.config import TrainingSection
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.records import (
    AttemptRecord,
    ContrastPairRecord,
    EarlierSample,
    RationaleRecord,
    SampleRecord,
    columns,
)
from tutorloop.loop.core.student_prompt import student_prompt, student_target
from tutorloop.loop.core.teacher_config import TeacherSection

EXPLANATION_SOURCES_FOR_RATIONALIZE = ("rp", "crop")


def find_mistakes(attempts: Iterable[AttemptRecord]) -> dict[str, list[AttemptRecord]]:
    """Questions with at least one wrong sample -> all of that question's attempts (wrong first)."""
    by_question: dict[str, list[AttemptRecord]] = defaultdict(list)
    for attempt in attempts:
        by_question[attempt["example_id"]].append(attempt)
    mistakes = {}
    for example_id, rows in by_question.items():
        if any(not r["correct"] for r in rows):
            mistakes[example_id] = sorted(rows, key=lambda r: (r["correct"], r["sample_index"]))
    return mistakes


def order_mistakes(
    mistakes: dict[str, list[AttemptRecord]],
    order: str,
    limit: int | None,
    seed: int,
    answers: dict[str, str] | None = None,
) -> list[str]:
    """Which mistakes to teach first: `hardest` (most wrong samples of the k, then the larger wrong
    share, ties in a seeded random order), `random`, or `pool` order. With `answers` (id -> gold
    answer) the order takes each gold answer in turn: every answer's first mistake, then every
    answer's second, each turn in that order."""
    ids = sorted(mistakes)
    if order in ("random", "hardest"):
        random.Random(seed).shuffle(ids)
    if order == "hardest":
        # Most mistakes tie (all k samples wrong); breaking ties by id would teach the same few
        # questions every round, so the stable sort keeps the shuffled order within a tie.
        wrong = {i: sum(not r["correct"] for r in mistakes[i]) for i in ids}
        ids.sort(key=lambda i: (-wrong[i], -wrong[i] / len(mistakes[i])))
    if answers is not None:
        # A student's hardest mistakes on a yes/no task are mostly the answer it under-predicts;
        # teaching only those flips its prior (RESULTS.md, coin_flip with the live teacher).
        seen: dict[str, int] = defaultdict(int)
        turn = {}
        for i in ids:
            turn[i] = seen[answers[i]]
            seen[answers[i]] += 1
        ids.sort(key=lambda i: turn[i])
    return ids[:limit] if limit is not None else ids


def random_selection(pool: list[Example], count: int, seed: int) -> list[str]:
    """Ids of `count` questions drawn at random from the pool (seeded, independent of pool order).

    Used for the ablation without tailoring (as many questions as there were mistakes) and for the
    part of the pool a tailored round examines (`training.exam_size`)."""
    ids = sorted(e.id for e in pool)
    random.Random(seed).shuffle(ids)
    return ids[:count]


def category_balanced_selection(
    pool: list[Example], ordered_mistakes: list[str], limit: int | None, seed: int
) -> list[str]:
    """Questions to teach, balanced over the pool's categories (`Example.meta["category"]`).

    Each category in turn gives its next mistake (in `ordered_mistakes` order) or, once it has none
    left, a pool question of it that is not a mistake (seeded order), until every mistake is taken and
    the turn is complete, or `limit` questions. A round of mistakes that all share one category
    teaches the student that category's answer pattern as a prior (RESULTS.md, the reworded design)."""
    category = categories(pool)
    mistaken = set(ordered_mistakes)
    queues: dict[str, list[str]] = defaultdict(list)
    for i in ordered_mistakes:
        queues[category[i]].append(i)
    others = sorted(i for i in category if i not in mistaken)
    random.Random(seed).shuffle(others)
    fills: dict[str, list[str]] = defaultdict(list)
    for i in others:
        fills[category[i]].append(i)
    chosen: list[str] = []
    while any(queues.values()):
        for name in sorted(set(queues) | set(fills)):
            source = queues[name] or fills[name]
            if source and (limit is None or len(chosen) < limit):
                chosen.append(source.pop(0))
        if limit is not None and len(chosen) >= limit:
            break
    return chosen


def categories(pool: list[Example]) -> dict[str, str]:
    """Question id -> the category `training.mistake_balance: category` balances over."""
    for example in pool:
        if example.meta.get("category") is None:
            raise ConfigError(
                f"training.mistake_balance: category needs a category on every question; "
                f"{example.id} has none (the synthetic task has them)"
            )
    return {e.id: str(e.meta["category"]) for e in pool}


@dataclass
class TeachingTargets:
    """What a round asks the teacher about: the questions, the strategies, and for tailored prompts the
    student's mistakes on them; `ask_teacher` is False where the training needs no rationale."""

    examples: list[Example]
    strategies: list[str]
    mistakes: dict[str, list[AttemptRecord]] | None
    ask_teacher: bool


def teaching_targets(
    pool: list[Example],
    examples: dict[str, Example],
    mistakes: dict[str, list[AttemptRecord]] | None,
    training: TrainingSection,
    teacher: TeacherSection,
    seed: int,
) -> TeachingTargets:
    """Round 0 (`mistakes` None): the whole pool with the configured strategies. A tailored round: its
    mistakes in `training.mistake_order` up to `training.max_mistakes`, with tailored prompts; or, in
    the ablation without tailoring (`training.selection: random`), as many questions drawn at random
    from the pool and taught as in round 0 (`untailored_strategies`). With `training.accepted_budget`
    the targets are every candidate in order (capped by max_mistakes), asked in turn until the budget
    of accepted rationales is met (loop/teaching.py, `teach_until_accepted`)."""
    strategies, job_mistakes = list(teacher.strategies), None
    if mistakes is None:
        targets = list(pool)
    else:
        answers = {i: examples[i].answer for i in mistakes} if training.mistake_balance == "answer" else None
        if training.mistake_balance == "category":
            ordered = order_mistakes(mistakes, training.mistake_order, None, seed)
            ordered = category_balanced_selection(pool, ordered, training.max_mistakes, seed)
        else:
            ordered = order_mistakes(mistakes, training.mistake_order, training.max_mistakes, seed, answers)
        if training.selection == "random":
            # With an accepted budget the draw goes on through the pool until the budget is met.
            count = (training.max_mistakes or len(pool)) if training.accepted_budget else len(ordered)
            ordered = random_selection(pool, count, seed)
            strategies = untailored_strategies(teacher)
        else:
            strategies = tailored_strategies(teacher)
            job_mistakes = {i: mistakes[i] for i in ordered if i in mistakes}
        targets = [examples[i] for i in ordered]
    # Fine-tuning on gold answers alone (the answer-only baseline) needs no teacher.
    return TeachingTargets(targets, strategies, job_mistakes, ask_teacher=set(training.tasks) != {"answer"})


def untailored_strategies(teacher: TeacherSection) -> list[str]:
    """The random arm's strategies: `teacher.strategies`, or rp (the teacher's own solution, told the
    gold answer) where the tailored prompt shows the answer, so both arms ask a prompt of one family."""
    backends = {t.backend for t in teacher.teachers}
    return ["rp"] if teacher.tailored_show_answer and backends - {"replay"} else list(teacher.strategies)


def tailored_strategies(teacher: TeacherSection) -> list[str]:
    """`tailored` where a teacher can write corrections; a replay teacher can only re-explain."""
    backends = {t.backend for t in teacher.teachers}
    return ["tailored"] if backends - {"replay"} else ["zero_shot_cot"]


def build_samples(
    examples: dict[str, Example],
    rationales: Iterable[RationaleRecord],
    tasks: list[str],
    teacher_weights: dict[str, float],
    taught: Iterable[str],
) -> list[SampleRecord]:
    """Multi-task samples from accepted teacher rationales (Li et al. 2022).

    Each accepted rationale becomes an explanation sample under its teacher's task tag, and
    rationalization samples come from rationales the teacher wrote knowing the gold answer. Every
    taught question gets one answer-prediction sample: its gold answer is known even where the
    teacher's rationale was rejected.
    """
    samples: list[SampleRecord] = []
    if "answer" in tasks:
        samples += [_sample(examples[i], "answer", "gold", None, 1.0) for i in dict.fromkeys(taught)]
    for r in rationales:
        if not r["accepted"]:
            continue
        example = examples[r["example_id"]]
        weight = teacher_weights.get(r["teacher"], 1.0)
        explain_task = r.get("task") or "explain"
        if "explain" in tasks:
            samples.append(_sample(example, explain_task, r["teacher"], r["rationale"], weight))
        if "rationalize" in tasks and r["strategy"] in EXPLANATION_SOURCES_FOR_RATIONALIZE:
            samples.append(_sample(example, "rationalize", r["teacher"], r["rationale"], weight))
    return samples


def _sample(example: Example, task: str, source: str, rationale: str | None, weight: float) -> SampleRecord:
    return {
        "example_id": example.id,
        "task": task,
        "source": source,
        "input": student_prompt(example.question, task, given_answer=example.answer if task == "rationalize" else None),
        "target": student_target(task, example.answer, rationale),
        "weight": float(weight),
    }


@dataclass
class ContrastPairs:
    """A round's self-reflection pairs, and how many mistakes got none for want of a part."""

    pairs: list[ContrastPairRecord]
    without_positive: int = 0  # no correct rationale other than the anchor
    without_negative: int = 0  # every wrong sample was cut off before stating an answer

    def note(self) -> str:
        """The round summary's line on the pairs."""
        note = f"contrast pairs: {len(self.pairs)}; {self.without_positive} questions had no distinct correct rationale"
        if self.without_negative:
            note += f", {self.without_negative} no wrong rationale that states an answer"
        return note


def _same_text(text: str) -> str:
    """Rationales compared for sameness: whitespace, case and final punctuation do not count."""
    return " ".join(text.split()).lower().rstrip(".!")


def build_contrast_pairs(
    examples: dict[str, Example],
    rationales: Iterable[RationaleRecord],
    mistakes: dict[str, list[AttemptRecord]],
    earlier_rationales: dict[str, list[str]],
    max_per_question: int = 4,
) -> ContrastPairs:
    """Self-reflection data (Wang et al. 2023): teacher rationale vs the student's own wrong one.

    anchor = the question's first accepted teacher rationale of this round; positive = a *different*
    correct rationale (the student's own correct samples, the round's other accepted rationales, the
    earlier rounds' accepted ones, the gold rationale), never the anchor again; negative = a wrong
    sample of the student that states an answer (a cut-off output is not wrong reasoning). One pair
    per unique negative, up to `max_per_question`, the positives taken in turn; a mistake without a
    distinct positive gets no pair and is counted.
    """
    result = ContrastPairs([])
    accepted: dict[str, list[RationaleRecord]] = defaultdict(list)
    for r in rationales:
        if r["accepted"] and r["rationale"]:
            accepted[r["example_id"]].append(r)
    for example_id, taught in sorted(accepted.items()):
        attempts = mistakes.get(example_id)
        if not attempts:
            continue
        example = examples[example_id]
        anchor = student_target("explain", example.answer, taught[0]["rationale"])
        negatives = _unique(
            [a["output"] for a in attempts if not a["correct"] and a.get("extracted") is not None], exclude=anchor
        )
        teacher_texts = [t["rationale"] for t in taught[1:]] + earlier_rationales.get(example_id, [])
        if example.rationale:
            teacher_texts.append(example.rationale)
        positives = _unique(
            [a["output"] for a in attempts if a["correct"]]
            + [student_target("explain", example.answer, t) for t in teacher_texts],
            exclude=anchor,
        )
        if not negatives:
            result.without_negative += 1
            continue
        if not positives:
            result.without_positive += 1
            continue
        for index, negative in enumerate(negatives[:max_per_question]):
            result.pairs.append(
                {
                    "example_id": example_id,
                    "input": student_prompt(example.question, "explain"),
                    "anchor": anchor,
                    "positive": _leading_space(positives[index % len(positives)]),
                    "negative": _leading_space(negative),
                }
            )
    return result


def _unique(texts: list[str], exclude: str) -> list[str]:
    """`texts` without empty ones, repeats, or the text of `exclude`, in order."""
    seen, kept = {_same_text(exclude)}, []
    for text in texts:
        key = _same_text(text or "")
        if key and key not in seen:
            seen.add(key)
            kept.append(text)
    return kept


def _leading_space(text: str) -> str:
    """A target continues the prompt's `Answer:` after a space, as `student_target` writes it."""
    return text if text.startswith(" ") else " " + text


def replay_samples(earlier: list[EarlierSample], new_count: int, fraction: float, seed: int) -> list[SampleRecord]:
    """Mix earlier rounds' samples into this round's training so the student does not forget them."""
    count = min(len(earlier), round(new_count * fraction / (1 - fraction))) if fraction < 1 else len(earlier)
    chosen = random.Random(seed).sample(earlier, count) if count else []
    # A replay is a sample of this round (the store gives it this round) naming the round it came from.
    return [{**{key: s[key] for key in columns(SampleRecord)}, "source": f"replay:round-{s['round']}"} for s in chosen]
