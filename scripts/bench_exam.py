#!/usr/bin/env python3
"""Exam throughput at realistic answer lengths: the exam vs one-at-a-time and batched `model.generate`.

The student is SmolLM2-135M-Instruct with a LoRA adapter trained here on the shipped multiarith
rationales (text-davinci-002 zero-shot CoT, train split): its explain-mode answers run 60-120 tokens
like a trained student's, where the untrained model stops after about 8. Training takes a few minutes
once; the trainer's checkpoint in the cache (TUTORLOOP_CACHE) serves later runs.

The test questions are cut into `--blocks` parts and each part is decoded by all three in turn (the
order rotated from part to part), so load from other processes hits the three alike. Batched
`generate` gets left-padded batches of `--batch-size` questions sorted by prompt length, as a careful
user would write it. Prints one line per part, then one JSON object as the last line: tokens/s of
each, `ratio` (exam vs one-at-a-time), `ratio_vs_batched` (exam vs batched generate), the same two
per part, the answer lengths measured and the share of outputs identical to one-at-a-time decoding.
`--sweep 8,32` adds exam and batched generate at other batch sizes (no one-at-a-time run).

`--engine llama.cpp` compares the exam's two engines instead (student.engine): the transformers exam and
the llama.cpp server with the same adapter converted, on the same questions (`--n 180`: all of
MultiArith's test split), the parts in rotated order. The JSON line carries each engine's tokens/s,
`ratio_vs_transformers`, `answer_agreement` (share of questions whose extracted greedy answer is the
same), both accuracies, McNemar's exact p of their paired correctness, and the server's start with the
adapter (a new round's adapter restarts it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from tutorloop.actors.exam import Examiner, cut_at_stop, eos_token_ids
from tutorloop.actors.llama_exam import LlamaCppExaminer
from tutorloop.actors.models import adapter_to_bytes, cache_dir
from tutorloop.actors.training import LoraTrainer
from tutorloop.loop.core.config import DataSection, GenerationSection, StudentSection, TrainingSection
from tutorloop.loop.core.datasets import Example, load_examples, load_recorded_teacher, normalize_question
from tutorloop.loop.core.student_prompt import student_prompt, student_target
from tutorloop.loop.paired_stats import discordant, mcnemar_exact

Outputs = tuple[list[str], list[int]]  # texts and generated token counts, one per question


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="multiarith", help="recorded task: test questions and training rationales")
    parser.add_argument("--n", type=int, default=96, help="test questions (more than a batch per part: refills)")
    parser.add_argument("--blocks", type=int, default=2, help="parts measured in turn by all three")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=GenerationSection().batch_size, help="default: the config's")
    parser.add_argument("--sweep", default="", help="more batch sizes for exam vs batched generate, e.g. 8,32")
    parser.add_argument("--train-samples", type=int, default=160, help="0: the bare model (short answers)")
    parser.add_argument("--adapter", help="a trained adapter instead: peft folder or its bytes (as a run stores them)")
    parser.add_argument("--mode", default="explain", choices=["answer", "explain"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", default="none", choices=["none", "4bit", "8bit"])
    parser.add_argument(
        "--engine", default="transformers", choices=["transformers", "llama.cpp"], help="llama.cpp: compare engines"
    )
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: every core)")
    return parser.parse_args()


def train_adapter(cfg: StudentSection, task: str, n: int) -> bytes:
    """A LoRA adapter trained on the first `n` recorded rationales of the task's train split."""
    recorded = load_recorded_teacher("data", task)
    samples = []
    for ex in load_examples(DataSection(task=task), "train")[:n]:
        rationale = recorded[normalize_question(ex.question)][0]["reasoning_completion"]
        samples.append(
            {
                "example_id": ex.id,
                "task": "explain",
                "input": student_prompt(ex.question, "explain"),
                "target": student_target("explain", ex.answer, rationale),
                "weight": 1.0,
            }
        )
    training = TrainingSection(lr=1e-3, batch_size=8, epochs=1, warmup_ratio=0.05, reflection="none", tasks=["explain"])
    started = time.perf_counter()
    result = LoraTrainer(cfg, training).train(samples, [], checkpoint_dir=str(cache_dir() / "bench_exam"))
    print(
        f"adapter: {len(samples)} {task} rationales, {len(result.steps)} steps, "
        f"{time.perf_counter() - started:.0f} s (a finished checkpoint is reused)",
        flush=True,
    )
    return result.adapter


def exam_outputs(examiner: Examiner, examples: list[Example], mode: str, batch_size: int) -> Outputs:
    records = examiner.run(examples, mode, batch_size=batch_size)
    return [r["output"] for r in records], [r["output_tokens"] for r in records]


