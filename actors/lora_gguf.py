"""A peft LoRA adapter as a llama.cpp LoRA adapter: a GGUF file of `lora_a`/`lora_b` tensors and adapter keys.

What llama.cpp's loader (llama-adapter.cpp) expects, as its own convert_lora_to_gguf.py writes it:
`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, the base's architecture, and per
adapted weight `<gguf name>.weight.lora_a` (ggml shape [in, r]) and `.lora_b` ([r, out]); llama.cpp
scales the update by alpha / r like peft. The names come from the gguf package's tensor name map.

The student's transformers weights were read from the GGUF by transformers, which undoes llama.cpp's
row order of the rotary q and k projections; the adapter's B rows for q_proj and k_proj are put back
into llama.cpp's order with the converter's permutation.

The tensors are stored as Q8_0, the rank zero-padded to Q8_0's block of 32 (alpha grown with it, so
alpha / rank is peft's scale): F32 or F16 LoRA tensors make llama.cpp's CPU matmul pick kernels by how
many rows share a batch, so a row's tokens changed with its batch neighbours (measured: 3 to 6 of 48
seeded samples differed between two identical exams; 0 with Q8_0, like the quantized base weights).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch

from tutorloop.actors.models import adapter_from_bytes
from tutorloop.loop.core.errors import ConfigError

# Architectures whose adapters this converter writes and the tests check (the q/k permutation is llama's).
SUPPORTED_ARCHITECTURES = ("llama",)
_PEFT_PREFIX = "base_model.model."
Q8_BLOCK = 32


class BaseModelInfo:
    """What the conversion needs from the base GGUF: architecture, layer and head counts."""

    def __init__(self, gguf_path: str | Path) -> None:
        import gguf

        reader = gguf.GGUFReader(str(gguf_path))

        def value(key: str):
            field = reader.fields.get(key)
            return None if field is None else field.contents()

        self.architecture: str = value("general.architecture")
        arch = self.architecture
        self.block_count = int(value(f"{arch}.block_count"))
        self.head_count = int(value(f"{arch}.attention.head_count"))
        self.head_count_kv = int(value(f"{arch}.attention.head_count_kv") or self.head_count)


def llama_permute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's order of a rotary projection's output rows (convert_hf_to_gguf's LlamaModel.permute)."""
    shape = rows.shape
    return rows.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _adapter_scale_alpha(config: dict) -> float:
    """The alpha llama.cpp needs for peft's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    unsupported = [key for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if config.get(key)]
    if unsupported:
        raise ConfigError(
            f"student.engine llama.cpp: the adapter uses {', '.join(unsupported)}, which llama.cpp's LoRA "
            "adapters cannot express (one alpha and rank for every weight, no DoRA)"
        )
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha * math.sqrt(r) if config.get("use_rslora") else alpha


def padded_rank(r: int) -> int:
    return -(-r // Q8_BLOCK) * Q8_BLOCK


def _q8_rows(rows: torch.Tensor, width: int) -> tuple:
    """`rows` [n, k] zero-padded to `width` columns, quantized to Q8_0 (gguf's raw bytes and type)."""
    import gguf

    padded = torch.cat([rows.float(), rows.new_zeros(rows.shape[0], width - rows.shape[1]).float()], 1)
    return gguf.quants.quantize(padded.contiguous().numpy(), gguf.GGMLQuantizationType.Q8_0)


def _lora_pairs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name as in the base model: (A [r, in], B [out, r])} from peft's saved keys."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PEFT_PREFIX)
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[part] = tensor
                break
        else:
            raise ConfigError(f"student.engine llama.cpp: adapter tensor {key} is not a LoRA A/B weight")
    return {module: (ab["A"], ab["B"]) for module, ab in pairs.items()}


def write_lora_gguf(adapter_dir: str | Path, base: BaseModelInfo, out_path: str | Path) -> Path:
    """Write the peft adapter in `adapter_dir` as a llama.cpp LoRA GGUF for `base`; returns `out_path`."""
    import gguf
    from safetensors.torch import load_file

    if base.architecture not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"student.engine llama.cpp: LoRA conversion for a '{base.architecture}' model is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); use student.engine transformers"
        )
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    rank = padded_rank(int(config["r"]))
    alpha = _adapter_scale_alpha(config) * rank / int(config["r"])
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == base.architecture)
    names = gguf.get_tensor_name_map(arch, base.block_count)
    writer = gguf.GGUFWriter(str(out_path), base.architecture)
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for module, (a, b) in sorted(_lora_pairs(load_file(str(adapter_dir / "adapter_model.safetensors"))).items()):
        target = names.get_name(module)
        if target is None:
            raise ConfigError(f"student.engine llama.cpp: adapted module {module} has no llama.cpp tensor name")
        if module.endswith("q_proj"):
            b = llama_permute(b, base.head_count)
        elif module.endswith("k_proj"):
            b = llama_permute(b, base.head_count_kv)
        q8 = gguf.GGMLQuantizationType.Q8_0
        # A [r, in] gets zero rows, B [out, r] zero columns: the product is unchanged.
        a_rows = torch.cat([a.float(), a.new_zeros(rank - a.shape[0], a.shape[1]).float()])
        writer.add_tensor(f"{target}.weight.lora_a", _q8_rows(a_rows, a.shape[1]), raw_dtype=q8)
        writer.add_tensor(f"{target}.weight.lora_b", _q8_rows(b, rank), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out_path)


def adapter_bytes_to_gguf(adapter: bytes, base: BaseModelInfo, out_path: str | Path) -> Path:
    """The adapter as a run stores it (bytes of a save_pretrained folder) written as a llama.cpp LoRA GGUF."""
    with tempfile.TemporaryDirectory() as tmp:
        return write_lora_gguf(adapter_from_bytes(adapter, tmp), base, out_path)
