"""LoRA training of the student: multi-task samples plus self-reflection contrast pairs, resumable.

One optimizer step = `grad_accum` micro-batches. A micro-batch is either `batch_size` samples
(multi-task loss, see losses.py) or `batch_size` contrast pairs (reflection loss times
`reflection_weight`). Both kinds are grouped by length (shuffle, then sort inside chunks of 64
batches) and the micro-batches of an epoch are shuffled together, so contrast pairs are spread over
the epoch. The whole data order follows from the seed and is stored in every checkpoint.

Checkpoints (every `checkpoint_every` steps and at the end) hold adapter, optimizer, scheduler, step,
RNG states, data order and the step records, under a hash of everything that defines the training;
a later call with the same inputs resumes from the newest one and reaches the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from tutorloop.actors.losses import (dpo_loss, last_token_states, multitask_loss, sequence_logprob, token_nll,
                                     triplet_loss)
from tutorloop.actors.models import (adapter_from_bytes, adapter_to_bytes, allow_bitsandbytes, load_student,
                                     load_tokenizer, student_source)
from tutorloop.actors.train_state import Checkpoints, TrainState
from tutorloop.loop.config import StudentSection, TrainingSection
from tutorloop.loop.errors import ConfigError

SAMPLE_KEYS = ("example_id", "task", "input", "target", "weight")
PAIR_KEYS = ("example_id", "input", "anchor", "positive", "negative")
PAIR_ROLES = ("anchor", "positive", "negative")
SORT_CHUNK_BATCHES = 64
MAX_GRAD_NORM = 1.0

# Equivalent module names across architectures, used when the configured LoRA targets are absent.
_LLAMA_TO_GPT2 = {"q_proj": "c_attn", "k_proj": "c_attn", "v_proj": "c_attn", "o_proj": "c_proj",
                  "gate_proj": "c_fc", "up_proj": "c_fc", "down_proj": "c_proj"}
_GPT2_TO_LLAMA = {"c_attn": ["q_proj", "k_proj", "v_proj"], "c_proj": ["o_proj", "down_proj"],
                  "c_fc": ["gate_proj", "up_proj"]}


@dataclass
class TrainResult:
    adapter: bytes
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pad_fraction(self) -> float:
        pads = sum(s["pad_fraction"] / max(1e-9, 1 - s["pad_fraction"]) * s["tokens"] for s in self.steps)
        real = sum(s["tokens"] for s in self.steps)
        return pads / max(1.0, pads + real)


def resolve_target_modules(model, wanted: list[str] | str) -> list[str] | str:
    """The configured LoRA target names, translated between llama-style and gpt2-style names if absent."""
    if wanted == "all-linear":
        return wanted
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [w for w in wanted if w in present]
    if found:
        return found
    translated: list[str] = []
    for w in wanted:
        options = _GPT2_TO_LLAMA.get(w, []) + ([_LLAMA_TO_GPT2[w]] if w in _LLAMA_TO_GPT2 else [])
        translated += [o for o in options if o in present and o not in translated]
    if not translated:
        raise ConfigError(f"student.lora.target_modules {wanted}: none of these modules exist in the model")
    return translated


def _check_records(records: list[dict], keys: tuple[str, ...], what: str) -> None:
    for i, rec in enumerate(records):
        missing = [k for k in keys if k not in rec]
        if missing:
            raise ValueError(f"training {what}[{i}]: missing keys {missing}")


@dataclass
class _Encoded:
    ids: list[int]
    labels: list[int]


@dataclass
class _Data:
    """A training's tokenized records: samples (with their records) and (anchor, positive, negative) pairs."""

    samples: list[_Encoded] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    pairs: list[tuple[_Encoded, _Encoded, _Encoded]] = field(default_factory=list)
    mean_target: float = 0.0  # mean target tokens (+ EOS) per sample: the multi-task loss's constant


