"""Issue 41's method options: the gold answer shown to the teacher, the equation and reaches-answer checks, matched
accepted budgets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from shared_run import cli, shared_quick_run
from teacher_server import TeacherServer

from tutorloop.actors.teacher import LocalTeacherPool
from tutorloop.loop.core.answers import reasoning_reaches_answer
from tutorloop.loop.core.calculator import false_equations
from tutorloop.loop.core.config import TrainingSection, config_from_dict
from tutorloop.loop.core.datasets import Example, load_examples
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.synthetic import generate_problems
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.curriculum import random_selection, teaching_targets
from tutorloop.loop.experiment import Experiment, PlannedRun, execute_run
from tutorloop.loop.experiment_spec import base_config, canonical, load_spec
from tutorloop.loop.round_plan import derive_seed
from tutorloop.loop.strategies import PromptBuilder, load_templates
from tutorloop.loop.teaching import TeachingSession, teach_until_accepted
from tutorloop.loop.teaching_job import JobRun, TeachingJob
from tutorloop.loop.teaching_plan import plan_jobs
from tutorloop.store.experiment_store import ExperimentStore
from tutorloop.store.query import fetch_rows

REPO = Path(__file__).resolve().parents[1]
QUESTION = Example("multiarith/train/1", "multiarith", "train", "Tom has 3 bags of 4 apples. How many apples?", "12")
WRONG_ATTEMPT = {"output": " 3 + 4 = 7.\nTherefore, the answer is 7.", "extracted": "7", "correct": False}


def openai_teacher(base_url: str = "http://127.0.0.1:9/v1", **extra: object) -> TeacherSection:
    teacher = {"name": "t", "backend": "openai", "model": "program", "base_url": base_url}
    return TeacherSection.model_validate({"teachers": [teacher], "retry_backoff_s": 0.02, "timeout_s": 2.0, **extra})


def job_run(cfg: TeacherSection, strategy: str = "tailored") -> JobRun:
    mistake = WRONG_ATTEMPT if strategy == "tailored" else None
    job = TeachingJob(QUESTION, cfg.teachers[0], strategy, 0, 1, mistake=mistake)
    return JobRun(job, PromptBuilder(load_templates(cfg.prompts_dir)), cfg)


def test_tailored_prompt_shows_the_gold_answer_only_when_asked() -> None:
    hidden = job_run(openai_teacher()).first_request()
    shown = job_run(openai_teacher(tailored_show_answer=True)).first_request()
    assert "12" not in hidden.text() and "Student's reasoning:" in hidden.text()
    assert "The correct answer is 12." in shown.text() and "Student's reasoning:" in shown.text()
    assert shown.request_hash != hidden.request_hash  # a cached hidden-answer reply is not reused


def test_random_arm_shows_the_answer_when_the_tailored_arm_does() -> None:
    pool = generate_problems(8, seed=3, min_steps=2, max_steps=2, max_value=9)
    examples = {e.id: e for e in pool}
    mistakes = {pool[0].id: [dict(WRONG_ATTEMPT, example_id=pool[0].id, sample_index=0)]}
    training = TrainingSection(selection="random")
    plain = teaching_targets(pool, examples, mistakes, training, openai_teacher(), seed=1)
    shown = teaching_targets(pool, examples, mistakes, training, openai_teacher(tailored_show_answer=True), seed=1)
    assert plain.strategies == ["zero_shot_cot"]
    assert shown.strategies == ["rp"]  # rationalization: the teacher's own solution, told the gold answer
    assert shown.mistakes is None and len(shown.examples) == len(plain.examples) == 1


def test_false_equations_with_thousands_separators_decimals_and_rounding() -> None:
    assert false_equations("She pays 1,000 + 250 = 1,250 dollars, then 2.5 * 4 = 10.") == []
    assert false_equations("100 / 3 = 33.33 each, and 2 / 3 = 0.67, and $3 x 4 = $12.") == []
    assert false_equations("He has 3 + 4 = 8 apples.") == ["3 + 4 = 8"]
    assert false_equations("1,000 - 1 = 998 and 2.5 * 2 = 5.5") == ["1,000 - 1 = 998", "2.5 * 2 = 5.5"]
    assert false_equations("100 / 3 = 34") == ["100 / 3 = 34"]  # beyond rounding
    # Not results: more arithmetic, a variable or a percent after "=", and float noise is no error.
    assert false_equations("3*8+5*8=24+40=64, so 15 + 48 = 12 + 2x, and 10 / 200 = 5%.") == []
    assert false_equations("0.0833333333333333 + 0.4166666666666667 = 0.5000000000000001") == []


def answered(run: JobRun, response: str) -> dict:
    request = run.first_request()
    record = {"request_hash": request.request_hash, "status": "ok", "response": response, "error": None}
    assert run.advance(request, record) is None
    return run.result


def test_equation_check_rejects_a_false_equation_and_keeps_a_true_one() -> None:
    false_reply = "3 x 4 = 13 apples, so 12 in all.\nTherefore, the answer is 12."
    true_reply = "3 x 4 = 12 apples in all.\nTherefore, the answer is 12."
    unchecked = answered(job_run(openai_teacher(), "rp"), false_reply)
    assert unchecked["accepted"], unchecked
    checked = answered(job_run(openai_teacher(check_equations=True), "rp"), false_reply)
    assert not checked["accepted"] and checked["reject_reason"] == "false_equation"
    assert checked["rationale"]  # stored graded, so teacher_yield shows what was rejected
    assert answered(job_run(openai_teacher(check_equations=True), "rp"), true_reply)["accepted"]


def test_reasoning_reaches_answer_on_numbers_and_coin_states() -> None:
    assert reasoning_reaches_answer("She pays 1,000 + 250 = 1,250 dollars.", "1250", "number", "multiarith")
    assert reasoning_reaches_answer("Each gets 7.50 dollars.", "7.5", "number", "multiarith")
    # The answer stated after reasoning that ends elsewhere: "38 - 38 = 0" -> 7.
    assert not reasoning_reaches_answer("The bad carrots are 38 - 38 = 0.", "7", "number", "multiarith")
    assert not reasoning_reaches_answer("He has 17 apples, so 1 left.", "7", "number", "multiarith")
    flipped = "Ana flips the coin, so it goes from heads to tails."
    assert reasoning_reaches_answer(flipped, "no", "yesno", "coin_flip")
    assert not reasoning_reaches_answer(flipped, "yes", "yesno", "coin_flip")
    # A negated state is the other one; a reasoning naming no state cannot be checked and passes.
    assert reasoning_reaches_answer("Bo flips it twice, so the coin is not tails up.", "yes", "yesno", "coin_flip")
    assert reasoning_reaches_answer("Bo flips it twice.", "no", "yesno", "coin_flip")
    assert reasoning_reaches_answer("Bats are mammals.", "no", "yesno", "strategy_qa")  # no state to read


def test_reaches_answer_check_rejects_an_answer_the_reasoning_does_not_reach() -> None:
    copied = "Mistake: he added.\nCorrect reasoning: 3 + 4 = 7 apples.\nTherefore, the answer is 12."
    reached = "Mistake: he added.\nCorrect reasoning: 3 x 4 = 12 apples.\nTherefore, the answer is 12."
    unchecked = answered(job_run(openai_teacher()), copied)
    assert unchecked["accepted"], unchecked
    checked = answered(job_run(openai_teacher(check_reaches_answer=True)), copied)
    assert not checked["accepted"] and checked["reject_reason"] == "answer_not_reached"
    assert checked["feedback"] == "he added."  # stored graded, like any rejected correction
    assert answered(job_run(openai_teacher(check_reaches_answer=True)), reached)["accepted"]


def test_accepted_budget_asks_until_as_many_rationales_are_accepted(teacher_server: TeacherServer) -> None:
    pool = generate_problems(12, seed=7, min_steps=2, max_steps=3, max_value=9)
    cfg = openai_teacher(teacher_server.base_url, retry_unusable=False)
    for example in pool[:3]:  # the first questions drawn get an empty reply: rejected, so more are drawn
        teacher_server.rule(example.question, "empty_text")
    stored: dict[str, dict] = {}

    def run(jobs: list[TeachingJob]):
        with LocalTeacherPool(cfg) as pool_:
            return TeachingSession(
                cfg,
                jobs,
                lambda keys: {k: stored[k] for k in keys if k in stored},
                pool_,
                lambda records: stored.update({r["request_hash"]: r for r in records}),
                progress=False,
            ).run()

    outcome, asked = teach_until_accepted(plan_jobs(pool, cfg, 1, strategies=["rp"]), 5, run)
    accepted = [r for r in outcome.rationales if r["accepted"]]
    assert len(accepted) == 5
    assert asked == [e.id for e in pool[:8]]  # the 3 rejected, then 5 accepted, in draw order
    assert sum(r["reject_reason"] == "empty" for r in outcome.rationales) == 3
    assert outcome.calls_sent == len(outcome.rationales) == 8

    short, asked_all = teach_until_accepted(plan_jobs(pool[:4], cfg, 1, strategies=["rp"]), 5, run)
    assert asked_all == [e.id for e in pool[:4]]  # the pool ran out before the budget
    assert sum(r["accepted"] for r in short.rationales) == 1


def test_random_arm_with_accepted_budget_in_a_run(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    parent = shared_quick_run(tmp_path_factory)
    fork = tmp_path / "matched"
    overrides = ["training.selection=random", "training.accepted_budget=7", "training.exam_size=20", "run.rounds=1"]
    result = cli(
        "fork", str(parent), "--after-round", "0", "--run-dir", str(fork), *sum([["--set", o] for o in overrides], [])
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "accepted budget 7: 7 accepted of 7 questions asked" in result.stdout

    cfg = config_from_dict(json.loads(fetch_rows(fork, "SELECT config FROM runs")[0]["config"]))
    rows = fetch_rows(fork, "SELECT example_id, accepted FROM rationales WHERE round = 1")
    drawn = random_selection(load_examples(cfg.data, "train"), 7, derive_seed(cfg.run.seed, 1, "teach"))
    assert sorted(r["example_id"] for r in rows) == sorted(drawn) and all(r["accepted"] for r in rows)
    answers = fetch_rows(
        fork, "SELECT count(*) AS n FROM samples WHERE round = 1 AND task = 'answer' AND source = 'gold'"
    )
    assert answers[0]["n"] == 7  # only the questions asked are taught


def test_matched_arm_gets_as_many_accepted_rationales_as_its_source_arm(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """`match_accepted: {random: tailored}`: the random arm's round asks until it has as many accepted rationales
    as the seed's tailored arm had in that round (the shared quick run stands in for both prefix and tailored)."""
    shared = shared_quick_run(tmp_path_factory)
    spec = yaml.safe_load((REPO / "configs/experiments/quick.yaml").read_text())
    spec.update(base=str(REPO / "configs/quick.yaml"), seeds=[0], match_accepted={"random": "tailored"})
    # The shared run corrected each mistake twice (48 accepted of 24 questions): the random arm may ask 48.
    spec["arms"]["random"] += ["training.exam_size=20", "training.max_mistakes=48"]
    spec_path = tmp_path / "matched.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    loaded = load_spec(spec_path)
    base = base_config(loaded, spec_path)
    ExperimentStore(tmp_path / "exp").freeze(*canonical(loaded, base), str(spec_path))
    experiment = Experiment(tmp_path / "exp", loaded, base.to_dict())
    for arm in ("prefix", "tailored"):
        (tmp_path / "exp" / "seed-0").mkdir(parents=True, exist_ok=True)
        (tmp_path / "exp" / "seed-0" / arm).symlink_to(shared)
    source = fetch_rows(shared, "SELECT count(*) AS n FROM rationales WHERE round = 1 AND accepted")[0]["n"]
    assert source >= 1

    assert execute_run(experiment, PlannedRun(0, "random")) == 0
    random_arm = experiment.run_dir(PlannedRun(0, "random"))
    cfg = config_from_dict(json.loads(fetch_rows(random_arm, "SELECT config FROM runs")[0]["config"]))
    assert cfg.training.selection == "random" and cfg.training.accepted_budget == [source]
    rows = fetch_rows(random_arm, "SELECT count(*) FILTER (WHERE accepted) AS n FROM rationales WHERE round = 1")
    assert rows[0]["n"] == source  # matched in accepted rationales, not in calls


def test_match_accepted_names_arms_that_run_in_order(tmp_path: Path) -> None:
    spec = yaml.safe_load((REPO / "configs/experiments/quick.yaml").read_text())
    for match, message in (
        ({"random": "nope"}, "key 'match_accepted.random': 'nope' is not an arm"),
        ({"tailored": "random"}, "'random' must come before 'tailored' in arms"),
    ):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec, "match_accepted": match}, sort_keys=False))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_spec(tmp_path / "bad.yaml")
