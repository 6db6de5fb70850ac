"""One plan of a run's data and rounds, for the engine, the dry run and run creation alike.

`load_pool` reads the task's splits once (a pool question that is also a test question is not
trained on; `data.val_size` pool questions become the validation split, never taught); `exam_draw` is
the part of the pool a tailored round examines; `plan_teaching` is what a round asks its teachers,
given the student's mistakes (the engine) or the worst case of them
(`worst_case_mistakes`, the dry run planning ahead). Nothing here touches a history, Ray or a teacher.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from tutorloop.loop.core.config import Config
from tutorloop.loop.core.datasets import Example, drop_test_duplicates, load_examples
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.records import AttemptRecord
from tutorloop.loop.curriculum import TeachingTargets, random_selection, teaching_targets
from tutorloop.loop.round_plan import derive_seed, round_kind
from tutorloop.loop.run_teachers import round_teachers

if TYPE_CHECKING:
    from tutorloop.loop.teaching_job import TeachingJob

CHARS_PER_TOKEN = 4  # about, for a worst-case wrong answer's length


@dataclass(frozen=True)
class Pool:
    """The run's questions: the training pool (test duplicates and the validation split taken out), the
    test split, the validation split (split 'val': evaluated, never taught), every one by id."""

    pool: list[Example]
    test: list[Example]
    duplicates: int  # pool questions dropped as duplicates of test questions
    examples: dict[str, Example]
    val: list[Example] = field(default_factory=list)


@dataclass(frozen=True)
class RoundTeaching:
    """What a round asks its teachers: the targets, their jobs (none where the training needs no
    rationale) and the round's teaching seed (the curriculum's draws use it too)."""

    targets: TeachingTargets
    jobs: list[TeachingJob]
    seed: int


def load_pool(cfg: Config) -> Pool:
    test = load_examples(cfg.data, "test")
    # Clean splits: a pool question that is also a test question is not trained on.
    pool, duplicates = drop_test_duplicates(load_examples(cfg.data, "train"), test)
    pool, val = carve_validation(pool, cfg.data.val_size, cfg.data.task)
    return Pool(pool, test, duplicates, {e.id: e for e in pool + test + val}, val)


def carve_validation(pool: list[Example], size: int, task: str) -> tuple[list[Example], list[Example]]:
    """(the pool without them, `size` validation questions): a draw seeded by the task alone, like the test
    split's, so every run seed trains on the same pool and tunes on the same questions."""
    if size == 0:
        return pool, []
    if size >= len(pool):
        raise ConfigError(
            f"data.val_size: {size} leaves no training pool (the pool has {len(pool)} questions "
            f"after test duplicates are dropped); expected fewer"
        )
    shuffled = list(pool)
    random.Random(f"{task}/val").shuffle(shuffled)
    chosen = {e.id for e in shuffled[:size]}
    return [e for e in pool if e.id not in chosen], [replace(e, split="val") for e in shuffled[:size]]


def exam_draw(cfg: Config, pool: Pool, round_: int) -> list[Example]:
    """The pool questions a tailored round examines: all, or `training.exam_size` drawn per round."""
    size = cfg.training.exam_size
    if size is None or size >= len(pool.pool):
        return pool.pool
    drawn = random_selection(pool.pool, size, derive_seed(cfg.run.seed, round_, "exam-draw"))
    return [pool.examples[i] for i in drawn]


def worst_case_mistakes(cfg: Config, examined: list[Example]) -> dict[str, list[AttemptRecord]]:
    """Every examined question a mistake, its wrong answer as long as the student may write."""
    longest = cfg.student.generation.max_new_tokens
    return {
        e.id: [
            AttemptRecord(
                example_id=e.id,
                sample_index=0,
                mode=cfg.student.exam_mode,
                output="x" * (CHARS_PER_TOKEN * longest),
                extracted=None,
                correct=False,
                prompt_tokens=0,
                output_tokens=longest,
            )
        ]
        for e in examined
    }


def plan_teaching(
    cfg: Config, pool: Pool, round_: int, mistakes: dict[str, list[AttemptRecord]] | None
) -> RoundTeaching:
    """Round 0 (`mistakes` None): the pool; a tailored round: its mistakes, with only the teachers of
    this kind of round."""
    from tutorloop.loop.teaching_plan import plan_round_jobs

    seed = derive_seed(cfg.run.seed, round_, "teach")
    teachers = round_teachers(cfg.teacher, round_kind(round_))
    targets = teaching_targets(pool.pool, pool.examples, mistakes, cfg.training, teachers, seed)
    jobs = plan_round_jobs(targets, teachers, round_) if targets.ask_teacher else []
    return RoundTeaching(targets, jobs, seed)