class LoraTrainer:
    """Trains a LoRA adapter on the student; one instance can run several trainings."""

    def __init__(self, student_cfg: StudentSection, training_cfg: TrainingSection, seed: int = 0) -> None:
        self.student_cfg = student_cfg
        self.cfg = training_cfg
        self.seed = seed
        self._tokenizer = None
        allow_bitsandbytes(student_cfg.quantization != "none")  # before peft or transformers look for it

    # ------------------------------------------------------------ data

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(student_source(self.student_cfg))
        return self._tokenizer

    def encode(self, prompt: str, target: str) -> _Encoded | None:
        """Prompt tokens (tokenized alone, as the exam does) + target tokens + EOS; loss on the target only.
        Truncated to max_length from the end; None when no target token is left."""
        tok = self.tokenizer
        prompt_ids = tok(prompt).input_ids
        target_ids = tok(target, add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = (prompt_ids + target_ids)[: self.cfg.max_length]
        if len(ids) <= len(prompt_ids):
            return None
        return _Encoded(ids, [-100] * len(prompt_ids) + ids[len(prompt_ids):])

    def _batches(self, lengths: list[int], rng: random.Random) -> list[list[int]]:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        size = self.cfg.batch_size
        chunk = size * SORT_CHUNK_BATCHES
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
            batches += [part[j:j + size] for j in range(0, len(part), size)]
        return batches

    def plan(self, sample_lengths: list[int], pair_lengths: list[int]) -> list[tuple[str, list[int]]]:
        """Micro-batches in training order: ("s", sample indices) or ("p", pair indices)."""
        epochs = math.ceil(self.cfg.epochs)
        order: list[tuple[str, list[int]]] = []
        per_epoch = 0
        for epoch in range(epochs):
            rng = random.Random(f"tutorloop-train/{self.seed}/{epoch}")
            batches = [("s", b) for b in self._batches(sample_lengths, rng)]
            batches += [("p", b) for b in self._batches(pair_lengths, rng)]
            rng.shuffle(batches)
            per_epoch = len(batches)
            order += batches
        total = max(1, round(self.cfg.epochs * per_epoch))
        return order[:total]

    # ------------------------------------------------------------ model

    def _build_model(self, init_adapter: bytes | None):
        from peft import LoraConfig, PeftModel, get_peft_model

        model, _ = load_student(self.student_cfg, for_training=True, seed=self.seed)
        if self.cfg.gradient_checkpointing:
            # Non-reentrant: works with frozen embeddings (LoRA) and keeps dropout's RNG on recompute.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if init_adapter is not None:
            with tempfile.TemporaryDirectory() as tmp:
                folder = adapter_from_bytes(init_adapter, tmp)
                model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
        else:
            lora = self.student_cfg.lora
            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                                task_type="CAUSAL_LM",
                                target_modules=resolve_target_modules(model, lora.target_modules))
            model = get_peft_model(model, config)
        model.train()
        return model

    # ------------------------------------------------------------ training

    def _input_hash(self, samples: list[dict], pairs: list[dict], init_adapter: bytes | None) -> str:
        payload = {
            "samples": [[s[k] for k in SAMPLE_KEYS] for s in samples],
            "pairs": [[p[k] for k in PAIR_KEYS] for p in pairs],
            "init": hashlib.sha256(init_adapter).hexdigest() if init_adapter else None,
            # Keys that change neither the data nor the math may change between a kill and its resume.
            "training": self.cfg.model_dump(mode="json", exclude={"checkpoint_every", "gradient_checkpointing"}),
            "student": self.student_cfg.model_dump(mode="json", exclude={"generation", "eval_modes", "exam_mode"}),
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def train(self, samples: list[dict], pairs: list[dict], init_adapter: bytes | None = None,
              checkpoint_dir: str | None = None, on_step: Callable[[dict], None] | None = None,
              on_plan: Callable[[int, int], None] | None = None) -> TrainResult:
        """Train and return the adapter (bytes of a peft save_pretrained folder) and per-step records.

        samples: {"example_id", "task", "input", "target", "weight"} (input = student_prompt, target =
        student_target). pairs: {"example_id", "input", "anchor", "positive", "negative"}; a None
        positive falls back to the anchor. Pairs are ignored when training.reflection is "none".
        Samples or pairs with no target token left after max_length truncation are skipped.

        `on_plan(total_steps, steps_already_done)` is called once before training (the second number is
        non-zero after a resume); `on_step(record)` after each optimizer step.
        """
        pairs = pairs if self.cfg.reflection != "none" else []
        data = self._encode_all(samples, pairs)
        input_hash = self._input_hash(samples, pairs, init_adapter)
        order = self.plan([len(e.ids) for e in data.samples], [sum(len(x.ids) for x in e) for e in data.pairs])
        state = self._start(init_adapter, order)
        ckpt = Checkpoints(checkpoint_dir) if checkpoint_dir else None
        if ckpt:
            state.resume(ckpt.load(input_hash))
        if on_plan:
            on_plan(state.total_steps, state.done)
        device = next(state.model.parameters()).device
        t0 = time.perf_counter() - state.elapsed_before
        for step in range(state.done, state.total_steps):
            record = self._step(state, data, step, device)
            record["elapsed_s"] = time.perf_counter() - t0
            state.steps.append(record)
            if ckpt and ((step + 1) % self.cfg.checkpoint_every == 0 or step + 1 == state.total_steps):
                ckpt.save(state, input_hash)
            if on_step:
                on_step(record)
        return self._finish(state)

    def _encode_all(self, samples: list[dict], pairs: list[dict]) -> _Data:
        """The records checked and tokenized; those without a target token within max_length left out."""
        _check_records(samples, SAMPLE_KEYS, "samples")
        _check_records(pairs, PAIR_KEYS, "pairs")
        data = _Data()
        for s in samples:
            enc = self.encode(s["input"], s["target"])
            if enc is not None:
                data.samples.append(enc)
                data.records.append(s)
        for p in pairs:
            triple = tuple(self.encode(p["input"], p[role] or p["anchor"]) for role in PAIR_ROLES)
            if all(x is not None for x in triple):
                data.pairs.append(triple)
        if not data.samples and not data.pairs:
            raise ValueError("training: no samples or contrast pairs with target tokens within max_length")
        data.mean_target = sum(sum(x != -100 for x in e.labels) for e in data.samples) / max(1, len(data.samples))
        return data

    def _start(self, init_adapter: bytes | None, order: list[tuple[str, list[int]]]) -> TrainState:
        """A fresh model with its LoRA adapter, optimizer and warm-up/linear-decay schedule."""
        total_steps = math.ceil(len(order) / self.cfg.grad_accum)
        model = self._build_model(init_adapter)
        from transformers import get_linear_schedule_with_warmup

        params = [p for p in model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = get_linear_schedule_with_warmup(optim, round(self.cfg.warmup_ratio * total_steps), total_steps)
        return TrainState(model, params, optim, sched, order, total_steps)

    def _step(self, state: TrainState, data: _Data, step: int, device) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches; its record (without elapsed_s)."""
        accum = self.cfg.grad_accum
        micro = state.order[step * accum:(step + 1) * accum]
        task_values: dict[str, list[float]] = {}  # task -> [summed NLL, tokens]
        contrast: list[float] = []
        total_loss, tokens, pads = 0.0, 0, 0
        lr = state.sched.get_last_lr()[0]
        for kind, idx in micro:
            if kind == "s":
                loss, per_task, n_tok, n_pad = self._sample_loss(
                    state.model, [data.samples[i] for i in idx], [data.records[i] for i in idx], device,
                    data.mean_target)
                for task, (total, count) in per_task.items():
                    acc = task_values.setdefault(task, [0.0, 0])
                    acc[0], acc[1] = acc[0] + total, acc[1] + count
            else:
                raw, n_tok, n_pad = self._pair_loss(state.model, [data.pairs[i] for i in idx], device)
                contrast.append(raw.item())
                loss = self.cfg.reflection_weight * raw
            (loss / len(micro)).backward()
            total_loss += loss.item() / len(micro)
            tokens += n_tok
            pads += n_pad
        torch.nn.utils.clip_grad_norm_(state.params, MAX_GRAD_NORM)
        state.optim.step()
        state.sched.step()
        state.optim.zero_grad(set_to_none=True)
        last = step + 1 == state.total_steps
        return {
            "step": step + 1,
            "epoch": self.cfg.epochs if last else (step + 1) * accum / (len(state.order) / self.cfg.epochs),
            "lr": lr,
            "loss": total_loss,
            "task_losses": {t: total / max(1, count) for t, (total, count) in sorted(task_values.items())},
            "contrast_loss": sum(contrast) / len(contrast) if contrast else None,
            "tokens": tokens,
            "pad_fraction": pads / max(1, pads + tokens),
        }

    def _finish(self, state: TrainState) -> TrainResult:
        state.model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            state.model.save_pretrained(tmp)
            return TrainResult(adapter=adapter_to_bytes(tmp), steps=state.steps)

    # ------------------------------------------------------------ loss terms

    def _collate(self, encoded: list[_Encoded], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """Right-padded ids, attention mask, labels; plus real and pad token counts."""
        width = max(len(e.ids) for e in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([e.ids + [pad] * (width - len(e.ids)) for e in encoded], device=device)
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encoded], device=device)
        labels = torch.tensor([e.labels + [-100] * (width - len(e.ids)) for e in encoded], device=device)
        real = int(mask.sum())
        return ids, mask, labels, real, mask.numel() - real

    def _sample_loss(self, model, encoded: list[_Encoded], records: list[dict], device, mean_target_tokens: float):
        ids, mask, labels, real, pad = self._collate(encoded, device)
        nll_sum, counts = token_nll(*target_logits(model, ids, mask, labels))
        loss, per_task = multitask_loss(nll_sum, counts, [r["task"] for r in records],
                                        [float(r["weight"]) for r in records], self.cfg.alpha, mean_target_tokens)
        return loss, per_task, real, pad

    def _per_sequence(self, model, encoded: list[_Encoded], device, hidden: bool):
        """Last-token hidden state (hidden=True) or target log-likelihood of each sequence, in input order.

        The sequences are sorted by length and run in three forward passes (as many as one per role),
        so anchors, positives and negatives of similar length share a pass and padding stays low.
        """
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        size = max(1, math.ceil(len(encoded) / 3))
        values: list[torch.Tensor | None] = [None] * len(encoded)
        real = pad = 0
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            ids, mask, labels, r, p = self._collate([encoded[i] for i in idx], device)
            real, pad = real + r, pad + p
            if hidden:
                states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                               logits_to_keep=1).hidden_states[-1]
                out = last_token_states(states, mask)
            else:
                out = sequence_logprob(*target_logits(model, ids, mask, labels))
            for j, i in enumerate(idx):
                values[i] = out[j]
        return torch.stack(values), real, pad

    def _pair_loss(self, model, encoded: list[tuple[_Encoded, _Encoded, _Encoded]], device):
        """Reflection loss of a micro-batch of (anchor, positive, negative) triples."""
        n = len(encoded)
        flat = [e[role] for role in range(3) for e in encoded]  # all anchors, then positives, then negatives
        if self.cfg.reflection == "triplet":
            states, real, pad = self._per_sequence(model, flat, device, hidden=True)
            return triplet_loss(states[:n], states[n:2 * n], states[2 * n:], margin=self.cfg.reflection_margin), real, pad
        # DPO: the anchor (teacher) and the positive rationale are both preferred over the negative one;
        # the reference is the same network with the adapter switched off.
        policy, real, pad = self._per_sequence(model, flat, device, hidden=False)
        with torch.no_grad(), model.disable_adapter():
            ref, _, _ = self._per_sequence(model, flat, device, hidden=False)
        beta = self.cfg.dpo_beta
        loss = (dpo_loss(policy[:n], policy[2 * n:], ref[:n], ref[2 * n:], beta)
                + dpo_loss(policy[n:2 * n], policy[2 * n:], ref[n:2 * n], ref[2 * n:], beta)) / 2
        return loss, real, pad


def target_logits(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from the position before the batch's first target token on, with the matching labels.

    The prompt positions carry no loss; skipping their output projection (a 49k-word vocabulary for
    SmolLM2) and softmax saves a large share of the step, most of all for short answer targets.
    """
    columns = (labels != -100).any(dim=0).nonzero()
    keep = labels.shape[1] - int(columns[0]) + 1 if len(columns) else 1
    return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits, labels[:, -keep:]
