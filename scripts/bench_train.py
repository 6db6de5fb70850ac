#!/usr/bin/env python3
"""Training throughput of `LoraTrainer`: target-masked multi-task LoRA steps on GSM8K rationales.

Default: SmolLM2-135M-Instruct (converted folder), LoRA r=8 on q_proj/v_proj, batch 4, answer +
explain samples (with an optional triplet term). Prints a few lines, then one JSON object as the last
line with `tokens_per_s` (real, non-pad tokens through forward+backward per second), `pad_fraction`
and `peak_rss_gb` (this process's peak resident memory; compare runs with and without
`--gradient-checkpointing`).
"""

from __future__ import annotations

import argparse
import json
import math
import resource

import torch

from tutorloop.actors.training import LoraTrainer
from tutorloop.loop.core.config import DataSection, StudentSection, TrainingSection
from tutorloop.loop.core.datasets import load_examples
from tutorloop.loop.core.student_prompt import student_prompt, student_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--reflection", default="none", choices=["none", "triplet", "dpo"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", default="none", choices=["none", "4bit", "8bit"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    examples = [ex for ex in load_examples(DataSection(task="gsm8k"), "train") if ex.rationale][: args.questions]
    samples = [
        {
            "example_id": ex.id,
            "task": task,
            "input": student_prompt(ex.question, task),
            "target": student_target(task, ex.answer, ex.rationale),
            "weight": 1.0,
        }
        for ex in examples
        for task in ("answer", "explain")
    ]
    pairs = (
        [
            {
                "example_id": ex.id,
                "input": student_prompt(ex.question, "explain"),
                "anchor": student_target("explain", ex.answer, ex.rationale),
                "positive": None,
                "negative": student_target("explain", str(int(float(ex.answer)) + 1), "I am not sure."),
            }
            for ex in examples[: args.questions // 4]
        ]
        if args.reflection != "none"
        else []
    )
    cfg = StudentSection(
        model=args.model,
        dtype=args.dtype,
        quantization=args.quantization,
        lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    )
    batches = math.ceil(len(samples) / args.batch_size) + math.ceil(len(pairs) / args.batch_size)
    tcfg = TrainingSection(
        batch_size=args.batch_size,
        max_length=args.max_length,
        reflection=args.reflection,
        epochs=min(1.0, args.steps / batches),
        checkpoint_every=10_000,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    result = LoraTrainer(cfg, tcfg).train(samples, pairs)
    steps = result.steps[1:] or result.steps  # the first step pays one-off costs (allocation, warm-up)
    seconds = steps[-1]["elapsed_s"] - (result.steps[0]["elapsed_s"] if len(result.steps) > 1 else 0.0)
    tokens = sum(s["tokens"] for s in steps)
    out = {
        "model": args.model,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "dtype": args.dtype,
        "quantization": args.quantization,
        "reflection": args.reflection,
        "batch_size": args.batch_size,
        "steps": len(result.steps),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / len(steps), 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "pad_fraction": round(result.pad_fraction, 4),
        "gradient_checkpointing": args.gradient_checkpointing,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # ru_maxrss is KiB
        "loss_first": round(result.steps[0]["loss"], 4),
        "loss_last": round(result.steps[-1]["loss"], 4),
    }
    print(
        f"{out['tokens_per_s']} tokens/s, {out['seconds_per_step']} s/step, pad fraction {out['pad_fraction']:.1%}, "
        f"peak memory {out['peak_rss_gb']} GB"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
