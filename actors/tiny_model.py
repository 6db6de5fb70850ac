"""The tiny from-scratch student: a small byte-level BPE and a GPT-2 or Llama of a few layers,
pretrained on generic arithmetic text, built once into the cache keyed by a hash of its settings."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch

from tutorloop.actors.model_cache import cache_dir, publish, tmp_sibling
from tutorloop.loop.core.config import TinyModelSection

# Bump when the tiny-model recipe changes so stale cached bases are not reused.
TINY_BUILD_VERSION = 5
TINY_VOCAB_SIZE = 512
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

_NAMES = ["Tom", "Anna", "Ben", "Mia", "Sam", "Lea", "Max", "Eva", "Leo", "Ida"]
_PRONOUNS = {"Tom": "he", "Ben": "he", "Sam": "he", "Max": "he", "Leo": "he"}
_THINGS = ["apples", "marbles", "coins", "books", "stickers", "pens", "cards", "shells"]


def _pretrain_sentence(rng: random.Random) -> str:
    """One line of generic arithmetic text: facts, worked steps, small stories (not the student prompt format).

    Operands stay small (results 0..18, products up to 45): a tiny model can learn these tables in a
    few hundred steps, enough for LoRA rounds to build on.
    """
    op = rng.choice("++--*")
    a, b = rng.randint(0, 9), rng.randint(1, 9)
    if op == "-" and b > a:
        a, b = b, a
    if op == "*":
        b = rng.randint(2, 5)
    c = a + b if op == "+" else a - b if op == "-" else a * b
    name = rng.choice(_NAMES)
    pron = _PRONOUNS.get(name, "she")
    things = rng.choice(_THINGS)
    verb = {"+": "gets {b} more", "-": "gives away {b}", "*": "gets {b} times as many"}[op].format(b=b)
    word = {"+": "Add", "-": "Take away", "*": "Multiply by"}[op]
    story = f"{name} has {a} {things}. {pron.capitalize()} {verb}."
    kind = rng.randrange(12)
    if kind <= 1:
        return f"{a} {op} {b} = {c}."
    if kind == 2:
        return f"{word} {b}: {a} {op} {b} = {c}."
    if kind == 3:
        return f"{story} {word} {b}: {a} {op} {b} = {c}. Now {name} has {c} {things}."
    if kind == 4:
        return f"{story} {a} {op} {b} = {c}.{rng.choice([' ', chr(10)])}Therefore, the answer is {c}."
    if kind == 5:
        return f"How many {things} does {name} have if {pron} has {a} and {verb}? {word} {b}: {a} {op} {b} = {c}."
    if kind == 6:
        return (
            f"The question was how many {things} {name} has now. The known answer is {c}, because {a} {op} {b} = {c}."
        )
    if kind == 7:
        return f"We explain the answer to the question. {story} The answer is {c}."
    # Lines led by a task tag (the words of the student's prompt prefixes): a bare number after
    # [answer], worked steps otherwise, so the base already conditions on a tag that came long before.
    tag = rng.choice(["[answer]", "[explain]", "[rationalize]"])
    known = f" Known answer: {c}." if tag == "[rationalize]" else ""
    reply = f" {c}." if tag == "[answer]" else f" {word} {b}: {a} {op} {b} = {c}. Therefore, the answer is {c}."
    return f"{tag} {story} How many {things} now?{known}{reply}"


def _pretrain_corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(f"tutorloop-tiny-corpus/{seed}")
    return [_pretrain_sentence(rng) for _ in range(n_lines)]


def _build_tiny_tokenizer(corpus: list[str]):
    """A small byte-level BPE (digits kept single, so arithmetic stays learnable) trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def _tiny_config(tiny: TinyModelSection, tokenizer) -> Any:
    from transformers import GPT2Config, LlamaConfig

    common = dict(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if tiny.arch == "gpt2":
        return GPT2Config(
            n_layer=tiny.n_layer,
            n_embd=tiny.n_embd,
            n_head=tiny.n_head,
            n_positions=tiny.max_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    return LlamaConfig(
        hidden_size=tiny.n_embd,
        intermediate_size=4 * tiny.n_embd,
        num_hidden_layers=tiny.n_layer,
        num_attention_heads=tiny.n_head,
        num_key_value_heads=tiny.n_head,
        max_position_embeddings=tiny.max_positions,
        **common,
    )


def tiny_model_dir(tiny: TinyModelSection) -> Path:
    key = json.dumps({"v": TINY_BUILD_VERSION, "tiny": tiny.model_dump(mode="json")}, sort_keys=True)
    return cache_dir() / "models" / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _pretrain(model, tokenizer, tiny: TinyModelSection) -> None:
    """Full training on generic arithmetic text packed into fixed-length windows (no padding)."""
    window, batch = min(64, tiny.max_positions), 16
    lines = _pretrain_corpus(max(2000, tiny.pretrain_steps * batch * 4), seed=1)
    ids: list[int] = []
    for line in lines:
        ids += tokenizer(line + "\n", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    data = torch.tensor(ids[: len(ids) // window * window]).view(-1, window)
    gen = torch.Generator().manual_seed(2)
    optim = torch.optim.AdamW(model.parameters(), lr=tiny.pretrain_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / tiny.pretrain_steps)
    )
    model.train()
    for _ in range(tiny.pretrain_steps):
        rows = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad()
    model.eval()


def build_tiny_model(tiny: TinyModelSection) -> Path:
    """Build (once) the tiny from-scratch student described by `tiny`; returns its cached folder."""
    folder = tiny_model_dir(tiny)
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM

    tokenizer = _build_tiny_tokenizer(_pretrain_corpus(4000, seed=0))
    # Deterministic regardless of the caller's RNG state; restore it afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_tiny_config(tiny, tokenizer), dtype=torch.float32)
        if tiny.pretrain_steps:
            _pretrain(model, tokenizer, tiny)
    tmp = tmp_sibling(folder)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return publish(tmp, folder)
