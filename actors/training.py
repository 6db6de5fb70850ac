"""LoRA training of the student: multi-task samples plus self-reflection contrast pairs, resumable.

The records are tokenized by train_data.py; the steps come from train_batches.py: with
`training.loss_balance: per_task` every optimizer step holds answer samples, explanation samples and
(when there are any) contrast pairs, each in its own length-grouped micro-batches, and its loss is
alpha * L_answer + (1 - alpha) * L_explain + reflection_weight * L_contrast (losses.py says why).
With `token`, micro-batches of `batch_size` samples or pairs, `grad_accum` per step, as before. The
whole data order follows from the seed (per round: the engine passes one derived from the run seed
and the round) and is stored in every checkpoint.

Checkpoints (every `checkpoint_every` steps and at the end) hold adapter, optimizer, scheduler, step,
RNG states, data order, the DPO reference log-likelihoods and the step records, under a hash of
everything that defines the training; a later call with the same inputs resumes from the newest one
and reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch

from tutorloop.actors.losses import (
    ANSWER_TASK,
    dpo_loss,
    last_token_states,
    multitask_loss,
    sequence_logprob,
    step_coefficients,
    task_coefficient,
    task_group,
    task_totals,
    token_nll,
    triplet_loss,
    weighted_task_loss,
)
from tutorloop.actors.models import adapter_from_bytes, adapter_to_bytes, allow_bitsandbytes, load_student
from tutorloop.actors.train_batches import Step, per_task_plan, token_plan
from tutorloop.actors.train_data import PAIR_KEYS, SAMPLE_KEYS, Encoded, TrainData, TrainEncoder
from tutorloop.actors.train_state import Checkpoints, TrainState
from tutorloop.loop.core.config import StudentSection, TrainingSection
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.records import ContrastPairRecord, SampleRecord, TrainStepRecord

MAX_GRAD_NORM = 1.0

# Equivalent module names across architectures, used when the configured LoRA targets are absent.
_LLAMA_TO_GPT2 = {
    "q_proj": "c_attn",
    "k_proj": "c_attn",
    "v_proj": "c_attn",
    "o_proj": "c_proj",
    "gate_proj": "c_fc",
    "up_proj": "c_fc",
    "down_proj": "c_proj",
}
_GPT2_TO_LLAMA = {
    "c_attn": ["q_proj", "k_proj", "v_proj"],
    "c_proj": ["o_proj", "down_proj"],
    "c_fc": ["gate_proj", "up_proj"],
}


@dataclass
class TrainResult:
    adapter: bytes
    steps: list[TrainStepRecord] = field(default_factory=list)

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


def warmup_then_decay(step: int, warmup: int, total: int) -> float:
    """lr factor of a step: a linear warm-up whose first step already moves ((step + 1) / (warmup + 1)),
    then a linear decay from 1 towards 0 over the remaining steps."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