def generate_outputs(
    model, tok, examples: list[Example], mode: str, batch_size: int, max_new_tokens: int, stop: list[str]
) -> Outputs:
    """`model.generate`, greedy, in left-padded batches of questions sorted by prompt length."""
    prompts = [student_prompt(ex.question, mode) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(tok(prompts[i]).input_ids))
    ends = eos_token_ids(model, tok) | {tok.pad_token_id}
    texts, counts = [""] * len(prompts), [0] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = tok([prompts[i] for i in chunk], return_tensors="pt", padding=True).to(model.device)
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stop_strings=stop,
            tokenizer=tok,
            pad_token_id=tok.pad_token_id,
        )
        for i, row in zip(chunk, out[:, inputs.input_ids.shape[1] :].tolist()):
            new = row[: next((k for k, t in enumerate(row) if t in ends), len(row))]
            texts[i], counts[i] = cut_at_stop(tok.decode(new, skip_special_tokens=True), stop), len(new)
    return texts, counts


def measure(runs: dict[str, Callable[[list[Example]], Outputs]], blocks: list[list[Example]]) -> dict[str, dict]:
    """Each run over every block, the order rotated per block: texts and lengths, tokens and seconds per block."""
    results = {name: {"texts": [], "lengths": [], "tokens": [], "seconds": []} for name in runs}
    names = list(runs)
    for b, block in enumerate(blocks):
        for name in names[b % len(names) :] + names[: b % len(names)]:
            started = time.perf_counter()
            texts, counts = runs[name](block)
            results[name]["seconds"].append(time.perf_counter() - started)
            results[name]["texts"] += texts
            results[name]["lengths"] += counts
            results[name]["tokens"].append(sum(counts))
        line = ", ".join(f"{n} {_tps(results[n], b):.1f}" for n in names)
        print(f"part {b + 1}/{len(blocks)} ({len(block)} questions), tokens/s: {line}", flush=True)
    return results


def _tps(result: dict, block: int | None = None) -> float:
    if block is not None:
        return result["tokens"][block] / result["seconds"][block]
    return sum(result["tokens"]) / sum(result["seconds"])


def summary(result: dict) -> dict:
    return {
        "tokens": sum(result["tokens"]),
        "seconds": round(sum(result["seconds"]), 2),
        "tokens_per_s": round(_tps(result), 2),
    }


def lengths(counts: list[int], max_new_tokens: int) -> dict:
    return {
        "mean": round(statistics.mean(counts), 1),
        "min": min(counts),
        "median": statistics.median(counts),
        "max": max(counts),
        "at_limit": round(sum(c >= max_new_tokens for c in counts) / len(counts), 4),
    }


def identical(a: list[str], b: list[str]) -> float:
    return round(sum(x == y for x, y in zip(a, b)) / len(a), 4)


def sweep(examiner: Examiner, gen: Callable, args: argparse.Namespace, blocks: list[list[Example]]) -> list[dict]:
    rows = []
    for size in [int(s) for s in args.sweep.split(",") if s.strip()]:
        print(f"sweep: batch size {size}", flush=True)
        res = measure(
            {
                "exam": lambda b, s=size: exam_outputs(examiner, b, args.mode, s),
                "batched_generate": lambda b, s=size: gen(b, s),
            },
            blocks,
        )
        rows.append(
            {
                "batch_size": size,
                "exam_tokens_per_s": round(_tps(res["exam"]), 2),
                "batched_tokens_per_s": round(_tps(res["batched_generate"]), 2),
                "ratio_vs_batched": round(_tps(res["exam"]) / _tps(res["batched_generate"]), 2),
            }
        )
    return rows


def compare_engines(cfg: StudentSection, examiner: Examiner, adapter: bytes | None, examples, args) -> dict:
    """The transformers exam against the llama.cpp exam on the same adapter and questions."""
    started = time.perf_counter()
    server = LlamaCppExaminer(cfg.model_copy(update={"engine": "llama.cpp"}), examples[0].answer_type, args.threads)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    server.set_adapter(adapter)
    restart_s = time.perf_counter() - started
    graded: dict[str, list[dict]] = {"transformers": [], "llama.cpp": []}

    def timed(name: str, run: Callable[[list[Example]], list[dict]]) -> Callable[[list[Example]], Outputs]:
        def outputs(block: list[Example]) -> Outputs:
            records = run(block)
            graded[name] += records
            return [r["output"] for r in records], [r["output_tokens"] for r in records]

        return outputs

    runs = {
        "transformers": timed("transformers", lambda b: examiner.run(b, args.mode, batch_size=args.batch_size)),
        "llama.cpp": timed("llama.cpp", lambda b: server.run(b, args.mode)),
    }
    for run in runs.values():  # warm-up (allocator, kernels, the server's first batch)
        run(examples[:2])
    for records in graded.values():
        records.clear()
    blocks = [examples[b :: args.blocks] for b in range(args.blocks)]
    res = measure(runs, blocks)
    server.close()
    by_id = {name: {r["example_id"]: r for r in records} for name, records in graded.items()}
    ids = [ex.id for block in blocks for ex in block]
    correct = {name: {i: float(by_id[name][i]["correct"]) for i in ids} for name in by_id}
    to_llama, to_transformers = discordant(correct["transformers"], correct["llama.cpp"])
    same = [by_id["transformers"][i]["extracted"] == by_id["llama.cpp"][i]["extracted"] for i in ids]
    return {
        "model": args.model,
        "adapter": args.adapter or f"trained on {args.train_samples} {args.task} rationales",
        "questions": len(ids),
        "mode": args.mode,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "llama_cpp_threads": server.threads,
        "llama_cpp_load_s": round(load_s, 2),
        "llama_cpp_restart_with_adapter_s": round(restart_s, 2),
        "transformers": summary(res["transformers"]),
        "llama.cpp": summary(res["llama.cpp"]),
        "ratio_vs_transformers": round(_tps(res["llama.cpp"]) / _tps(res["transformers"]), 2),
        "ratio_vs_transformers_per_block": [
            round(_tps(res["llama.cpp"], b) / _tps(res["transformers"], b), 2) for b in range(args.blocks)
        ],
        "answer_agreement": round(sum(same) / len(same), 4),
        "identical_output_fraction": identical(res["transformers"]["texts"], res["llama.cpp"]["texts"]),
        "accuracy_transformers": round(sum(correct["transformers"].values()) / len(ids), 4),
        "accuracy_llama_cpp": round(sum(correct["llama.cpp"].values()) / len(ids), 4),
        "discordant": {"llama_cpp_only_right": to_llama, "transformers_only_right": to_transformers},
        "mcnemar_p": round(mcnemar_exact(to_llama, to_transformers), 4),
    }


