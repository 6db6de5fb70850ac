"""What a teaching phase asks: its jobs, planned from a round's targets, and their worst-case cost.

`plan_round_jobs` is what the engine and the dry run plan a round with; `estimate_cost` is the dry
run's upper bound on what those jobs can spend, built from the very requests a run would send.
"""

from __future__ import annotations

from typing import Any

from tutorloop.actors.teacher.sources import AnswerSources
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.records import AttemptRecord
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection
from tutorloop.loop.curriculum import TeachingTargets
from tutorloop.loop.strategies import Exemplar, PromptBuilder, builtin_exemplars, load_templates
from tutorloop.loop.teaching_job import JobRun, TeachingJob, max_request_cost


def _pick_exemplars(example: Example, pool: list[Example], count: int, prompts_dir: str | None) -> list[Exemplar]:
    """In-context examples: the pool's first examples with gold rationales, else the built-in arithmetic ones."""
    chosen = [Exemplar(e.question, e.rationale, e.answer) for e in pool if e.rationale and e.id != example.id][:count]
    if len(chosen) == count:
        return chosen
    if example.answer_type == "number":
        return builtin_exemplars(prompts_dir)[:count]
    raise ConfigError(
        f"{example.dataset}: few_shot_cot and teacher_forcing need in-context examples, but this "
        f"task has no gold rationales and the built-in exemplars are arithmetic only"
    )


def plan_jobs(
    examples: list[Example],
    teacher_cfg: TeacherSection,
    round: int,
    strategies: list[str] | None = None,
    mistakes: dict[str, list[AttemptRecord]] | None = None,
) -> list[TeachingJob]:
    """One job per (example, teacher, strategy, sample index); tailored jobs only for examples with a mistake."""
    strategies = list(strategies if strategies is not None else teacher_cfg.strategies)
    if "tailored" in strategies and mistakes is None:
        raise ConfigError("teacher.strategies: 'tailored' needs the student's mistakes (none were given)")
    per_teacher = {teacher.name: _teacher_strategies(teacher, strategies) for teacher in teacher_cfg.teachers}
    jobs = []
    for example in examples:
        for teacher in teacher_cfg.teachers:
            for strategy in per_teacher[teacher.name]:
                mistake = None
                exemplars: list[Exemplar] = []
                if strategy == "tailored":
                    wrong = (mistakes or {}).get(example.id) or []
                    if not wrong:
                        continue
                    mistake = wrong[0]
                if strategy in ("few_shot_cot", "teacher_forcing"):
                    exemplars = _pick_exemplars(example, examples, teacher_cfg.exemplars, teacher_cfg.prompts_dir)
                samples = teacher_cfg.tailored_samples if strategy == "tailored" else teacher_cfg.diverse_samples
                for sample in range(samples):
                    jobs.append(TeachingJob(example, teacher, strategy, sample, round, exemplars, mistake))
    return jobs


def plan_round_jobs(targets: TeachingTargets, teacher_cfg: TeacherSection, round: int) -> list[TeachingJob]:
    """A round's jobs: its mistakes with the targets' strategies (tailored), and the questions it teaches
    without a mistake (`training.mistake_balance: category`) with the configured strategies."""
    if targets.mistakes is None:
        return plan_jobs(targets.examples, teacher_cfg, round, strategies=targets.strategies)
    mistaken = [e for e in targets.examples if e.id in targets.mistakes]
    right = [e for e in targets.examples if e.id not in targets.mistakes]
    jobs = plan_jobs(mistaken, teacher_cfg, round, strategies=targets.strategies, mistakes=targets.mistakes)
    return jobs + (plan_jobs(right, teacher_cfg, round) if right else [])


def _teacher_strategies(teacher: TeacherEndpoint, strategies: list[str]) -> list[str]:
    """The strategies `teacher` is asked with. A replay teacher cannot read a mistake: beside a teacher
    that tailors it re-explains the mistaken question (zero_shot_cot), as in a round of replay alone."""
    if teacher.backend != "replay":
        return strategies
    chosen = list(dict.fromkeys("zero_shot_cot" if s == "tailored" else s for s in strategies))
    other = [s for s in chosen if s != "zero_shot_cot"]
    if other:
        raise ConfigError(
            f"teacher '{teacher.name}': the replay backend serves only zero_shot_cot, not {', '.join(other)}"
        )
    return chosen


def estimate_cost(jobs: list[TeachingJob], teacher_cfg: TeacherSection) -> dict[str, Any]:
    """Dry-run upper bound of a set of jobs, per teacher and in total, without sending or looking up anything.

    Stage-2 prompts (zero-shot CoT answer, crop's rp fallback) are counted as if every earlier stage
    used all of its max_tokens; crop counts both of its requests.
    """
    builder = PromptBuilder(load_templates(teacher_cfg.prompts_dir))
    per_teacher: dict[str, dict[str, Any]] = {
        t.name: {"requests": 0, "tokens_in": 0, "max_tokens_out": 0, "max_cost_usd": 0.0} for t in teacher_cfg.teachers
    }
    sources = AnswerSources(teacher_cfg)  # the keys do not count here; their data_dir does not matter
    for job in jobs:
        row = per_teacher[job.teacher.name]
        for request in JobRun(job, builder, teacher_cfg, sources).worst_case_requests():
            row["requests"] += 1
            row["tokens_in"] += request.tokens_in_estimate()
            row["max_tokens_out"] += request.max_tokens
            row["max_cost_usd"] += max_request_cost(request, job.teacher)
    totals = {
        key: sum(row[key] for row in per_teacher.values())
        for key in ("requests", "tokens_in", "max_tokens_out", "max_cost_usd")
    }
    return {**totals, "teachers": per_teacher}
