"""TrainerActor: a Ray shell around `LoraTrainer`, with a progress bar for the training steps."""

from __future__ import annotations

import time
from typing import Any

import psutil
import ray

from tutorloop.actors.training import LoraTrainer
from tutorloop.loop.config import StudentSection, TrainingSection


@ray.remote
class TrainerActor:
    def __init__(self, student_cfg: StudentSection, training_cfg: TrainingSection, seed: int = 0) -> None:
        started = time.perf_counter()
        self.trainer = LoraTrainer(student_cfg, training_cfg, seed=seed)
        self.seconds = {"load_s": time.perf_counter() - started, "compute_s": 0.0,
                        "boot_s": time.time() - psutil.Process().create_time()}

    def timings(self) -> dict[str, float]:
        """Seconds spent setting up and training (the driver's overhead accounting)."""
        return dict(self.seconds)

    def train(self, samples: list[dict], pairs: list[dict], init_adapter: bytes | None = None,
              checkpoint_dir: str | None = None, desc: str = "training") -> dict[str, Any]:
        """Returns {"adapter": bytes, "steps": [step records]}; resumes from `checkpoint_dir` when it can."""
        from ray.experimental.tqdm_ray import tqdm

        bar: list[Any] = []

        def on_plan(total: int, done: int) -> None:
            bar.append(tqdm(total=total, desc=desc))
            bar[0].update(done)  # steps already done before a resume

        def on_step(record: dict) -> None:
            bar[0].set_description(f"{desc} loss {record['loss']:.3f}")
            bar[0].update(1)

        started = time.perf_counter()
        try:
            result = self.trainer.train(samples, pairs, init_adapter=init_adapter, checkpoint_dir=checkpoint_dir,
                                        on_step=on_step, on_plan=on_plan)
        finally:
            self.seconds["compute_s"] += time.perf_counter() - started
            if bar:
                bar[0].close()
        return {"adapter": result.adapter, "steps": result.steps}
