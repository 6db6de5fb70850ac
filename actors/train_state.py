"""The live state of one LoRA training (model, optimizer, schedule, data order, step records) and its
checkpoints, from which a later call with the same inputs resumes to the same weights."""

from __future__ import annotations

import io
import os
import random
import shutil
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tutorloop.loop.core.records import TrainStepRecord


@dataclass
class TrainState:
    model: Any
    params: list[torch.nn.Parameter]
    optim: torch.optim.Optimizer
    sched: Any
    order: list[list[tuple[str, list[int]]]]  # the steps' micro-batches (see train_batches.py)
    total_steps: int
    reference: torch.Tensor | None = None  # DPO: [pairs, 3] log-likelihoods under the starting policy
    done: int = 0  # optimizer steps done (before this call, after a resume)
    steps: list[TrainStepRecord] = field(default_factory=list)
    elapsed_before: float = 0.0  # training seconds spent before a resume

    def resume(self, saved: dict | None) -> None:
        """Continue from a checkpoint's state (see Checkpoints.load); None leaves a fresh start."""
        if saved is None:
            return
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(str(saved["folder"] / "adapter_model.safetensors")))
        self.optim.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if torch.cuda.is_available() and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        random.setstate(saved["python_rng"])
        self.order = [[(kind, list(idx)) for kind, idx in step] for step in saved["order"]]
        self.reference = saved["reference"]  # computed from the starting policy: not from these weights
        self.done, self.steps, self.elapsed_before = saved["step"], saved["steps"], saved["elapsed_s"]


class Checkpoints:
    """Trainer checkpoints in `root/step-NNNNNN/`, the newest named by `root/latest` (replaced atomically)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def save(self, state: TrainState, input_hash: str) -> None:
        """The state after its newest step record; older checkpoints are removed once this one is in place."""
        self.root.mkdir(parents=True, exist_ok=True)
        step = state.steps[-1]["step"]
        tmp = self.root / f".tmp-{uuid.uuid4().hex[:8]}"
        state.model.save_pretrained(tmp)
        torch.save(
            {
                "input_hash": input_hash,
                "step": step,
                "optimizer": state.optim.state_dict(),
                "scheduler": state.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python_rng": random.getstate(),
                "order": state.order,
                "reference": state.reference,
                "steps": state.steps,
                "elapsed_s": state.steps[-1]["elapsed_s"],
            },
            tmp / "trainer_state.pt",
        )
        self._publish(tmp, f"step-{step:06d}")

    def _publish(self, tmp: Path, name: str) -> None:
        """Moves the finished checkpoint folder `tmp` to `name`, points `latest` at it, removes older ones."""
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        pointer = self.root / f".latest-{uuid.uuid4().hex[:8]}"
        pointer.write_text(final.name)
        os.replace(pointer, self.root / "latest")
        for old in self.root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def newest(self) -> Path | None:
        """The folder `latest` names, when it is there."""
        pointer = self.root / "latest"
        folder = self.root / pointer.read_text().strip() if pointer.exists() else None
        return folder if folder is not None and (folder / "trainer_state.pt").exists() else None

    def to_bytes(self) -> bytes | None:
        """The newest checkpoint as tar bytes (its folder name included), None when there is none: what
        travels between an actor's own temporary folder and the driver's run directory."""
        folder = self.newest()
        if folder is None:
            return None
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(folder, arcname=folder.name)
        return buf.getvalue()

    def receive(self, data: bytes) -> None:
        """Installs a checkpoint from `to_bytes` as the newest one (atomically, older ones removed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{uuid.uuid4().hex[:8]}"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        (folder,) = [p for p in tmp.iterdir() if p.name.startswith("step-")]
        self._publish(folder, folder.name)
        shutil.rmtree(tmp, ignore_errors=True)

    def load(self, input_hash: str) -> dict | None:
        """The newest checkpoint of the training with this input hash, or None."""
        folder = self.newest()
        if folder is None:
            return None
        state = torch.load(folder / "trainer_state.pt", weights_only=False)
        if state["input_hash"] != input_hash:
            return None  # a checkpoint of another training (other data or settings): start fresh
        state["folder"] = folder
        return state