def main() -> None:
    args = parse_args()
    cfg = StudentSection(
        model=args.model,
        dtype=args.dtype,
        quantization=args.quantization,
        lora={"r": 16, "alpha": 32, "target_modules": "all-linear"},
        generation={"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size},
    )
    examples = load_examples(DataSection(task=args.task), "test")[: args.n]
    examiner = Examiner(cfg, examples[0].answer_type)
    adapter = None
    if args.adapter:
        path = Path(args.adapter)
        adapter = adapter_to_bytes(path) if path.is_dir() else path.read_bytes()
    elif args.train_samples:
        adapter = train_adapter(cfg, args.task, args.train_samples)
    examiner.set_adapter(adapter)
    if args.engine == "llama.cpp":
        result = compare_engines(cfg, examiner, adapter, examples, args)
        print(
            f"transformers {result['transformers']['tokens_per_s']} tokens/s, llama.cpp "
            f"{result['llama.cpp']['tokens_per_s']}: ratio {result['ratio_vs_transformers']}x; answers agree on "
            f"{result['answer_agreement']:.1%}; accuracy {result['accuracy_transformers']:.1%} vs "
            f"{result['accuracy_llama_cpp']:.1%}, McNemar p {result['mcnemar_p']}"
        )
        print(json.dumps(result))
        return
    model, tok, stop = examiner.model, examiner.tokenizer, list(cfg.generation.stop)

    def gen(block: list[Example], size: int) -> Outputs:
        return generate_outputs(model, tok, block, args.mode, size, args.max_new_tokens, stop)

    runs = {
        "exam": lambda b: exam_outputs(examiner, b, args.mode, args.batch_size),
        "batched_generate": lambda b: gen(b, args.batch_size),
        "one_at_a_time": lambda b: gen(b, 1),
    }
    for run in runs.values():  # warm-up (allocator, kernels)
        run(examples[:2])
    blocks = [examples[b :: args.blocks] for b in range(args.blocks)]
    res = measure(runs, blocks)
    exam, batched, single = res["exam"], res["batched_generate"], res["one_at_a_time"]
    result = {
        "model": args.model,
        "adapter": args.adapter
        or (f"trained on {args.train_samples} {args.task} rationales" if args.train_samples else None),
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "quantization": args.quantization,
        "threads": torch.get_num_threads(),
        "questions": len(examples),
        "blocks": args.blocks,
        "mode": args.mode,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "output_tokens": lengths(exam["lengths"], args.max_new_tokens),
        "exam": summary(exam),
        "batched_generate": summary(batched),
        "one_at_a_time": summary(single),
        "ratio": round(_tps(exam) / _tps(single), 2),
        "ratio_vs_batched": round(_tps(exam) / _tps(batched), 2),
        "ratio_per_block": [round(_tps(exam, b) / _tps(single, b), 2) for b in range(args.blocks)],
        "ratio_vs_batched_per_block": [round(_tps(exam, b) / _tps(batched, b), 2) for b in range(args.blocks)],
        "identical_fraction": identical(exam["texts"], single["texts"]),
        "batched_generate_identical_fraction": identical(batched["texts"], single["texts"]),
    }
    for a, b, ex in zip(exam["texts"], single["texts"], [e for block in blocks for e in block]):
        if a != b:
            print(f"differs: {ex.id}\n  exam:          {a!r}\n  one-at-a-time: {b!r}")
    if args.sweep:
        result["sweep"] = sweep(examiner, gen, args, blocks)
    print(
        f"exam {result['exam']['tokens_per_s']} tokens/s, batched generate "
        f"{result['batched_generate']['tokens_per_s']}, one-at-a-time {result['one_at_a_time']['tokens_per_s']}: "
        f"ratio {result['ratio']}x, vs batched {result['ratio_vs_batched']}x, "
        f"identical {result['identical_fraction']:.1%}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
