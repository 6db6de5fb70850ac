"""The student's exam: batched generation over questions, graded answers, plain records for the store.

Decoding is a small loop of our own around the model's forward pass (KV cache, left padding with
explicit position ids) rather than `model.generate`, for two reasons:
- sampling draws from one `torch.Generator` per (seed, example id, sample index), so a sample does
  not depend on which other questions share its batch;
- rows that have finished (EOS or a stop string) leave the batch at once instead of decoding padding
  until the longest answer is done.
Greedy rows compute exactly what one-at-a-time decoding computes; only float rounding of the batched
matrix products differs, which can flip an argmax between two near-equal logits (rare; measured by
scripts/bench_exam.py).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from tutorloop.actors.models import adapter_from_bytes, attach_adapter, load_student
from tutorloop.loop.answers import answers_match, extract_answer
from tutorloop.loop.config import StudentSection
from tutorloop.loop.student_prompt import student_prompt
from tutorloop.loop.datasets import Example

EXAM_MODES = ("answer", "explain")


def sample_seed(seed: int, example_id: str, sample_index: int) -> int:
    """Seed of one sampled answer, independent of batching and of the other questions."""
    digest = hashlib.sha256(f"{seed}|{example_id}|{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class DecodeSettings:
    max_new_tokens: int
    stop: list[str]
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def cut_at_stop(text: str, stop: list[str]) -> str:
    """Text before the earliest stop string."""
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if s and pos != -1:
            cut = min(cut, pos)
    return text[:cut]


def _sample_row(logits: torch.Tensor, settings: DecodeSettings, generator: torch.Generator) -> int:
    probs = torch.softmax(logits.float().cpu() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= settings.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def decode_batch(model, tokenizer, prompts: list[list[int]], settings: DecodeSettings,
                 seeds: list[int] | None = None) -> list[list[int]]:
    """Generated token ids for each prompt (EOS excluded), ending at EOS, a stop string or the token limit."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    limit = settings.max_new_tokens if max_pos is None else min(settings.max_new_tokens, max_pos - width)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    # Left padding: positions count real tokens only, so a padded row sees the positions it sees alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generators = None
    if not settings.greedy:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
    # Stop strings are found by decoding only the tail of a row: a stop string of n characters
    # spans at most n tokens (+ slack for byte-level pieces).
    tail = max([len(s) for s in settings.stop] + [1]) + 4
    outputs: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))  # original row index of each row still in the batch
    cache = DynamicCache()
    step_ids, step_pos = input_ids, positions
    for _ in range(max(limit, 0)):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]
        if settings.greedy:
            next_tokens = logits.argmax(-1).tolist()
        else:
            next_tokens = [_sample_row(logits[i], settings, generators[row]) for i, row in enumerate(active)]
        keep = []
        for i, (row, token) in enumerate(zip(active, next_tokens)):
            if token in eos:
                continue
            outputs[row].append(token)
            recent = tokenizer.decode(outputs[row][-tail:], skip_special_tokens=True)
            if any(s and s in recent for s in settings.stop):
                continue
            keep.append(i)
        if not keep:
            break
        last_pos = step_pos[:, -1:] + 1
        token_tensor = torch.tensor(next_tokens, device=device).unsqueeze(-1)
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, last_pos, token_tensor = mask[index], last_pos[index], token_tensor[index]
            active = [active[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=-1)
        step_ids, step_pos = token_tensor, last_pos
    return outputs


class Examiner:
    """Runs exams for one student (base model loaded once; adapters swapped in place)."""

    def __init__(self, student_cfg: StudentSection, answer_type: str, seed: int = 0) -> None:
        self.cfg = student_cfg
        self.answer_type = answer_type
        self.base, self.tokenizer = load_student(student_cfg, seed=seed)
        self.model = self.base
        self._adapter_key: str | None = None
        self._count = 0

    def set_adapter(self, adapter: bytes | None) -> None:
        """Use this peft adapter (bytes) from now on, or the bare base with None; the base is not reloaded."""
        key = None if adapter is None else hashlib.sha256(adapter).hexdigest()
        if key == self._adapter_key:
            return
        if adapter is None:
            self.base = self.model.unload()  # drops the LoRA layers without merging them
            self.model = self.base
        elif self.model is self.base:
            self.model = attach_adapter(self.base, adapter, adapter_name="a0")
        else:
            self._count += 1
            name, old = f"a{self._count}", self.model.active_adapter
            with tempfile.TemporaryDirectory() as tmp:
                self.model.load_adapter(str(adapter_from_bytes(adapter, tmp)), adapter_name=name)
            self.model.set_adapter(name)
            self.model.delete_adapter(old)
        self.model.eval()
        self._adapter_key = key

    def run(self, examples: list[Example], mode: str, num_samples: int = 1, greedy: bool = True,
            seed: int = 0, batch_size: int | None = None) -> list[dict[str, Any]]:
        """One record per (example, sample index), in input order; greedy decodes each question once."""
        if mode not in EXAM_MODES:
            raise ValueError(f"exam mode must be one of {EXAM_MODES}, got {mode!r}")
        gen = self.cfg.generation
        settings = DecodeSettings(max_new_tokens=gen.max_new_tokens, stop=list(gen.stop),
                                  greedy=greedy or gen.temperature == 0, temperature=gen.temperature, top_p=gen.top_p)
        prompts = [self.tokenizer(student_prompt(ex.question, mode)).input_ids for ex in examples]
        draws = 1 if settings.greedy else num_samples
        rows = [(i, k) for i in range(len(examples)) for k in range(draws)]
        # Similar prompt lengths share a batch so little padding is computed.
        rows.sort(key=lambda r: len(prompts[r[0]]))
        size = batch_size or gen.batch_size
        generated: dict[tuple[int, int], list[int]] = {}
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            seeds = [sample_seed(seed, examples[i].id, k) for i, k in chunk]
            outs = decode_batch(self.model, self.tokenizer, [prompts[i] for i, _ in chunk], settings, seeds)
            generated.update(zip(chunk, outs))
        records = []
        for i, ex in enumerate(examples):
            for k in range(num_samples):
                tokens = generated[(i, 0 if settings.greedy else k)]
                text = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), settings.stop)
                extracted = extract_answer(text, self.answer_type)
                records.append({
                    "example_id": ex.id, "sample_index": k, "mode": mode, "output": text,
                    "extracted": extracted, "correct": answers_match(extracted, ex.answer, self.answer_type),
                    "prompt_tokens": len(prompts[i]), "output_tokens": len(tokens),
                })
        return records
