"""Config of the teacher server tutorloop starts for a run (`teacher.teachers.N.serve`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from tutorloop.loop.core.config_meta import Section

# GGUF files tutorloop knows by name (resolved to a path where the server starts, actors/serving.py).
SERVE_MODEL_ALIASES = ("qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct")


class LlamaCppOptions(Section):
    # One thread keeps its pace when other processes share the cores; two are faster only when idle
    # (measured on 2 cores under load: 1 thread 3.9 tokens/s, 2 threads 0.5).
    threads: int = Field(1, ge=1, description="CPU threads for generation and prompt processing")


class ServeSection(Section):
    """A teacher server tutorloop starts for the run and stops after it (reached via the openai backend).

    Options every engine has sit at the top; each engine's own options sit under its name, as veRL's
    `engine_kwargs` does, so a GPU engine (vllm) later adds its section without touching these.
    """

    engine: Literal["llama.cpp"] = "llama.cpp"
    model: str = Field(..., min_length=1, description="GGUF file path or alias: " + ", ".join(SERVE_MODEL_ALIASES))
    ctx: int = Field(4096, ge=256, description="context tokens in all; each of the `parallel` slots gets a share")
    parallel: int = Field(2, ge=1, description="requests decoded at once (slots); also the largest `n`")
    num_cpus: float = Field(1, ge=0, description="CPUs Ray reserves for the server actor")
    startup_timeout_s: float = Field(300.0, gt=0, description="wait this long for /v1/models to answer")
    llama_cpp: LlamaCppOptions = LlamaCppOptions()

    @field_validator("model")
    @classmethod
    def _model_fits_engine(cls, model: str, info: ValidationInfo) -> str:
        if info.data.get("engine") == "llama.cpp" and model not in SERVE_MODEL_ALIASES and not model.endswith(".gguf"):
            raise ValueError(f"llama.cpp serves a .gguf file or an alias ({', '.join(SERVE_MODEL_ALIASES)})")
        return model