class LoraTrainer:
    """Trains a LoRA adapter on the student; one instance can run several trainings."""

    def __init__(self, student_cfg: StudentSection, training_cfg: TrainingSection, seed: int = 0) -> None:
        self.student_cfg = student_cfg
        self.cfg = training_cfg
        self.seed = seed  # the default of `train(seed=...)`
        self.encoder = TrainEncoder(student_cfg, training_cfg.max_length)
        allow_bitsandbytes(student_cfg.quantization != "none")  # before peft or transformers look for it

    # ------------------------------------------------------------ data order

    def plan(self, data: TrainData, seed: int) -> list[Step]:
        """The steps of a training on `data` (see train_batches.py). Per task, a task whose coefficient
        is 0 (alpha 0 or 1) is left out: it would add nothing but compute."""
        cfg = self.cfg
        pair_lengths = {i: sum(len(x.ids) for x in p) for i, p in enumerate(data.pairs)}
        if cfg.loss_balance == "token":
            return token_plan(
                [len(e.ids) for e in data.samples],
                list(pair_lengths.values()),
                cfg.batch_size,
                cfg.grad_accum,
                cfg.epochs,
                seed,
            )
        groups: dict[str, dict[int, int]] = {ANSWER_TASK: {}, "explain": {}}
        for i, (enc, rec) in enumerate(zip(data.samples, data.records)):
            group = task_group(rec["task"])
            if task_coefficient(group, cfg.alpha) > 0:
                groups[group][i] = len(enc.ids)
        groups["pair"] = pair_lengths
        if not any(groups.values()):
            raise ConfigError(
                f"training.alpha {cfg.alpha}: it gives no weight to the task of these samples "
                f"(alpha 1 trains answers only, alpha 0 explanations only)"
            )
        return per_task_plan(groups, cfg.batch_size, cfg.grad_accum, cfg.epochs, seed)

    # ------------------------------------------------------------ model

    def _build_model(self, init_adapter: bytes | None, seed: int | None = None):
        from peft import LoraConfig, PeftModel, get_peft_model

        # The seed fixes a fresh LoRA's initialisation and, through torch's RNG, the dropout masks.
        model, _ = load_student(self.student_cfg, for_training=True, seed=self.seed if seed is None else seed)
        if self.cfg.gradient_checkpointing:
            # Non-reentrant: works with frozen embeddings (LoRA) and keeps dropout's RNG on recompute.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if init_adapter is not None:
            with tempfile.TemporaryDirectory() as tmp:
                folder = adapter_from_bytes(init_adapter, tmp)
                model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
        else:
            lora = self.student_cfg.lora
            config = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                bias="none",
                task_type="CAUSAL_LM",
                target_modules=resolve_target_modules(model, lora.target_modules),
            )
            model = get_peft_model(model, config)
        model.train()
        return model

    # ------------------------------------------------------------ training

    def _input_hash(
        self, samples: list[SampleRecord], pairs: list[ContrastPairRecord], init_adapter: bytes | None, seed: int
    ) -> str:
        payload = {
            "samples": [[s[k] for k in SAMPLE_KEYS] for s in samples],
            "pairs": [[p[k] for k in PAIR_KEYS] for p in pairs],
            "init": hashlib.sha256(init_adapter).hexdigest() if init_adapter else None,
            # Keys that change neither the data nor the math may change between a kill and its resume.
            "training": self.cfg.model_dump(mode="json", exclude={"checkpoint_every", "gradient_checkpointing"}),
            "student": self.student_cfg.model_dump(mode="json", exclude={"generation", "eval_modes", "exam_mode"}),
            "seed": seed,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def train(
        self,
        samples: list[SampleRecord],
        pairs: list[ContrastPairRecord],
        init_adapter: bytes | None = None,
        checkpoint_dir: str | None = None,
        on_step: Callable[[TrainStepRecord], None] | None = None,
        on_plan: Callable[[int, int], None] | None = None,
        seed: int | None = None,
        on_checkpoint: Callable[[Checkpoints], None] | None = None,
    ) -> TrainResult:
        """Train and return the adapter (bytes of a peft save_pretrained folder) and per-step records.

        samples: {"example_id", "task", "input", "target", "weight"} (input = student_prompt, target =
        student_target). pairs: {"example_id", "input", "anchor", "positive", "negative"}; a None
        positive falls back to the anchor. Pairs are ignored when training.reflection is "none".
        Samples or pairs with no target token left after max_length truncation are skipped.
        `seed` (default: the trainer's) sets the data order, a fresh LoRA's initialisation and dropout;
        the engine passes one per round.

        `on_plan(total_steps, steps_already_done)` is called once before training (the second number is
        non-zero after a resume); `on_step(record)` after each optimizer step; `on_checkpoint(checkpoints)`
        after each checkpoint is saved in `checkpoint_dir` (the trainer actor sends it to the driver).
        """
        seed = self.seed if seed is None else seed
        pairs = pairs if self.cfg.reflection != "none" else []
        data = self.encoder.encode_all(samples, pairs)
        input_hash = self._input_hash(samples, pairs, init_adapter, seed)
        state = self._start(init_adapter, self.plan(data, seed), seed)
        ckpt = Checkpoints(checkpoint_dir) if checkpoint_dir else None
        if ckpt:
            state.resume(ckpt.load(input_hash))
        device = next(state.model.parameters()).device
        if self.cfg.reflection == "dpo" and data.pairs and state.reference is None:
            state.reference = self._reference_logprobs(state.model, data, device)
        if on_plan:
            on_plan(state.total_steps, state.done)
        t0 = time.perf_counter() - state.elapsed_before
        for step in range(state.done, state.total_steps):
            record = self._step(state, data, step, device)
            record["elapsed_s"] = time.perf_counter() - t0
            state.steps.append(record)
            if ckpt and ((step + 1) % self.cfg.checkpoint_every == 0 or step + 1 == state.total_steps):
                ckpt.save(state, input_hash)
                if on_checkpoint:
                    on_checkpoint(ckpt)
            if on_step:
                on_step(record)
        return self._finish(state)

    def _start(self, init_adapter: bytes | None, order: list[Step], seed: int) -> TrainState:
        """A fresh model with its LoRA adapter, optimizer and warm-up/linear-decay schedule."""
        total_steps = len(order)
        model = self._build_model(init_adapter, seed)
        params = [p for p in model.parameters() if p.requires_grad]
        # A fresh AdamW every round, while the adapter continues: each round is a new fine-tuning on a
        # new mix (tailored mistakes, replay) with its own warm-up and decay; moments estimated on the
        # previous round's data would set this round's first step sizes, and carrying them would tie a
        # round to optimizer files the run history does not keep. The warm-up lets the new moments settle.
        lr = self.cfg.tailored_lr if init_adapter is not None and self.cfg.tailored_lr else self.cfg.lr
        optim = torch.optim.AdamW(params, lr=lr, weight_decay=self.cfg.weight_decay)
        warmup = min(max(round(self.cfg.warmup_ratio * total_steps), self.cfg.warmup_steps_min), total_steps - 1)
        sched = torch.optim.lr_scheduler.LambdaLR(optim, partial(warmup_then_decay, warmup=warmup, total=total_steps))
        return TrainState(model, params, optim, sched, order, total_steps)

    def _step(self, state: TrainState, data: TrainData, step: int, device) -> TrainStepRecord:
        """One optimizer step over its micro-batches; its record (without elapsed_s)."""
        micro = state.order[step]
        shares = self._shares(micro, data)
        pairs_in_step = sum(len(idx) for kind, idx in micro if kind == "pair")
        task_values: dict[str, list[float]] = {}  # task -> [summed NLL, tokens]
        contrast = [0.0, 0]  # summed contrast loss over pairs, pairs
        total_loss, tokens, pads = 0.0, 0, 0
        lr = state.sched.get_last_lr()[0]
        for kind, idx in micro:
            if kind == "pair":
                raw, n_tok, n_pad = self._pair_loss(state, idx, data, device)
                contrast[0], contrast[1] = contrast[0] + raw.item() * len(idx), contrast[1] + len(idx)
                # Token level: a mean over the step's micro-batches, as before; per task: over its pairs.
                scale = 1 / len(micro) if self.cfg.loss_balance == "token" else len(idx) / pairs_in_step
                loss = self.cfg.reflection_weight * raw * scale
            elif kind in shares:
                loss, per_task, n_tok, n_pad = self._sample_loss(state.model, data, idx, device, shares[kind])
                for task, (total, count) in per_task.items():
                    acc = task_values.setdefault(task, [0.0, 0])
                    acc[0], acc[1] = acc[0] + total, acc[1] + count
            else:
                continue  # a task whose samples in this step all weigh 0
            loss.backward()
            total_loss += loss.item()
            tokens += n_tok
            pads += n_pad
        torch.nn.utils.clip_grad_norm_(state.params, MAX_GRAD_NORM)
        state.optim.step()
        state.sched.step()
        state.optim.zero_grad(set_to_none=True)
        last = step + 1 == state.total_steps
        return {
            "step": step + 1,
            "epoch": self.cfg.epochs if last else (step + 1) * self.cfg.epochs / state.total_steps,
            "lr": lr,
            "loss": total_loss,
            "task_losses": {t: total / max(1, count) for t, (total, count) in sorted(task_values.items())},
            "contrast_loss": contrast[0] / contrast[1] if contrast[1] else None,
            "tokens": tokens,
            "pad_fraction": pads / max(1, pads + tokens),
        }

    def _shares(self, micro: Step, data: TrainData) -> dict[str, tuple[float, float]]:
        """(coefficient, denominator) of each sample kind's micro-batches in this step.

        Per task: the task's coefficient (losses.step_coefficients) and sum_i w_i * n_i over the task's
        samples in the step; a task whose samples all weigh 0 is left out. Token level: (1, micro-batches
        in the step), as before."""
        if self.cfg.loss_balance == "token":
            return {"sample": (1.0, float(len(micro)))}
        totals: dict[str, float] = {}
        for kind, idx in micro:
            if kind != "pair":
                weighted = sum(float(data.records[i]["weight"]) * data.samples[i].targets for i in idx)
                totals[kind] = totals.get(kind, 0.0) + weighted
        coefficients = step_coefficients({kind for kind, total in totals.items() if total > 0}, self.cfg.alpha)
        return {kind: (coefficient, totals[kind]) for kind, coefficient in coefficients.items()}

    def _finish(self, state: TrainState) -> TrainResult:
        state.model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            state.model.save_pretrained(tmp)
            return TrainResult(adapter=adapter_to_bytes(tmp), steps=state.steps)

    # ------------------------------------------------------------ loss terms

    def _sample_loss(self, model, data: TrainData, idx: list[int], device, share: tuple[float, float]):
        """A sample micro-batch's loss term (see _shares), per task its raw (NLL, tokens), real and pad tokens."""
        ids, mask, labels, real, pad = self.encoder.collate([data.samples[i] for i in idx], device)
        nll_sum, counts = token_nll(*target_logits(model, ids, mask, labels))
        records = [data.records[i] for i in idx]
        tasks, weights = [r["task"] for r in records], [float(r["weight"]) for r in records]
        if self.cfg.loss_balance == "token":
            loss, per_task = multitask_loss(nll_sum, counts, tasks, weights, self.cfg.alpha, data.mean_target)
            return loss * share[0] / share[1], per_task, real, pad
        return weighted_task_loss(nll_sum, weights, *share), task_totals(nll_sum, counts, tasks), real, pad

    def _per_sequence(self, model, encoded: list[Encoded], device, hidden: bool):
        """Last-token hidden state (hidden=True) or target log-likelihood of each sequence, in input order.

        The sequences are sorted by length and run in three forward passes (as many as one per role),
        so anchors, positives and negatives of similar length share a pass and padding stays low.
        """
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        size = max(1, math.ceil(len(encoded) / 3))
        values: list[torch.Tensor | None] = [None] * len(encoded)
        real = pad = 0
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            ids, mask, labels, r, p = self.encoder.collate([encoded[i] for i in idx], device)
            real, pad = real + r, pad + p
            if hidden:
                states = model(
                    input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1
                ).hidden_states[-1]
                out = last_token_states(states, mask)
            else:
                out = sequence_logprob(*target_logits(model, ids, mask, labels))
            for j, i in enumerate(idx):
                values[i] = out[j]
        return torch.stack(values), real, pad

    def _reference_logprobs(self, model, data: TrainData, device) -> torch.Tensor:
        """DPO's reference: [pairs, 3] log-likelihoods of anchor, positive and negative under the policy
        the training starts from (the init adapter, or the base model under a fresh LoRA, which starts
        as the identity), computed once without dropout: TRL's precompute_ref_log_probs."""
        model.eval()
        rows = []
        with torch.no_grad():
            for start in range(0, len(data.pairs), self.cfg.batch_size):
                chunk = data.pairs[start : start + self.cfg.batch_size]
                values, _, _ = self._per_sequence(
                    model, [e[role] for role in range(3) for e in chunk], device, hidden=False
                )
                rows.append(values.view(3, len(chunk)).T)
        model.train()
        return torch.cat(rows).float().cpu()

    def _pair_loss(self, state: TrainState, idx: list[int], data: TrainData, device):
        """Reflection loss of a micro-batch of (anchor, positive, negative) triples, with real and pad tokens."""
        model, n = state.model, len(idx)
        flat = [data.pairs[i][role] for role in range(3) for i in idx]  # all anchors, positives, negatives
        if self.cfg.reflection == "triplet":
            states, real, pad = self._per_sequence(model, flat, device, hidden=True)
            return (
                triplet_loss(states[:n], states[n : 2 * n], states[2 * n :], margin=self.cfg.reflection_margin),
                real,
                pad,
            )
        # DPO: the anchor (teacher) and the positive rationale are both preferred over the negative one,
        # against the frozen starting policy's log-likelihoods.
        policy, real, pad = self._per_sequence(model, flat, device, hidden=False)
        ref = state.reference[idx].to(policy.device).T.reshape(-1)
        beta = self.cfg.dpo_beta
        loss = (
            dpo_loss(policy[:n], policy[2 * n :], ref[:n], ref[2 * n :], beta)
            + dpo_loss(policy[n : 2 * n], policy[2 * n :], ref[n : 2 * n], ref[2 * n :], beta)
        ) / 2
        return loss, real, pad


def target_logits(
    model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from the position before the batch's first target token on, with the matching labels.

    The prompt positions carry no loss; skipping their output projection (a 49k-word vocabulary for
    SmolLM2) and softmax saves a large share of the step, most of all for short answer targets.
    """
    columns = (labels != -100).any(dim=0).nonzero()
    keep = labels.shape[1] - int(columns[0]) + 1 if len(columns) else 1
    return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits, labels[:, -keep:]
