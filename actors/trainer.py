"""TrainerActor: a Ray shell around `LoraTrainer`, with a progress bar for the training steps."""

from __future__ import annotations

from typing import Any

import ray

from tutorloop.actors.models import set_torch_threads
from tutorloop.actors.timing import ActorClock
from tutorloop.actors.training import LoraTrainer
from tutorloop.loop.config import StudentSection, TrainingSection


@ray.remote
class TrainerActor:
    def __init__(self, student_cfg: StudentSection, training_cfg: TrainingSection, seed: int = 0,
                 torch_threads: int = 0) -> None:
        self.clock = ActorClock()
        set_torch_threads(torch_threads)
        self.trainer = LoraTrainer(student_cfg, training_cfg, seed=seed)
        self.clock.loaded()

    def timings(self) -> dict[str, float]:
        """Seconds spent setting up and training (the driver's overhead accounting)."""
        return dict(self.clock.seconds)

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

        try:
            with self.clock.computing():
                result = self.trainer.train(samples, pairs, init_adapter=init_adapter,
                                            checkpoint_dir=checkpoint_dir, on_step=on_step, on_plan=on_plan)
        finally:
            if bar:
                bar[0].close()
        return {"adapter": result.adapter, "steps": result.steps}
