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
from tutorloop.loop.curriculum import random_selection, teaching_targets
from tutorloop.loop.core.datasets import Example, drop_test_duplicates, load_examples
from tutorloop.loop.round_plan import BASELINE, CORE, derive_seed, planned_rounds, round_kind
from tutorloop.loop.run_teachers import round_teachers
from tutorloop.loop.teaching import TeachingJob, estimate_cost, plan_round_jobs
from tutorloop.store.query import HISTORY_FILE, fetch_rows


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
    done = {r["round"] for r in fetch_rows(run_dir, "SELECT round FROM rounds WHERE status = 'done'")}
    hashes = {r["request_hash"] for r in fetch_rows(run_dir, "SELECT request_hash FROM teacher_calls")}
    spent = fetch_rows(run_dir, "SELECT coalesce(sum(cost_usd), 0) AS usd FROM teacher_calls")[0]["usd"]
    return Stored(done, len(hashes), float(spent), hashes)


def _examined(cfg: Config, pool: list[Example], round_: int) -> list[Example]:
    """The pool questions a tailored round's exam draws (the engine's draw, training.exam_size)."""
    size = cfg.training.exam_size
    if size is None or size >= len(pool):
        return pool
    by_id = {e.id: e for e in pool}
    return [by_id[i] for i in random_selection(pool, size, derive_seed(cfg.run.seed, round_, "exam-draw"))]


def _jobs(cfg: Config, pool: list[Example], round_: int) -> tuple[list[Example], list[TeachingJob], int]:
    """The round's worst-case teaching jobs: (examined questions, jobs, questions taught)."""
    kind, seed = round_kind(round_), derive_seed(cfg.run.seed, round_, "teach")
    examined, mistakes = [], None
    if kind != CORE:
        examined = _examined(cfg, pool, round_)
        wrong = "x" * (4 * cfg.student.generation.max_new_tokens)  # about 4 characters per token
        mistakes = {e.id: [{"example_id": e.id, "sample_index": 0, "correct": False, "output": wrong,
                            "extracted": None}] for e in examined}
    examples = {e.id: e for e in pool}
    teachers = round_teachers(cfg.teacher, kind)  # as the engine asks: only this kind of round's teachers
    targets = teaching_targets(pool, examples, mistakes, cfg.training, teachers, seed)
    if not targets.ask_teacher:
        return examined, [], len(targets.examples)
    jobs = plan_round_jobs(targets, teachers, round_)
    return examined, jobs, len(targets.examples)


def _first_hashes(jobs: list[TeachingJob], cfg: Config) -> list[str]:
    from tutorloop.actors.teacher.sources import AnswerSources
    from tutorloop.loop.strategies import PromptBuilder, load_templates
    from tutorloop.loop.teaching import _JobRun  # the request a job sends first, exactly as a run builds it

    builder = PromptBuilder(load_templates(cfg.teacher.prompts_dir))
    sources = AnswerSources(cfg.teacher, cfg.data.data_dir)
    return [_JobRun(job, builder, cfg.teacher, sources).first_request().request_hash for job in jobs]


def plan_run(cfg: Config, stored: Stored | None) -> list[RoundEstimate]:
    """Every round the config plans, at its worst case (see the module docstring)."""
    test = load_examples(cfg.data, "test")
    pool, _ = drop_test_duplicates(load_examples(cfg.data, "train"), test)  # as the engine does
    rounds = []
    for round_ in planned_rounds(cfg.run):
        kind = round_kind(round_)
        examined, jobs, taught = ([], [], 0) if kind == BASELINE else _jobs(cfg, pool, round_)
        cost = estimate_cost(jobs, cfg.teacher)
        cached = None
        if kind == CORE:
            cached = len(set(_first_hashes(jobs, cfg)) & stored.hashes) if stored else 0
        rounds.append(RoundEstimate(
            round_, kind, "done" if stored and round_ in stored.done_rounds else "planned", len(examined), taught,
            len(test), cost["requests"], cost["tokens_in"], cost["max_tokens_out"], cost["max_cost_usd"], cached))
    return rounds


def describe_plan(cfg: Config, run_dir: Path, rounds: list[RoundEstimate], stored: Stored | None) -> list[str]:
    """The lines around the plan's table: what runs, the prices, the budget and what is stored."""
    gen = cfg.student.generation
    lines = [f"tutorloop: dry run: nothing is started, sent or written | run {run_dir} "
             f"({'existing' if stored else 'new'}) | task {cfg.data.task} | student {cfg.student.model}",
             f"exams: {gen.num_samples} sample(s) per pool question; evals: {len(cfg.student.eval_modes)} mode(s) "
             f"({', '.join(cfg.student.eval_modes)}) per test question; tailored rounds at their worst (every "
             f"examined question a mistake)"]
    prices = ", ".join(f"{t.name} ({t.backend}) ${t.price.input_per_mtok:g} in / ${t.price.output_per_mtok:g} out"
                       for t in cfg.teacher.teachers)
    todo = [r for r in rounds if r.status != "done"]
    worst = sum(r.max_cost_usd for r in todo)
    lines.append(f"teacher: at most {sum(r.teacher_requests for r in todo)} requests, "
                 f"{sum(r.tokens_in for r in todo)} tokens in, {sum(r.max_tokens_out for r in todo)} tokens out, "
                 f"${worst:.4f} for the rounds still to run (prices per million tokens: {prices})")
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
