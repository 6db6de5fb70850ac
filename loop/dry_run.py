"""`tutorloop run CONFIG --dry-run`: the run's plan and its worst-case teacher bill, before anything runs.

Loads the config and the data (and a replay teacher's own recording), then plans every round the
config asks for: questions per phase, teacher requests, estimated prompt tokens, the most output
tokens and the most dollars at the configured prices (`estimate_cost`). A tailored round is
planned at its worst: every examined question a mistake (up to `training.max_mistakes`), each with a
wrong answer as long as `student.generation.max_new_tokens` allows. Where the run directory holds a
history it is read read-only: rounds done, answers stored, dollars spent, and how many of round 0's
first requests are answered from the cache. Starts no Ray, no server, writes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from tutorloop.loop.core.config import Config
from tutorloop.loop.planner import Pool, exam_draw, load_pool, plan_teaching, worst_case_mistakes
from tutorloop.loop.round_plan import BASELINE, CORE, planned_rounds, round_kind
from tutorloop.loop.teaching_job import TeachingJob
from tutorloop.loop.teaching_plan import estimate_cost
from tutorloop.store.query import HISTORY_FILE, HistoryReader


@dataclass
class RoundEstimate:
    """One planned round: questions per phase and the worst case of its teacher requests."""

    round: int
    kind: str
    status: str  # planned | done (in the run directory's history)
    exam_questions: int
    teach_questions: int
    eval_questions: int
    teacher_requests: int
    tokens_in: int
    max_tokens_out: int
    max_cost_usd: float
    cached: int | None  # round 0's first requests already in the history; None where unknown ahead


@dataclass
class Stored:
    """What an existing run directory already holds."""

    done_rounds: set[int]
    answers: int
    spent_usd: float
    hashes: set[str]


def read_stored(run_dir: Path) -> Stored | None:
    """The run directory's history, read-only; None where there is none."""
    if not (run_dir / HISTORY_FILE).exists():
        return None
    history = HistoryReader(run_dir)
    hashes = history.request_hashes()
    return Stored(history.done_rounds(), len(hashes), history.spent_usd(), hashes)


def _jobs(cfg: Config, pool: Pool, round_: int) -> tuple[int, list[TeachingJob], int]:
    """The round's worst-case teaching jobs, planned as the engine plans them: (questions examined,
    jobs, questions taught)."""
    examined, mistakes = [], None
    if round_kind(round_) != CORE:
        examined = exam_draw(cfg, pool, round_)
        mistakes = worst_case_mistakes(cfg, examined)
    plan = plan_teaching(cfg, pool, round_, mistakes)
    return len(examined), plan.jobs, len(plan.targets.examples)


def _first_hashes(jobs: list[TeachingJob], cfg: Config) -> list[str]:
    from tutorloop.actors.teacher.sources import AnswerSources
    from tutorloop.loop.strategies import PromptBuilder, load_templates
    from tutorloop.loop.teaching_job import JobRun  # the request a job sends first, exactly as a run builds it

    builder = PromptBuilder(load_templates(cfg.teacher.prompts_dir))
    sources = AnswerSources(cfg.teacher, cfg.data.data_dir)
    return [JobRun(job, builder, cfg.teacher, sources).first_request().request_hash for job in jobs]


def plan_run(cfg: Config, stored: Stored | None) -> list[RoundEstimate]:
    """Every round the config plans, at its worst case (see the module docstring)."""
    pool = load_pool(cfg)
    rounds = []
    for round_ in planned_rounds(cfg.run):
        kind = round_kind(round_)
        examined, jobs, taught = (0, [], 0) if kind == BASELINE else _jobs(cfg, pool, round_)
        cost = estimate_cost(jobs, cfg.teacher)
        cached = None
        if kind == CORE:
            cached = len(set(_first_hashes(jobs, cfg)) & stored.hashes) if stored else 0
        rounds.append(
            RoundEstimate(
                round_,
                kind,
                "done" if stored and round_ in stored.done_rounds else "planned",
                examined,
                taught,
                len(pool.test) + len(pool.val),  # the validation split is evaluated like the test
                cost["requests"],
                cost["tokens_in"],
                cost["max_tokens_out"],
                cost["max_cost_usd"],
                cached,
            )
        )
    return rounds


def describe_plan(cfg: Config, run_dir: Path, rounds: list[RoundEstimate], stored: Stored | None) -> list[str]:
    """The lines around the plan's table: what runs, the prices, the budget and what is stored."""
    gen = cfg.student.generation
    lines = [
        f"tutorloop: dry run: nothing is started, sent or written | run {run_dir} "
        f"({'existing' if stored else 'new'}) | task {cfg.data.task} | student {cfg.student.model}",
        f"exams: {gen.num_samples} sample(s) per pool question; evals: {len(cfg.student.eval_modes)} mode(s) "
        f"({', '.join(cfg.student.eval_modes)}) per test question; tailored rounds at their worst (every "
        f"examined question a mistake)",
    ]
    prices = ", ".join(
        f"{t.name} ({t.backend}) ${t.price.input_per_mtok:g} in / ${t.price.output_per_mtok:g} out"
        for t in cfg.teacher.teachers
    )
    todo = [r for r in rounds if r.status != "done"]
    worst = sum(r.max_cost_usd for r in todo)
    lines.append(
        f"teacher: at most {sum(r.teacher_requests for r in todo)} requests, "
        f"{sum(r.tokens_in for r in todo)} tokens in, {sum(r.max_tokens_out for r in todo)} tokens out, "
        f"${worst:.4f} for the rounds still to run (prices per million tokens: {prices})"
    )
    spent = stored.spent_usd if stored else 0.0
    budget = cfg.teacher.max_cost_usd
    if budget is not None:
        verdict = "fits" if spent + worst <= budget else "may be reached: sending stops there"
        lines.append(f"budget teacher.max_cost_usd ${budget:.4f}: ${spent:.4f} spent + ${worst:.4f} at most, {verdict}")
    if stored:
        done = ", ".join(str(r) for r in sorted(stored.done_rounds)) or "none"
        lines.append(f"stored: rounds done {done}; {stored.answers} teacher answers cached, ${spent:.4f} spent")
    return lines


def dry_run(cfg: Config, run_dir: Path) -> str:
    """The text `tutorloop run --dry-run` prints."""
    _check_recordings(cfg)
    stored = read_stored(run_dir)
    rounds = plan_run(cfg, stored)
    from tutorloop.loop.cli import format_table

    table = pa.Table.from_pylist([dict(asdict(r), max_cost_usd=round(r.max_cost_usd, 4)) for r in rounds])
    return "\n".join(describe_plan(cfg, run_dir, rounds, stored) + [format_table(table)])


def _check_recordings(cfg: Config) -> None:
    """A replay teacher's own recording is read now, so a bad file or line stops the dry run with one line."""
    from tutorloop.actors.teacher.replay import load_recording

    for teacher in cfg.teacher.teachers:
        if teacher.recording:
            load_recording(teacher.recording)
