"""Mistake selection, multi-task samples, contrast pairs and replay: the pure choices of a round."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tutorloop.loop.core.config import TrainingSection
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.student_prompt import ANSWER_TRIGGER, student_target
from tutorloop.loop.core.synthetic import generate_problems
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection
from tutorloop.loop.curriculum import (
    build_contrast_pairs,
    build_samples,
    category_balanced_selection,
    find_mistakes,
    order_mistakes,
    random_selection,
    replay_samples,
    teaching_targets,
)


def attempt(example_id: str, index: int, correct: bool, output: str = " wrong\nTherefore, the answer is 1.") -> dict:
    return {
        "example_id": example_id,
        "sample_index": index,
        "mode": "explain",
        "output": output,
        "extracted": "1",
        "correct": correct,
    }


def rationale(
    example_id: str,
    accepted: bool = True,
    teacher: str = "t",
    strategy: str = "cote",
    text: str = "Add 4: 3 + 4 = 7.",
    task: str = "explain",
) -> dict:
    return {
        "round": 1,
        "teacher": teacher,
        "strategy": strategy,
        "example_id": example_id,
        "sample_index": 0,
        "rationale": text,
        "extracted": "7",
        "accepted": accepted,
        "reject_reason": None,
        "feedback": None,
        "request_hash": "h",
        "task": task,
    }


def test_find_and_order_mistakes() -> None:
    attempts = [
        attempt("a", 0, True),
        attempt("a", 1, False),
        attempt("b", 0, False),
        attempt("b", 1, False),
        attempt("c", 0, True),
        attempt("c", 1, True),
    ]
    mistakes = find_mistakes(attempts)
    assert set(mistakes) == {"a", "b"}
    assert mistakes["a"][0]["correct"] is False  # wrong samples first: they go into the teacher prompt
    assert order_mistakes(mistakes, "hardest", None, 0) == ["b", "a"]
    assert order_mistakes(mistakes, "hardest", 1, 0) == ["b"]
    assert order_mistakes(mistakes, "pool", None, 0) == ["a", "b"]
    assert sorted(order_mistakes(mistakes, "random", None, 3)) == ["a", "b"]


def test_random_selection_is_seeded() -> None:
    pool = generate_problems(30, 0, 1, 2, 9)
    first = random_selection(pool, 5, seed=1)
    assert first == random_selection(pool, 5, seed=1)
    assert first != random_selection(pool, 5, seed=2)
    assert len(set(first)) == 5


def test_teaching_targets_per_kind_of_round() -> None:
    pool = generate_problems(10, 0, 1, 2, 9)
    examples = {e.id: e for e in pool}
    ids = sorted(examples)
    mistakes = find_mistakes(
        [
            attempt(ids[0], 0, False),
            attempt(ids[1], 0, True),
            attempt(ids[1], 1, False),
            attempt(ids[2], 0, False),
            attempt(ids[2], 1, False),
        ]
    )
    teacher = TeacherSection(teachers=[TeacherEndpoint(backend="program")], strategies=["cote"])
    training = TrainingSection(max_mistakes=2)
    # Round 0: the whole pool, as configured.
    core = teaching_targets(pool, examples, None, training, teacher, seed=0)
    assert (core.examples, core.strategies, core.mistakes, core.ask_teacher) == (pool, ["cote"], None, True)
    # A tailored round: its hardest mistakes first, up to max_mistakes, with the student's attempts.
    tailored = teaching_targets(pool, examples, mistakes, training, teacher, seed=0)
    # ids[2] has two wrong samples; ids[0] and ids[1] one each, ids[0] of one sample (the larger wrong share).
    assert [e.id for e in tailored.examples] == [ids[2], ids[0]]
    assert tailored.strategies == ["tailored"] and set(tailored.mistakes) == {ids[0], ids[2]}
    # A replay teacher cannot tailor: it re-explains.
    replay = TeacherSection(teachers=[TeacherEndpoint(backend="replay")], strategies=["zero_shot_cot"])
    assert teaching_targets(pool, examples, mistakes, training, replay, seed=0).strategies == ["zero_shot_cot"]
    # The ablation without tailoring: as many questions, drawn at random from the pool, taught as in round 0.
    drawn = teaching_targets(
        pool, examples, mistakes, TrainingSection(max_mistakes=2, selection="random"), teacher, seed=5
    )
    assert [e.id for e in drawn.examples] == random_selection(pool, 2, 5)
    assert (drawn.strategies, drawn.mistakes) == (["cote"], None)
    # Gold answers alone need no teacher.
    assert not teaching_targets(pool, examples, None, TrainingSection(tasks=["answer"]), teacher, 0).ask_teacher


def test_build_samples_multitask_and_weights() -> None:
    examples = {e.id: e for e in generate_problems(3, 0, 1, 1, 9)}
    ids = sorted(examples)
    rationales = [
        rationale(ids[0]),
        rationale(ids[0], teacher="u", task="u"),
        rationale(ids[1], accepted=False),
        rationale(ids[2], strategy="rp"),
    ]
    samples = build_samples(
        examples, rationales, ["answer", "explain", "rationalize"], {"t": 1.0, "u": 0.5}, taught=ids
    )
    by_task = {}
    for s in samples:
        by_task.setdefault(s["task"], []).append(s)
    # One answer sample per taught question (gold answers), also where the teacher's rationale was rejected.
    assert [s["example_id"] for s in by_task["answer"]] == ids
    assert len(by_task["explain"]) == 2 and len(by_task["u"]) == 1 and len(by_task["rationalize"]) == 1
    assert by_task["u"][0]["weight"] == 0.5 and by_task["u"][0]["input"].startswith("[explain:u]")
    assert all(ANSWER_TRIGGER in s["target"] for s in by_task["explain"])
    assert "Known answer" in by_task["rationalize"][0]["input"]
    assert all(s["example_id"] != ids[1] for s in samples if s["task"] != "answer")


def wrong(example_id: str, index: int, text: str, extracted: str | None = "1") -> dict:
    return dict(attempt(example_id, index, False, text), extracted=extracted)


def test_contrast_pairs_use_the_students_own_wrong_rationale() -> None:
    examples = {e.id: e for e in generate_problems(2, 0, 1, 1, 9)}
    a, b = sorted(examples)
    mistakes = {
        a: [wrong(a, 0, " my wrong work, so 1"), attempt(a, 1, True, " right work")],
        b: [wrong(b, 0, " bad, so 1")],
    }
    built = build_contrast_pairs(examples, [rationale(a), rationale(b)], mistakes, {})
    assert len(built.pairs) == 2 and built.without_positive == 0
    pa = next(p for p in built.pairs if p["example_id"] == a)
    assert pa["negative"] == " my wrong work, so 1" and pa["positive"] == " right work"
    assert pa["anchor"].startswith(" Add 4") and pa["input"].startswith("[explain]")
    pb = next(p for p in built.pairs if p["example_id"] == b)
    assert pb["positive"].startswith(" " + examples[b].rationale.split(".")[0])  # gold rationale fallback


def test_a_contrast_positive_is_never_the_anchor_nor_empty() -> None:
    # Rationales without a gold one (as in the recorded-teacher datasets), so only teacher and student
    # texts can be positives.
    examples = {e.id: replace(e, rationale=None) for e in generate_problems(4, 0, 1, 1, 9)}
    a, b, c, d = sorted(examples)
    anchor_text = "Add 4: 3 + 4 = 7."
    as_target = student_target("explain", examples[a].answer, anchor_text)
    mistakes = {
        # the student's correct sample repeats the anchor (spacing and case aside), another is empty
        a: [wrong(a, 0, " no, 1"), attempt(a, 1, True, "  " + as_target.upper() + " "), attempt(a, 2, True, " ")],
        # a second accepted teacher sample with the anchor's very text
        b: [wrong(b, 0, " no, 1")],
        # an earlier round's accepted rationale, different: a valid positive
        c: [wrong(c, 0, " no, 1")],
        # a second, different teacher sample: a valid positive
        d: [wrong(d, 0, " no, 1")],
    }
    rationales = [
        rationale(a, text=anchor_text),
        rationale(b, text=anchor_text),
        rationale(b, text=anchor_text),
        rationale(c, text=anchor_text),
        rationale(d, text=anchor_text),
        rationale(d, teacher="u", text="Four more than 3 is 7."),
    ]
    built = build_contrast_pairs(examples, rationales, mistakes, {c: [anchor_text, "3 and 4 make 7."]})
    assert sorted(p["example_id"] for p in built.pairs) == [c, d]
    assert built.without_positive == 2
    assert "contrast pairs: 2; 2 questions had no distinct correct rationale" in built.note()
    for pair in built.pairs:
        assert pair["positive"].strip() and " ".join(pair["positive"].split()) != " ".join(pair["anchor"].split())
    assert next(p for p in built.pairs if p["example_id"] == d)["positive"].startswith(" Four more than 3")


def test_contrast_negatives_state_a_wrong_answer_one_pair_each_capped() -> None:
    examples = {e.id: e for e in generate_problems(2, 0, 1, 1, 9)}
    a, b = sorted(examples)
    cut_off = wrong(a, 0, " First we take 3 and then we", extracted=None)  # ran out of tokens: no answer
    mistakes = {
        a: [cut_off, attempt(a, 1, True, " right work")],
        b: [
            wrong(b, i, text)
            for i, text in enumerate(
                [" one, so 1", " One,  so 1", " two, so 2", " three, so 3", " four, so 4", " five, so 5"]
            )
        ]
        + [attempt(b, 6, True, " right one"), attempt(b, 7, True, " right two")],
    }
    built = build_contrast_pairs(examples, [rationale(a), rationale(b)], mistakes, {}, max_per_question=3)
    assert built.without_negative == 1 and all(p["example_id"] == b for p in built.pairs)
    # " One,  so 1" repeats " one, so 1": one pair per unique wrong rationale, capped at 3
    assert [p["negative"] for p in built.pairs] == [" one, so 1", " two, so 2", " three, so 3"]
    # the positives in turn: the student's correct samples, then the gold rationale
    gold = student_target("explain", examples[b].answer, examples[b].rationale)
    assert [p["positive"] for p in built.pairs] == [" right one", " right two", gold]
    uncapped = build_contrast_pairs(examples, [rationale(b)], mistakes, {}, max_per_question=10)
    assert len(uncapped.pairs) == 5


def test_hardest_mistakes_have_the_most_wrong_samples() -> None:
    k = 4
    rows = [
        attempt(q, i, i >= wrong_count)
        for q, wrong_count in (("q1", 1), ("q2", 4), ("q3", 2), ("q4", 0))
        for i in range(k)
    ]
    mistakes = find_mistakes(rows)
    assert set(mistakes) == {"q1", "q2", "q3"}  # any wrong sample of the k makes a mistake
    assert order_mistakes(mistakes, "hardest", None, 0) == ["q2", "q3", "q1"]


def test_hardest_mistakes_break_ties_by_seed() -> None:
    # 40 questions with both samples wrong, 10 with one: the tied ones come first in a seeded order,
    # not in id order (which would teach the same few questions every round)
    rows = [attempt(f"q{n:02d}", i, n >= 40 and i == 1) for n in range(50) for i in range(2)]
    mistakes = find_mistakes(rows)
    first, again, other = (order_mistakes(mistakes, "hardest", None, seed) for seed in (1, 1, 2))
    assert first == again and first != other
    assert set(first[:40]) == {f"q{n:02d}" for n in range(40)} == set(other[:40])
    assert first[:10] != sorted(first[:10])
    limited = [set(order_mistakes(mistakes, "hardest", 10, seed)) for seed in range(4)]
    assert len(set.union(*limited)) > 20  # other seeds (rounds) teach other tied questions


def test_balanced_mistakes_take_each_gold_answer_in_turn() -> None:
    # Hardest first, the 6 "yes" mistakes (both samples wrong) would fill a cap of 4 alone: the student
    # under-predicts "yes", and a round of them only would teach it to answer "yes" to everything.
    yes = [f"y{n}" for n in range(6)]
    no = [f"n{n}" for n in range(4)]
    rows = [attempt(q, i, q in no and i == 1) for q in yes + no for i in range(2)]
    mistakes = find_mistakes(rows)
    answers = {q: "yes" for q in yes} | {q: "no" for q in no}
    hardest = order_mistakes(mistakes, "hardest", 4, seed=0)
    assert set(hardest) <= set(yes)
    balanced = order_mistakes(mistakes, "hardest", None, seed=0, answers=answers)
    assert [answers[q] for q in balanced[:8]].count("yes") == 4
    assert [answers[q] for q in balanced[8:]] == ["yes", "yes"]  # "no" has run out
    # within an answer the hardest order holds; the answers take turns in the order they first appear
    plain = order_mistakes(mistakes, "hardest", None, seed=0)
    for group in (yes, no):
        assert [q for q in balanced if q in group] == [q for q in plain if q in group]
    assert balanced[0] == plain[0] and balanced[1] == next(q for q in plain if q in no)
    # numeric answers that all differ keep the plain order
    distinct = {q: str(n) for n, q in enumerate(yes + no)}
    assert order_mistakes(mistakes, "hardest", None, 3, distinct) == order_mistakes(mistakes, "hardest", None, 3)


def test_teaching_targets_balance_gold_answers_when_asked() -> None:
    pool = [
        replace(e, answer="yes" if n < 6 else "no", answer_type="yesno")
        for n, e in enumerate(generate_problems(10, 0, 1, 1, 9))
    ]
    examples = {e.id: e for e in pool}
    rows = [attempt(e.id, i, e.answer == "no" and i == 1) for e in pool for i in range(2)]
    mistakes = find_mistakes(rows)
    teacher = TeacherSection(teachers=[TeacherEndpoint(backend="program")], strategies=["cote"])
    plain = teaching_targets(pool, examples, mistakes, TrainingSection(max_mistakes=4), teacher, seed=0)
    assert [e.answer for e in plain.examples] == ["yes"] * 4
    balanced = teaching_targets(
        pool, examples, mistakes, TrainingSection(max_mistakes=4, mistake_balance="answer"), teacher, seed=0
    )
    assert sorted(e.answer for e in balanced.examples) == ["no", "no", "yes", "yes"]
    assert set(balanced.mistakes) == {e.id for e in balanced.examples}


def test_category_balance_fills_a_category_out_of_mistakes_with_questions_it_got_right() -> None:
    pool = generate_problems(40, 0, 1, 1, 9)
    adds = [e.id for e in pool if e.meta["category"] == "Add"]
    takes = [e.id for e in pool if e.meta["category"] == "Take away"]
    assert len(adds) >= 8 and len(takes) >= 8
    # Every mistake is an "Add": the turns alternate, "Take away" giving questions that are not mistakes.
    chosen = category_balanced_selection(pool, adds[:6], limit=None, seed=0)
    assert len(chosen) == 12
    assert [i for i in chosen if i in adds] == adds[:6]  # all the mistakes, in their order
    assert sum(i in takes for i in chosen) == 6 and not set(chosen) & set(adds[6:])
    assert category_balanced_selection(pool, adds[:6], None, 0) == chosen  # seeded
    # The cap counts every taught question; mistakes of both categories go first within each.
    capped = category_balanced_selection(pool, adds[:6] + takes[:2], limit=8, seed=0)
    assert capped[:4] == [adds[0], takes[0], adds[1], takes[1]]
    assert len(capped) == 8 and sum(i in adds for i in capped) == 4
    assert category_balanced_selection(pool, [], limit=8, seed=0) == []  # nothing wrong, nothing to teach


def test_teaching_targets_balance_categories_at_the_random_arms_budget() -> None:
    from tutorloop.loop.teaching_plan import plan_round_jobs

    pool = generate_problems(40, 0, 1, 1, 9)
    examples = {e.id: e for e in pool}
    mistakes = find_mistakes([attempt(e.id, 0, e.meta["category"] != "Add") for e in pool])
    teacher = TeacherSection(teachers=[TeacherEndpoint(backend="program")], strategies=["cote"])
    training = TrainingSection(max_mistakes=10, mistake_balance="category")
    targets = teaching_targets(pool, examples, mistakes, training, teacher, seed=0)
    assert sorted(e.meta["category"] for e in targets.examples) == ["Add"] * 5 + ["Take away"] * 5
    assert set(targets.mistakes) == {e.id for e in targets.examples if e.meta["category"] == "Add"}
    jobs = plan_round_jobs(targets, teacher, round=1)
    strategy = {job.example.id: job.strategy for job in jobs}
    assert {strategy[i] for i in targets.mistakes} == {"tailored"}
    assert {s for i, s in strategy.items() if i not in targets.mistakes} == {"cote"} and len(strategy) == 10
    random_arm = teaching_targets(
        pool, examples, mistakes, training.model_copy(update={"selection": "random"}), teacher, seed=0
    )
    assert len(random_arm.examples) == 10  # the same teacher budget
    plain = [replace(e, meta={}) for e in pool]
    with pytest.raises(ConfigError, match="training.mistake_balance: category needs a category"):
        teaching_targets(plain, {e.id: e for e in plain}, mistakes, training, teacher, seed=0)


def test_replay_mixes_share_of_earlier_samples() -> None:
    earlier = [
        {"round": 0, "example_id": str(i), "task": "explain", "source": "t", "input": "q", "target": "a", "weight": 1.0}
        for i in range(40)
    ]
    mixed = replay_samples(earlier, new_count=10, fraction=0.5, seed=0)
    assert len(mixed) == 10
    # The store gives a replay the round that trains on it; its source names the round it came from.
    assert all("round" not in s and s["source"] == "replay:round-0" for s in mixed)
    assert replay_samples(earlier, 10, 0.5, 0) == mixed
    assert replay_samples([], 10, 0.5, 0) == []


def test_targets_hold_no_blank_line_where_the_exam_stops() -> None:
    from tutorloop.loop.core.answers import extract_answer
    from tutorloop.loop.core.config import GenerationSection

    # text-davinci-002 writes paragraphs: 97% of its tracking_shuffled_objects rationales have blank lines.
    rationale = (
        "First, Alice and Bob swap balls.  \n\nThen, Bob and Claire swap balls.\n \n\nSo Alice has the blue ball."
    )
    target = student_target("explain", "C", rationale)
    assert target == (
        " First, Alice and Bob swap balls.\nThen, Bob and Claire swap balls.\n"
        f"So Alice has the blue ball.\n{ANSWER_TRIGGER} C."
    )
    # A student that reproduces the target exactly keeps its answer under the exam's stop strings.
    cut = min((target.find(stop) for stop in GenerationSection().stop if stop in target), default=len(target))
    assert extract_answer(target[:cut], "choice") == "C"
