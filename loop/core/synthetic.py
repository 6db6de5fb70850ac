"""Synthetic multi-step arithmetic word problems with gold step-by-step rationales.

Seeded and of any size; used by tests (a tiny from-scratch student can learn it) and by the
program teacher, which re-solves a problem from `Example.meta["steps"]` and finds the first wrong
step of a student's rationale with `parse_rationale_steps`.

Problem:   "Tom has 3 apples. He gets 4 more. Then he gives away 2. How many apples does Tom have now?"
Rationale: "Add 4: 3 + 4 = 7. Take away 2: 7 - 2 = 5."   (one sentence per step, always this form)

Train and test never share a problem: every step chain is assigned to one split by a hash of its
numbers, so no seed or size can leak a test problem into training. `reworded_problems` builds the other
kind of test: the pool's own step chains asked in new words, never a pool question word for word.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import ConfigError

DATASET = "synthetic"
TEST_SHARE = 5  # one step chain in TEST_SHARE belongs to the test split

_PEOPLE = [("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Mia", "she"), ("Sam", "he"), ("Lea", "she")]
_THINGS = ["apples", "marbles", "coins", "books", "stickers", "pens"]
OP_PHRASES = {"+": "gets {b} more", "-": "gives away {b}", "*": "gets {b} times as many"}
OP_WORDS = {"+": "Add", "-": "Take away", "*": "Multiply by"}
_STEP = re.compile(r"(-?\d+)\s*([+\-*x×])\s*(-?\d+)\s*=\s*(-?\d+)")


def apply_op(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operation {op!r}")


def step_sentence(op: str, a: int, b: int, result: int) -> str:
    """The rationale sentence of one step, e.g. 'Add 4: 3 + 4 = 7.'"""
    return f"{OP_WORDS[op]} {b}: {a} {op} {b} = {result}."


def solve_steps(meta_steps: list[dict[str, Any]]) -> list[str]:
    """Correct rationale sentences for a chain of steps, recomputed from the start value and the operands.

    Stored results are ignored: each step starts from the previous correct result.
    """
    if not meta_steps:
        return []
    value = int(meta_steps[0]["a"])
    lines = []
    for step in meta_steps:
        result = apply_op(step["op"], value, int(step["b"]))
        lines.append(step_sentence(step["op"], value, int(step["b"]), result))
        value = result
    return lines


def parse_rationale_steps(text: str) -> list[tuple[int, str, int, int]]:
    """Every 'a op b = c' in a rationale, in order, as (a, op, b, c); 'x' and '×' read as '*'."""
    steps = []
    for a, op, b, c in _STEP.findall(text):
        steps.append((int(a), "*" if op in "x×" else op, int(b), int(c)))
    return steps


def _split_of(start: int, ops: list[tuple[str, int]]) -> str:
    key = f"{start}|" + "|".join(f"{op}{b}" for op, b in ops)
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % TEST_SHARE
    return "test" if bucket == 0 else "train"


def _random_chain(
    rng: random.Random, n_steps: int, max_value: int, allow_mul: bool
) -> tuple[int, list[tuple[str, int]]]:
    start = rng.randint(1, max_value)
    value, ops = start, []
    for _ in range(n_steps):
        choices = ["+", "-"] + (["*"] if allow_mul else [])
        if value == 0:
            choices.remove("-")  # nothing left to take away
        op = rng.choice(choices)
        if op == "-":
            b = rng.randint(1, min(value, max_value))  # results never go below zero
        elif op == "*":
            b = rng.randint(2, max(2, min(max_value, 5)))
        else:
            b = rng.randint(1, max_value)
        value = apply_op(op, value, b)
        ops.append((op, b))
    return start, ops


def _question(
    rng: random.Random, start: int, ops: list[tuple[str, int]], wording: tuple[tuple[str, str], str] | None = None
) -> str:
    (name, pronoun), things = wording or (rng.choice(_PEOPLE), rng.choice(_THINGS))
    sentences = [f"{name} has {start} {things}."]
    for i, (op, b) in enumerate(ops):
        phrase = OP_PHRASES[op].format(b=b)
        sentences.append(f"{pronoun.capitalize()} {phrase}." if i == 0 else f"Then {pronoun} {phrase}.")
    sentences.append(f"How many {things} does {name} have now?")
    return " ".join(sentences)


def generate_problems(
    n: int, seed: int, min_steps: int, max_steps: int, max_value: int, split: str = "train", allow_mul: bool = False
) -> list[Example]:
    """`n` problems of `split` ("train" or "test"), deterministic given the arguments.

    Operands are 1..max_value (a multiplier 2..min(max_value, 5)), every intermediate result is >= 0.
    Problems may repeat within a split when the problem space is small; they never cross splits.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n < 0 or min_steps < 1 or max_steps < min_steps or max_value < 1:
        raise ConfigError(
            f"data.synthetic: bad synthetic settings: n={n}, steps {min_steps}..{max_steps}, max_value={max_value}"
        )
    rng = random.Random(f"{DATASET}/{split}/{seed}")
    examples: list[Example] = []
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 1000 * n + 1000:
            raise ConfigError(
                f"data.synthetic: too few {split} problems with steps {min_steps}..{max_steps} "
                f"and max_value {max_value}; widen them"
            )
        start, ops = _random_chain(rng, rng.randint(min_steps, max_steps), max_value, allow_mul)
        if _split_of(start, ops) != split:
            continue
        examples.append(_example(f"{DATASET}/{split}/{len(examples)}", split, _question(rng, start, ops), start, ops))
    return examples


def reworded_problems(pool: list[Example], n: int, seed: int) -> list[Example]:
    """`n` test problems that ask the step chains of `pool` in other words (person and things).

    Chains are drawn from the pool's questions, so a chain the pool repeats is tested as often; no
    problem repeats a pool question word for word. Such a test measures whether the student fixed
    the problems it was taught, where the chain-split test measures transfer to unseen chains.
    """
    if not pool:
        raise ConfigError("data.synthetic: a reworded test needs a non-empty training pool")
    rng = random.Random(f"{DATASET}/reworded/{seed}")
    pool_questions = {e.question for e in pool}
    wordings = [(person, things) for person in _PEOPLE for things in _THINGS]
    examples: list[Example] = []
    for _ in range(1000 * n + 1000):
        if len(examples) == n:
            return examples
        steps = rng.choice(pool).meta["steps"]
        start, ops = int(steps[0]["a"]), [(s["op"], int(s["b"])) for s in steps]
        fresh = [w for w in wordings if _question(rng, start, ops, w) not in pool_questions]
        if not fresh:  # the pool asks this chain in every wording already
            continue
        examples.append(
            _example(
                f"{DATASET}/test/{len(examples)}", "test", _question(rng, start, ops, rng.choice(fresh)), start, ops
            )
        )
    if len(examples) < n:
        raise ConfigError("data.synthetic: the pool asks its chains in every wording; no reworded test is left")
    return examples


def _example(id_: str, split: str, question: str, start: int, ops: list[tuple[str, int]]) -> Example:
    steps, value = [], start
    for op, b in ops:
        result = apply_op(op, value, b)
        steps.append({"op": op, "a": value, "b": b, "result": result})
        value = result
    return Example(
        id=id_,
        dataset=DATASET,
        split=split,
        question=question,
        answer=str(value),
        answer_type="number",
        rationale=" ".join(solve_steps(steps)),
        meta={"steps": steps, "category": OP_WORDS[ops[0][0]]},
    )
