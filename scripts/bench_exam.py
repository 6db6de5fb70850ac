#!/usr/bin/env python3
"""Exam throughput: batched `Examiner` vs one-at-a-time `model.generate`, same questions, same model.

Default: SmolLM2-135M-Instruct from the converted folder, the first 64 multiarith test questions in
`explain` mode, greedy. Prints a few lines, then one JSON object as the last line with
`tokens_per_s`, `baseline_tokens_per_s`, `ratio` and `identical_fraction` (share of questions whose
output text is identical between the two).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tutorloop.actors.exam import Examiner, cut_at_stop
from tutorloop.loop.config import DataSection, StudentSection
from tutorloop.loop.student_prompt import student_prompt
from tutorloop.loop.datasets import load_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="multiarith")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mode", default="explain", choices=["answer", "explain"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", default="none", choices=["none", "4bit", "8bit"])
    args = parser.parse_args()

    cfg = StudentSection(model=args.model, dtype=args.dtype, quantization=args.quantization,
                         generation={"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size})
    examples = load_examples(DataSection(task=args.task), "test")[: args.n]
    examiner = Examiner(cfg, examples[0].answer_type)
    model, tok = examiner.model, examiner.tokenizer
    examiner.run(examples[:2], args.mode)  # warm-up (allocator, kernels)

    start = time.perf_counter()
    records = examiner.run(examples, args.mode)
    batched_s = time.perf_counter() - start
    batched_tokens = sum(r["output_tokens"] for r in records)

    stop = list(cfg.generation.stop)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    baseline_texts, baseline_tokens = [], 0
    start = time.perf_counter()
    for ex in examples:
        inputs = tok(student_prompt(ex.question, args.mode), return_tensors="pt").to(model.device)
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                             stop_strings=stop, tokenizer=tok, pad_token_id=tok.pad_token_id)
        new = [t for t in out[0, inputs.input_ids.shape[1]:].tolist() if t not in eos]
        baseline_tokens += len(new)
        baseline_texts.append(cut_at_stop(tok.decode(new, skip_special_tokens=True), stop))
    baseline_s = time.perf_counter() - start

    same = [r["output"] == b for r, b in zip(records, baseline_texts)]
    for r, b, s in zip(records, baseline_texts, same):
        if not s:
            print(f"differs: {r['example_id']}\n  batched:  {r['output']!r}\n  one-by-one: {b!r}")
    result = {
        "model": args.model, "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
        "quantization": args.quantization, "questions": len(examples), "mode": args.mode,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "tokens": batched_tokens, "seconds": round(batched_s, 2),
        "baseline_tokens": baseline_tokens, "baseline_seconds": round(baseline_s, 2),
        "tokens_per_s": round(batched_tokens / batched_s, 2),
        "baseline_tokens_per_s": round(baseline_tokens / baseline_s, 2),
        "ratio": round((batched_tokens / batched_s) / (baseline_tokens / baseline_s), 2),
        "identical_fraction": round(sum(same) / len(same), 4),
        "accuracy": round(sum(r["correct"] for r in records) / len(records), 4),
    }
    print(f"batched: {result['tokens_per_s']} tokens/s, one-at-a-time: {result['baseline_tokens_per_s']} tokens/s, "
          f"ratio {result['ratio']}x, identical {result['identical_fraction']:.1%}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
