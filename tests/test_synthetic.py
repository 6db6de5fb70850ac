"""Synthetic arithmetic problems: determinism, correctness of gold steps, rationale parsing, splits."""

from __future__ import annotations

import pytest

from tutorloop.loop.core.answers import answers_match, extract_answer
from tutorloop.loop.core.config import DataSection, SyntheticSection
from tutorloop.loop.core.datasets import load_examples
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.student_prompt import student_target
from tutorloop.loop.core.synthetic import (
    apply_op,
    generate_problems,
    parse_rationale_steps,
    reworded_problems,
    solve_steps,
    step_sentence,
)


def _key(ex) -> tuple:
    return tuple((s["op"], s["a"], s["b"]) for s in ex.meta["steps"])


def test_deterministic_given_seed() -> None:
    a = generate_problems(100, seed=3, min_steps=1, max_steps=3, max_value=20)
    b = generate_problems(100, seed=3, min_steps=1, max_steps=3, max_value=20)
    assert [(x.question, x.answer, x.rationale, x.meta) for x in a] == [
        (x.question, x.answer, x.rationale, x.meta) for x in b
    ]
    c = generate_problems(100, seed=4, min_steps=1, max_steps=3, max_value=20)
    assert [x.question for x in a] != [x.question for x in c]


def test_answers_equal_evaluated_steps() -> None:
    problems = generate_problems(300, seed=1, min_steps=1, max_steps=4, max_value=30, allow_mul=True)
    ops_seen = set()
    for ex in problems:
        steps = ex.meta["steps"]
        assert 1 <= len(steps) <= 4 and ex.answer_type == "number" and ex.dataset == "synthetic"
        value = steps[0]["a"]
        assert 1 <= value <= 30
        for step in steps:
            assert step["a"] == value and 1 <= step["b"] <= 30
            value = apply_op(step["op"], value, step["b"])
            assert step["result"] == value >= 0  # never below zero
            ops_seen.add(step["op"])
        assert ex.answer == str(value)
        # every operand and the start value appear in the question
        assert str(steps[0]["a"]) in ex.question and all(str(s["b"]) in ex.question for s in steps)
    assert ops_seen == {"+", "-", "*"}
    assert "*" not in {s["op"] for ex in generate_problems(200, 1, 1, 4, 30) for s in ex.meta["steps"]}


def test_rationale_round_trips_through_parser() -> None:
    for ex in generate_problems(200, seed=7, min_steps=1, max_steps=5, max_value=50, allow_mul=True):
        parsed = parse_rationale_steps(ex.rationale)
        assert parsed == [(s["a"], s["op"], s["b"], s["result"]) for s in ex.meta["steps"]]
        gold_lines = solve_steps(ex.meta["steps"])
        assert " ".join(gold_lines) == ex.rationale
        assert len(gold_lines) == len(ex.meta["steps"])  # one sentence per step
        # the student's training target grades as right with the shared extractor
        target = student_target("explain", ex.answer, ex.rationale)
        assert answers_match(extract_answer(target, "number"), ex.answer, "number")


def test_solve_steps_recomputes_wrong_results() -> None:
    steps = [{"op": "+", "a": 3, "b": 4, "result": 8}, {"op": "-", "a": 8, "b": 2, "result": 6}]
    assert solve_steps(steps) == ["Add 4: 3 + 4 = 7.", "Take away 2: 7 - 2 = 5."]
    assert step_sentence("*", 5, 3, 15) == "Multiply by 3: 5 * 3 = 15."
    assert solve_steps([]) == []


def test_parse_student_rationales() -> None:
    text = "Add 4: 3 + 4 = 8. Take away 2: 8 - 2 = 6. Then 6 x 2 = 12 and 12 × 1 = 12, so 5 -3 = 2."
    assert parse_rationale_steps(text) == [
        (3, "+", 4, 8),
        (8, "-", 2, 6),
        (6, "*", 2, 12),
        (12, "*", 1, 12),
        (5, "-", 3, 2),
    ]
    assert parse_rationale_steps("I think it is 7.") == []
    assert parse_rationale_steps("2 - 5 = -3") == [(2, "-", 5, -3)]


def test_train_and_test_never_overlap() -> None:
    # A small problem space (one step, numbers up to 5) makes collisions certain if splits leaked.
    train = generate_problems(300, seed=0, min_steps=1, max_steps=1, max_value=5, split="train")
    test = generate_problems(300, seed=0, min_steps=1, max_steps=1, max_value=5, split="test")
    assert not {_key(x) for x in train} & {_key(x) for x in test}
    assert {x.id for x in test} == {f"synthetic/test/{i}" for i in range(300)}

    cfg = DataSection(task="synthetic", synthetic=SyntheticSection(train_size=120, test_size=40, max_steps=3))
    train, test = load_examples(cfg, "train"), load_examples(cfg, "test")
    assert len(train) == 120 and len(test) == 40
    assert not {_key(x) for x in train} & {_key(x) for x in test}
    assert not {x.question for x in train} & {x.question for x in test}
    assert [x.id for x in load_examples(cfg, "train")] == [x.id for x in train]


def test_reworded_test_asks_the_pools_chains_in_new_words() -> None:
    cfg = DataSection(
        task="synthetic",
        synthetic=SyntheticSection(train_size=128, test_size=200, min_steps=1, max_steps=1, test_problems="reworded"),
    )
    pool, test = load_examples(cfg, "train"), load_examples(cfg, "test")
    assert len(test) == 200 and {x.id for x in test} == {f"synthetic/test/{i}" for i in range(200)}
    # the pool is the one the chain-split test would train on: only the test changes
    assert [x.question for x in pool] == [
        x.question
        for x in load_examples(
            DataSection(task="synthetic", synthetic=SyntheticSection(train_size=128, min_steps=1, max_steps=1)), "train"
        )
    ]
    pool_chains = {_key(x) for x in pool}
    assert {_key(x) for x in test} <= pool_chains
    assert len({_key(x) for x in test}) > len(pool_chains) // 2  # not a handful of chains asked over and over
    assert not {x.question for x in test} & {x.question for x in pool}
    for ex in test:
        assert ex.split == "test" and ex.rationale == " ".join(solve_steps(ex.meta["steps"]))
        assert answers_match(extract_answer(ex.rationale, "number"), ex.answer, "number")
    assert [x.question for x in reworded_problems(pool, 200, seed=0)] == [x.question for x in test]
    assert [x.question for x in reworded_problems(pool, 200, seed=1)] != [x.question for x in test]


def test_reworded_test_needs_a_wording_the_pool_has_not_used() -> None:
    with pytest.raises(ConfigError, match="needs a non-empty training pool"):
        reworded_problems([], 5, seed=0)
    two_chains = generate_problems(400, seed=0, min_steps=1, max_steps=1, max_value=1)
    every_wording = {x.question: x for x in two_chains}  # 1 + 1 and 1 - 1, each in all 36 wordings
    assert len(every_wording) == 72
    with pytest.raises(ConfigError, match="asks its chains in every wording"):
        reworded_problems(list(every_wording.values()), 1, seed=0)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="split must be"):
        generate_problems(1, 0, 1, 1, 9, split="dev")
    with pytest.raises(ValueError, match="bad synthetic settings"):
        generate_problems(1, 0, 3, 2, 9)
    with pytest.raises(ConfigError, match="data.synthetic: too few test problems"):
        generate_problems(5, 0, 1, 1, 1, split="test")  # 1 + 1 and 1 - 1: no test chain exists
