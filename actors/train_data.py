"""A training's records as the student reads them: samples and (anchor, positive, negative) contrast pairs
tokenized as prompt + target + EOS with the loss on the target only, truncated at the student's positions,
and right-padded into tensors for a forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tutorloop.actors.models import load_tokenizer, position_limit, student_source
from tutorloop.loop.core.config import StudentSection
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.core.records import ContrastPairRecord, SampleRecord, columns

# What training reads of a sample: where its target came from changes nothing it learns.
SAMPLE_KEYS = tuple(key for key in columns(SampleRecord) if key != "source")
PAIR_KEYS = columns(ContrastPairRecord)
PAIR_ROLES = ("anchor", "positive", "negative")


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]

    @property
    def targets(self) -> int:
        """Target tokens that carry a loss (token_nll's shift leaves out position 0)."""
        return sum(x != -100 for x in self.labels[1:])


@dataclass
class TrainData:
    """A training's tokenized records: samples (with their records) and (anchor, positive, negative) pairs."""

    samples: list[Encoded] = field(default_factory=list)
    records: list[SampleRecord] = field(default_factory=list)
    pairs: list[tuple[Encoded, Encoded, Encoded]] = field(default_factory=list)
    mean_target: float = 0.0  # mean target tokens (+ EOS) per sample: the token-level loss's constant


def _check_records(records: list[dict], keys: tuple[str, ...], what: str) -> None:
    for i, rec in enumerate(records):
        missing = [k for k in keys if k not in rec]
        if missing:
            raise ValueError(f"training {what}[{i}]: missing keys {missing}")


class TrainEncoder:
    """Tokenizes a training's records for the student (tokenizer loaded on first use) and batches them."""

    def __init__(self, student_cfg: StudentSection, max_length: int) -> None:
        self.student_cfg = student_cfg
        self.max_length = max_length
        self._tokenizer = None
        self._max_tokens: int | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(student_source(self.student_cfg))
        return self._tokenizer

    @property
    def max_tokens(self) -> int:
        """training.max_length, capped at the student's positions: a longer sequence overflows a learned
        position table (the default tiny GPT-2 has 256), and the exam decodes within them too."""
        if self._max_tokens is None:
            limit = position_limit(student_source(self.student_cfg))
            self._max_tokens = min(self.max_length, limit or self.max_length)
        return self._max_tokens

    def encode(self, prompt: str, target: str) -> Encoded | None:
        """Prompt tokens (tokenized alone, as the exam does) + target tokens + EOS; loss on the target only.
        Truncated to `max_tokens` from the end; None when no target token is left."""
        tok = self.tokenizer
        prompt_ids = tok(prompt).input_ids
        target_ids = tok(target, add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = (prompt_ids + target_ids)[: self.max_tokens]
        if len(ids) <= len(prompt_ids):
            return None
        return Encoded(ids, [-100] * len(prompt_ids) + ids[len(prompt_ids) :])

    def encode_all(self, samples: list[SampleRecord], pairs: list[ContrastPairRecord]) -> TrainData:
        """The records checked and tokenized; those without a target token within max_length left out."""
        _check_records(samples, SAMPLE_KEYS, "samples")
        _check_records(pairs, PAIR_KEYS, "pairs")
        data = TrainData()
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
            raise ConfigError(
                f"training.max_length: no samples or contrast pairs keep a target token within "
                f"{self.max_tokens} tokens (training.max_length {self.max_length}, capped at "
                f"the student's positions, e.g. student.tiny.max_positions)"
            )
        data.mean_target = sum(sum(x != -100 for x in e.labels) for e in data.samples) / max(1, len(data.samples))
        return data

    def collate(self, encoded: list[Encoded], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """Right-padded ids, attention mask, labels; plus real and pad token counts."""
        width = max(len(e.ids) for e in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([e.ids + [pad] * (width - len(e.ids)) for e in encoded], device=device)
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encoded], device=device)
        labels = torch.tensor([e.labels + [-100] * (width - len(e.ids)) for e in encoded], device=device)
        real = int(mask.sum())
        return ids, mask, labels, real, mask.numel() - real
