"""The student's exam: batched generation over questions, graded answers, plain records for the store.

Decoding is a small loop of our own around the model's forward pass (KV cache, left padding with
explicit position ids) rather than `model.generate`, for two reasons:
- sampling draws from one `torch.Generator` per (seed, example id, sample index), so a sample does
  not depend on which other questions share its batch;
- continuous batching: a row that has finished (EOS, a stop string, the token limit) leaves the batch
  at once and the next question takes its place, so the batch stays full until the questions run
  out. `generate` keeps decoding padding for finished rows until its longest answer is done.
Greedy rows compute exactly what one-at-a-time decoding computes; only float rounding of the batched
matrix products differs, which can flip an argmax between two near-equal logits (rare; measured by
scripts/bench_exam.py)."""

from __future__ import annotations

import hashlib
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch

from tutorloop.actors.models import adapter_from_bytes, attach_adapter, load_student
from tutorloop.loop.core.answers import answers_match, extract_answer, extract_chat_answer
from tutorloop.loop.core.calculator import calculator_result
from tutorloop.loop.core.config import StudentSection
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.records import AttemptRecord
from tutorloop.loop.core.student_prompt import prompted_prompt, student_prompt

EXAM_MODES = ("answer", "explain", "prompted")
# A chat answer runs over paragraphs: only EOS, the token limit or a next question ends it.
PROMPTED_STOP = ["\nQ:", "\nQuestion:"]


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
    calculator: bool = False  # write the exact result after "<arithmetic> =" (loop/core/calculator.py)


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


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """`t` grown to `length` along `dim` by zeros in front (columns no row attends to)."""
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@dataclass
class _Rows:
    """Rows decoding together: their indices among the prompts, KV cache, attention mask (cache columns
    + the pending token), pending token (chosen, not yet run through the model) and its position."""

    rows: list[int]
    cache: Any
    mask: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor

    def select(self, keep: list[int]) -> None:
        """Keep these rows (indices into `rows`), then drop the cache columns no remaining row attends to."""
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.tokens, self.positions = self.mask[index], self.tokens[index], self.positions[index]
            self.rows = [self.rows[i] for i in keep]
        # Columns before every row's first real token were padding for rows that have left.
        start = int(self.mask.any(0).int().argmax())
        if start:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]
            self.mask = self.mask[:, start:]

    def extend(self, other: _Rows) -> None:
        """Add `other`'s rows; the shorter of the two caches is left-padded with masked zeros."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width - 1, -2), _left_pad(theirs.keys, width - 1, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width - 1, -2), _left_pad(theirs.values, width - 1, -2)])
        self.mask = torch.cat([_left_pad(self.mask, width, -1), _left_pad(other.mask, width, -1)])
        self.tokens = torch.cat([self.tokens, other.tokens])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows


class _Decoder:
    """The rows' outputs, token limits and sampling generators for one `decode_batch` call."""

    def __init__(
        self, model, tokenizer, prompts: list[list[int]], settings: DecodeSettings, seeds: list[int] | None
    ) -> None:
        self.model, self.tokenizer, self.prompts, self.settings = model, tokenizer, prompts, settings
        self.device = next(model.parameters()).device
        self.eos = eos_token_ids(model, tokenizer)
        cfg = model.config
        max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.limits = [
            settings.max_new_tokens if max_pos is None else min(settings.max_new_tokens, max_pos - len(p))
            for p in prompts
        ]
        self.generators = None if settings.greedy else [torch.Generator().manual_seed(s) for s in seeds]
        # A stop string of n characters spans at most n tokens (+ slack for byte-level pieces): only a
        # row's tail is decoded to look for one.
        self.tail = max([len(s) for s in settings.stop] + [1]) + 4
        self.outputs: list[list[int]] = [[] for _ in prompts]
        # The calculator's result tokens still to be written, per row; they replace the model's choices.
        self.forced: list[list[int]] = [[] for _ in prompts]

    def _queue_calculation(self, row: int, token: int) -> None:
        """Queue the calculator's result if the row's output now ends with "<arithmetic> =" (an "=" is rare,
        so the whole output is decoded only then)."""
        if "=" in self.tokenizer.decode([token]):
            result = calculator_result(self.tokenizer.decode(self.outputs[row], skip_special_tokens=True))
            if result is not None:
                self.forced[row] = self.tokenizer(result, add_special_tokens=False).input_ids

    def _choose(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, rows: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """Run the model one step for `rows`; (next token per row as a column, indices of rows that go on)."""
        logits = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        if self.settings.greedy:
            chosen = logits.argmax(-1)
            tokens = chosen.tolist()
        else:
            tokens = [_sample_row(logits[i], self.settings, self.generators[row]) for i, row in enumerate(rows)]
            chosen = torch.tensor(tokens, device=self.device)
        if self.settings.calculator:
            for i, row in enumerate(rows):
                if self.forced[row]:
                    tokens[i] = self.forced[row].pop(0)
            chosen = torch.tensor(tokens, device=self.device)
        keep = []
        stop = self.settings.stop
        for i, (row, token) in enumerate(zip(rows, tokens)):
            if token in self.eos:
                continue
            out = self.outputs[row]
            out.append(token)
            if self.settings.calculator and not self.forced[row]:
                self._queue_calculation(row, token)
            if len(out) >= self.limits[row]:
                continue
            if stop:
                recent = self.tokenizer.decode(out[-self.tail :], skip_special_tokens=True)
                if any(s and s in recent for s in stop):
                    continue
            keep.append(i)
        return chosen.unsqueeze(-1), keep

    def start(self, rows: list[int]) -> _Rows | None:
        """Prefill these prompts (left-padded, one batch) and choose their first tokens; None if all ended."""
        from transformers import DynamicCache

        prompts = [self.prompts[r] for r in rows]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        # Left padding: positions count real tokens only, so a padded row sees the positions it sees alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        tokens, keep = self._choose(input_ids, mask, positions, cache, rows)
        if not keep:
            return None
        state = _Rows(rows, cache, torch.cat([mask, mask.new_ones(len(rows), 1)], -1), tokens, positions[:, -1:] + 1)
        state.select(keep)
        return state

    def step(self, state: _Rows) -> bool:
        """One decoding step for every row of `state`; False when none of them goes on."""
        state.tokens, keep = self._choose(state.tokens, state.mask, state.positions, state.cache, state.rows)
        if not keep:
            return False
        state.mask = torch.cat([state.mask, state.mask.new_ones(len(state.rows), 1)], -1)
        state.positions = state.positions + 1
        state.select(keep)
        return True


@torch.inference_mode()
def decode_batch(
    model,
    tokenizer,
    prompts: list[list[int]],
    settings: DecodeSettings,
    seeds: list[int] | None = None,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Generated token ids for each prompt (EOS excluded), ending at EOS, a stop string or the token limit.

    At most `batch_size` rows (default: all) decode at once. Continuous batching: a row that ends
    leaves at once and the next prompts (in the given order) take the free places, so the batch stays
    full until the prompts run out instead of carrying finished rows to the end of the longest answer.
    """
    decoder = _Decoder(model, tokenizer, prompts, settings, seeds)
    size = batch_size or len(prompts)
    waiting = [r for r in range(len(prompts)) if decoder.limits[r] > 0]
    waiting.reverse()  # popped from the end: first prompt first
    state: _Rows | None = None
    while waiting or state is not None:
        free = size - (len(state.rows) if state else 0)
        if waiting and free:
            newcomers = decoder.start([waiting.pop() for _ in range(min(free, len(waiting)))])
            if newcomers is not None and state is not None:
                state.extend(newcomers)
            elif newcomers is not None:
                state = newcomers
            continue  # the newcomers' first tokens are chosen; refill before stepping if some ended at once
        if not decoder.step(state):
            state = None
    return decoder.outputs


@dataclass(frozen=True)
class ExamFormat:
    """How an exam mode asks and reads: prompt token ids per question, stop strings, answer extractor."""

    prompts: list[list[int]]
    stop: list[str]
    extract: Callable[[str, str], str | None]


def exam_format(tokenizer: Any, questions: list[str], mode: str, stop: list[str]) -> ExamFormat:
    """The training prompt format for `answer` / `explain`; for `prompted` (the fair baseline) the model's
    own chat template with a step-by-step trigger, read leniently."""
    if mode not in EXAM_MODES:
        raise ValueError(f"exam mode must be one of {EXAM_MODES}, got {mode!r}")
    if mode == "prompted":
        texts = [prompted_prompt(q, tokenizer) for q in questions]
        # A chat template writes the model's special tokens itself.
        ids = [tokenizer(text, add_special_tokens=not templated).input_ids for text, templated in texts]
        return ExamFormat(ids, list(PROMPTED_STOP), extract_chat_answer)
    return ExamFormat([tokenizer(student_prompt(q, mode)).input_ids for q in questions], list(stop), extract_answer)


class ExamRunner(ABC):
    """An exam whatever the engine: prompts, rows and grading here; a subclass's `generate` decodes the rows.

    Set by the subclass: `cfg` (the student section), `answer_type`, `tokenizer` (prompt ids in, answers out)."""

    cfg: StudentSection
    answer_type: str
    tokenizer: Any

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], settings: DecodeSettings, seeds: list[int], batch_size: int | None
    ) -> list[list[int]]:
        """Generated token ids per prompt (EOS excluded); `batch_size` rows at most at once (None: the config's)."""

    @abstractmethod
    def set_adapter(self, adapter: bytes | None) -> None:
        """Examine with this peft adapter (bytes) from now on, or the bare base with None."""

    def run(
        self,
        examples: list[Example],
        mode: str,
        num_samples: int = 1,
        greedy: bool = True,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> list[AttemptRecord]:
        """One record per (example, sample index), in input order; greedy decodes each question once."""
        gen = self.cfg.generation
        form = exam_format(self.tokenizer, [ex.question for ex in examples], mode, gen.stop)
        settings = DecodeSettings(
            max_new_tokens=gen.max_new_tokens,
            stop=form.stop,
            greedy=greedy or gen.temperature == 0,
            temperature=gen.temperature,
            top_p=gen.top_p,
            calculator=gen.calculator,
        )
        prompts = form.prompts
        draws = 1 if settings.greedy else num_samples
        rows = [(i, k) for i in range(len(examples)) for k in range(draws)]
        # Similar prompt lengths share a batch so little padding is computed.
        rows.sort(key=lambda r: len(prompts[r[0]]))
        seeds = [sample_seed(seed, examples[i].id, k) for i, k in rows]
        generated = dict(zip(rows, self.generate([prompts[i] for i, _ in rows], settings, seeds, batch_size)))
        records: list[AttemptRecord] = []
        for i, ex in enumerate(examples):
            for k in range(num_samples):
                tokens = generated[(i, 0 if settings.greedy else k)]
                text = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), settings.stop)
                extracted = form.extract(text, self.answer_type)
                records.append(
                    {
                        "example_id": ex.id,
                        "sample_index": k,
                        "mode": mode,
                        "output": text,
                        "extracted": extracted,
                        "correct": answers_match(extracted, ex.answer, self.answer_type),
                        "prompt_tokens": len(prompts[i]),
                        "output_tokens": len(tokens),
                    }
                )
        return records


class Examiner(ExamRunner):
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

    def generate(
        self, prompts: list[list[int]], settings: DecodeSettings, seeds: list[int], batch_size: int | None
    ) -> list[list[int]]:
        size = batch_size or self.cfg.generation.batch_size
        return decode_batch(self.model, self.tokenizer, prompts, settings, seeds, batch_size=size)
