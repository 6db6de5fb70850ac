"""Export: base + LoRA adapter merged into one plain `save_pretrained` folder (with its tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from tutorloop.actors.models import load_student, pick_device, pick_dtype
from tutorloop.loop.core.config import StudentSection


def merge_adapter(student_cfg: StudentSection, adapter: bytes | str, out_dir: str | Path) -> Path:
    """Merge `adapter` (bytes or a peft folder) into the student's base and save the result to `out_dir`.

    A quantized (4/8-bit) or GGUF base is merged into its full-precision weights: LoRA deltas cannot be
    folded into quantized weights without re-quantizing, and a plain folder is what other tools load.
    """
    dtype = pick_dtype(student_cfg, pick_device(student_cfg))
    if student_cfg.quantization != "none" and dtype == torch.float16:
        dtype = torch.float32
    model, tokenizer = load_student(student_cfg, adapter=adapter, quantization="none", dtype=dtype)
    merged = model.merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
