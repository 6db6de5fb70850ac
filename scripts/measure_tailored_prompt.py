#!/usr/bin/env python3
"""Parse and acceptance rates of the tailored prompt on a local llama.cpp teacher, for real wrong rationales.

Each mistake is a train question with a wrong rationale: by default the recorded text-davinci-002
rationales whose answer is wrong (real mistakes of a real model, data/recorded_teacher), the first
`--n` in index order; with `--run RUN_DIR`, the student's own wrong exam outputs of that run. The
tailored prompt (built-in, or `--prompts-dir`'s tailored.txt) goes to Qwen2.5-Coder-1.5B-Instruct
(or `--model`) served by llama.cpp through tutorloop's own openai backend, sample 0 greedy and, with
`--second`, sample 1 at temperature 0.7 (the self-reflection positive). Prints per-task parse rate
(both labels found), acceptance rate (the corrected answer equals gold), seconds per request, and one
example; `--dump FILE` writes every reply as JSON lines. Run it under `nice`: it competes for cores.
`--run` may be given several times (their mistakes in turn, one per question). `--exam-adapter DIR`
takes the mistakes of the default student with that peft adapter instead, examined greedily on the
first `--exam-pool` train questions (in explain mode, as a tailored round examines). `--show-answer` asks
with the gold answer shown (teacher.tailored_show_answer); `--both` asks every mistake both ways in one
session and adds the paired comparison (exact McNemar over the mistakes). It also counts the accepted
corrections the equation check (teacher.check_equations, numeric tasks) and the reaches-answer check
(teacher.check_reaches_answer) would reject, and `--both` pairs the ones passing both. `--checks-only`
starts no server: it counts the recorded davinci rationales with the right answer that each check
rejects, over every recorded completion of each task.

    nice -n 10 .venv/bin/python scripts/measure_tailored_prompt.py --task multiarith --n 12
    .venv/bin/python scripts/measure_tailored_prompt.py --task multiarith --checks-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import duckdb

from tutorloop.actors.serving import LOCAL_TEACHER_ALIAS, LlamaCppServer, resolve_gguf
from tutorloop.actors.teacher import LocalTeacherPool, TeacherRequest
from tutorloop.loop.core.answers import answers_match, extract_answer, reasoning_reaches_answer
from tutorloop.loop.core.calculator import false_equations
from tutorloop.loop.core.config import DataSection, load_config
from tutorloop.loop.core.datasets import (
    Example,
    answer_type_of,
    load_examples,
    load_recorded_teacher,
    normalize_question,
    read_recorded,
    recorded_path,
)
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection
from tutorloop.loop.strategies import PromptBuilder, clean_rationale, load_templates
from tutorloop.loop.tailored_reply import TailoredReply, grade_tailored_reply, parse_tailored_reply

Mistake = tuple[Example, str, str | None]  # the question, the wrong rationale, its answer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", help="recorded task(s); default multiarith")
    parser.add_argument("--n", type=int, default=12, help="mistakes per task")
    parser.add_argument("--run", action="append", help="take the wrong exam outputs of this run directory instead")
    parser.add_argument("--exam-adapter", help="take the mistakes of the default student with this peft adapter")
    parser.add_argument("--exam-pool", type=int, default=120, help="train questions examined with --exam-adapter")
    parser.add_argument("--model", default=LOCAL_TEACHER_ALIAS, help="GGUF path or alias")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--second", action="store_true", help="also sample 1 at temperature 0.7")
    parser.add_argument("--prompts-dir", help="folder with a tailored.txt replacing the built-in one")
    parser.add_argument("--dump", help="write every reply as JSON lines here")
    parser.add_argument("--show-answer", action="store_true", help="tell the teacher the gold answer")
    parser.add_argument("--both", action="store_true", help="ask each mistake without and with the answer, paired")
    parser.add_argument(
        "--checks-only", action="store_true", help="only count recorded rationales the two checks reject"
    )
    return parser.parse_args()


def recorded_mistakes(task: str, n: int) -> list[Mistake]:
    """The first `n` train questions whose recorded teacher rationale ends in a wrong answer."""
    recorded = load_recorded_teacher("data", task)
    found, seen = [], set()
    for example in sorted(load_examples(DataSection(task=task), "train"), key=lambda e: int(e.id.rsplit("/", 1)[1])):
        completion = (recorded.get(normalize_question(example.question)) or [None])[0]
        if completion is None or normalize_question(example.question) in seen:
            continue  # some questions appear twice in the split
        seen.add(normalize_question(example.question))
        answer = extract_answer(f"Therefore, the answer is{completion['completion']}", example.answer_type)
        if not answers_match(answer, example.answer, example.answer_type):
            found.append((example, completion["reasoning_completion"].strip(), answer))
        if len(found) == n:
            break
    return found


def recorded_checks(task: str) -> str:
    """How many recorded rationales with the right answer each check rejects, and the first few of each."""
    answer_type = answer_type_of(DataSection(task=task))
    right, false_equation, not_reached = 0, [], []
    for completions in read_recorded(recorded_path("data", task)).values():
        for completion in completions:
            answer = extract_answer(completion["prompt"] + completion["completion"], answer_type)
            gold = str(completion["answer"])
            if not answers_match(answer, gold, answer_type):
                continue
            right += 1
            rationale = clean_rationale(completion["reasoning_completion"])
            shown = " ".join(rationale.split())[:240]
            false = false_equations(rationale) if answer_type == "number" else []
            if false:
                false_equation.append(f"  {'; '.join(false)} in: {shown}")
            if not reasoning_reaches_answer(rationale, gold, answer_type, task):
                not_reached.append(f"  (answer {gold}) {shown}")
    return "\n".join(
        [
            f"{task}: the equation check rejects {len(false_equation)} of {right} recorded rationales with the right answer"
        ]
        + false_equation[:5]
        + [f"{task}: the reaches-answer check rejects {len(not_reached)} of {right}"]
        + not_reached[:5]
    )


def run_mistakes(run_dir: str, n: int) -> list[Mistake]:
    """The first wrong exam sample of up to `n` questions of a run (read-only, the run may be live)."""
    config = load_config(Path(run_dir) / "config.yaml")
    examples = {e.id: e for e in load_examples(config.data, "train")}
    with duckdb.connect(str(Path(run_dir) / "history.duckdb"), read_only=True) as db:
        rows = db.execute(
            "SELECT example_id, any_value(output ORDER BY sample_index), "
            "any_value(extracted ORDER BY sample_index) FROM attempts "
            "WHERE phase = 'exam' AND NOT correct GROUP BY example_id ORDER BY example_id"
        ).fetchall()
    return [(examples[i], output or "", extracted) for i, output, extracted in rows[:n] if i in examples]


def runs_mistakes(run_dirs: list[str], n: int) -> list[Mistake]:
    """The runs' mistakes in turn, one per question (the first run's first), at most `n`."""
    found: dict[str, Mistake] = {}
    for run_dir in run_dirs:
        for mistake in run_mistakes(run_dir, n):
            found.setdefault(mistake[0].id, mistake)
    return list(found.values())[:n]


def exam_mistakes(task: str, adapter_dir: str, pool: int, n: int) -> list[Mistake]:
    """Wrong greedy explain answers of the default student with the adapter, on the first `pool` train questions."""
    from tutorloop.actors.exam import Examiner
    from tutorloop.actors.models import DEFAULT_STUDENT_ALIAS, adapter_to_bytes
    from tutorloop.loop.core.config import StudentSection

    examples = load_examples(DataSection(task=task), "train")[:pool]
    examiner = Examiner(StudentSection(model=DEFAULT_STUDENT_ALIAS), examples[0].answer_type)
    examiner.set_adapter(adapter_to_bytes(adapter_dir))
    records = examiner.run(examples, "explain")
    wrong = [(ex, r["output"], r["extracted"]) for ex, r in zip(examples, records) if not r["correct"]]
    print(f"{task}: {len(wrong)} of {len(examples)} examined train questions wrong", flush=True)
    return wrong[:n]


def graded(record: dict, example: Example) -> tuple[TailoredReply | None, str | None, bool]:
    """The parsed reply, its grade (None: accepted, else the reject reason) and whether it also passes both
    checks (teacher.check_equations on numeric tasks, teacher.check_reaches_answer)."""
    reply = parse_tailored_reply(record["response"], example.answer_type) if record["status"] == "ok" else None
    reason = "bad_format" if reply is None else grade_tailored_reply(reply, example.answer, example.answer_type)
    checked = (
        reason is None
        and not (example.answer_type == "number" and false_equations(reply.rationale))
        and reasoning_reaches_answer(reply.rationale, example.answer, example.answer_type, example.dataset)
    )
    return reply, reason, checked


def paired_line(task: str, without: list[dict], with_answer: list[dict], examples: dict[str, Example]) -> str:
    """Accepted without vs with the answer shown, paired by mistake, and the exact McNemar p; then the same
    counting only corrections that pass both checks."""
    from tutorloop.loop.paired_stats import mcnemar_exact

    a = {r["example_id"]: graded(r, examples[r["example_id"]]) for r in without}
    b = {r["example_id"]: graded(r, examples[r["example_id"]]) for r in with_answer}
    lines = []
    for label, passes in (("accepted", lambda g: g[1] is None), ("accepted and passing both checks", lambda g: g[2])):
        only_with = sum(passes(b[i]) and not passes(a[i]) for i in a)
        only_without = sum(passes(a[i]) and not passes(b[i]) for i in a)
        lines.append(
            f"{task}: {label} {sum(map(passes, a.values()))}/{len(a)} without the answer, "
            f"{sum(map(passes, b.values()))}/{len(b)} with it; only with: {only_with}, only without: {only_without}, "
            f"exact McNemar p = {mcnemar_exact(only_with, only_without):.3g}"
        )
    return "\n".join(lines)


def requests_for(
    mistakes: list[Mistake], builder: PromptBuilder, second: bool, max_tokens: int, show_answer: bool
) -> list[TeacherRequest]:
    samples = [(0, 0.0)] + ([(1, 0.7)] if second else [])
    return [
        TeacherRequest(
            teacher="local",
            backend="openai",
            model=LOCAL_TEACHER_ALIAS,
            api="chat",
            messages=[{"role": "user", "content": builder.tailored(example, rationale, answer, show_answer)}],
            params={"temperature": temperature, "max_tokens": max_tokens},
            sample_index=index,
            strategy="tailored",
            example_id=example.id,
            stage="tailored",
        )
        for example, rationale, answer in mistakes
        for index, temperature in samples
    ]


def summarize(task: str, records: list[dict], examples: dict[str, Example], dump: list[dict], wall_s: float) -> None:
    parsed = accepted = passing = 0
    shown = False
    for record in records:
        example = examples[record["example_id"]]
        reply, reason, checked = graded(record, example)
        parsed += reply is not None
        accepted += reason is None
        passing += checked
        dump.append(
            {
                "example_id": example.id,
                "sample_index": record["sample_index"],
                "gold": example.answer,
                "status": record["status"],
                "reason": reason,
                "latency_s": record["latency_s"],
                "tokens_out": record["tokens_out"],
                "response": record["response"],
            }
        )
        if reason is None and not shown:
            shown = True
            print(
                f"  example {example.id} (gold {example.answer}):\n    mistake: {reply.mistake}\n"
                f"    correction: {' '.join(reply.rationale.split())[:400]} -> {reply.answer}"
            )
    latencies = [r["latency_s"] for r in records]
    tokens = [r["tokens_out"] for r in records]
    total = max(len(records), 1)
    print(
        f"{task}: {len(records)} requests | parsed {parsed}/{len(records)} ({parsed / total:.0%}) | "
        f"accepted {accepted}/{len(records)} ({accepted / total:.0%}), {passing} of them passing both checks | "
        f"{statistics.mean(latencies):.1f} s per request (median {statistics.median(latencies):.1f}) | "
        f"{wall_s / total:.1f} s of wall time per reply | {statistics.mean(tokens):.0f} tokens out per reply",
        flush=True,
    )


def main() -> int:
    args = parse_args()
    tasks = args.task or ["multiarith"]
    if args.checks_only:
        print("\n".join(recorded_checks(task) for task in tasks))
        return 0
    if args.run:
        sets = {"run": runs_mistakes(args.run, args.n)}
    elif args.exam_adapter:
        sets = {t: exam_mistakes(t, args.exam_adapter, args.exam_pool, args.n) for t in tasks}
    else:
        sets = {t: recorded_mistakes(t, args.n) for t in tasks}
    builder = PromptBuilder(load_templates(args.prompts_dir))
    dump: list[dict] = []
    server = LlamaCppServer(
        resolve_gguf(args.model), threads=args.threads, ctx=args.ctx, parallel=args.parallel, alias=LOCAL_TEACHER_ALIAS
    )
    started = time.perf_counter()
    base_url = server.start()
    print(
        f"server {base_url} up in {time.perf_counter() - started:.0f} s ({args.threads} thread(s), "
        f"{args.parallel} slot(s))",
        flush=True,
    )
    endpoint = TeacherEndpoint(name="local", backend="openai", model=LOCAL_TEACHER_ALIAS, base_url=base_url)
    cfg = TeacherSection(
        teachers=[endpoint],
        concurrency=args.parallel,
        timeout_s=600,
        max_retries=1,
        retry_unusable=False,
        max_tokens=args.max_tokens,
    )
    try:
        with LocalTeacherPool(cfg) as pool:
            for task, mistakes in sets.items():
                examples = {m[0].id: m[0] for m in mistakes}
                shown = [False, True] if args.both else [args.show_answer]
                by_showing = {}
                for show in shown:
                    requests = requests_for(mistakes, builder, args.second, args.max_tokens, show)
                    records, asked = [], time.perf_counter()
                    for group in pool.ask(requests):
                        records += group
                        print(
                            f"  {len(records)}/{len(requests)} replies, last {group[-1]['latency_s']:.0f} s",
                            file=sys.stderr,
                            flush=True,
                        )
                    label = f"{task}, answer {'shown' if show else 'not shown'}"
                    summarize(label, records, examples, dump, time.perf_counter() - asked)
                    by_showing[show] = [r for r in records if r["sample_index"] == 0]
                if args.both:
                    print(paired_line(task, by_showing[False], by_showing[True], examples), flush=True)
    finally:
        server.stop()
    if args.dump:
        Path(args.dump).write_text("".join(json.dumps(row) + "\n" for row in dump))
    return 0


if __name__ == "__main__":
    sys.exit(main())
