"""Experiment trackers (`run.report_to`, TRL's names): TensorBoard and Weights & Biases.

Per round: test accuracy per eval mode, pool exam accuracy and mistakes, teacher calls, cache hits
and cost, at step = the round. Per optimizer step: the loss and its terms, at a global step counted
over all rounds. TensorBoard writes event files under RUN_DIR/tensorboard. W&B runs as the user's
own W&B settings say (WANDB_MODE, WANDB_PROJECT, `wandb login`); tutorloop sets no mode of its own.
Each package is imported only when `report_to` names it.

RUN_DIR/trackers.json keeps the global step where each round's steps begin and the W&B run id, so
a resumed run continues the same curves and the same W&B run, and a round trained again after a
kill logs its steps at the same places.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from tutorloop.loop.core.config import Config
from tutorloop.loop.core.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"  # in the run directory
STATE_FILE = "trackers.json"
GLOBAL_STEP = "train/global_step"
# history metric (split, name) -> tracker key; test accuracies per eval mode are added per config
_ROUND_METRICS = {
    ("train", "accuracy"): "pool/accuracy",
    ("train", "mistakes"): "pool/mistakes",
    ("train", "teacher_calls"): "teacher/calls",
    ("train", "cache_hits"): "teacher/cache_hits",
    ("train", "teacher_cost_usd"): "teacher/cost_usd",
}


class _History(Protocol):
    def metric(self, round_: int, split: str, name: str) -> float | None: ...


def round_metrics(history: _History, round_: int, eval_modes: list[str]) -> dict[str, float]:
    """The round's tracked metrics as stored in its history (a metric the round's kind lacks is left out)."""
    wanted = dict(_ROUND_METRICS)
    wanted.update({("test", f"accuracy_{mode}"): f"eval/accuracy_{mode}" for mode in eval_modes})
    values = {key: history.metric(round_, split, name) for (split, name), key in wanted.items()}
    return {key: value for key, value in values.items() if value is not None}


def step_metrics(step: dict[str, Any]) -> dict[str, float]:
    """The loss terms of one trainer step record (see actors/training.py)."""
    values = {"train/loss": step["loss"], "train/learning_rate": step.get("lr")}
    values.update({f"train/loss_{task}": loss for task, loss in (step.get("task_losses") or {}).items()})
    values["train/contrast_loss"] = step.get("contrast_loss")
    return {key: float(value) for key, value in values.items() if value is not None}


def _missing(extra: str, package: str) -> ConfigError:
    return ConfigError(f"run.report_to: {extra} needs the `{package}` package: pip install 'tutorloop[{extra}]'")


class _TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises it when the tensorboard package is missing
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a user watching TensorBoard sees the round at once

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        # console="off": W&B does not take over stdout/stderr (the run's console goes to its log);
        # silent: the terminal keeps tutorloop's lines only.
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "tutorloop",
                name=cfg.run.name,
                dir=str(run_dir),
                config=cfg.to_dict(),
                id=run_id,
                resume="allow",
                settings=wandb.Settings(console="off", silent=True),
            )
        except wandb.errors.Error as exc:  # not logged in, a bad setting: W&B's own words, on one line
            raise ConfigError(
                f"run.report_to: wandb could not start ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())}); log in with `wandb login`, or set "
                f"WANDB_MODE=offline to keep the run on this machine"
            ) from None
        self.run.define_metric("round")
        for prefix in ("eval", "pool", "teacher"):
            self.run.define_metric(f"{prefix}/*", step_metric="round")
        self.run.define_metric(GLOBAL_STEP)
        self.run.define_metric("train/*", step_metric=GLOBAL_STEP)

    def log(self, values: dict[str, float], step: int) -> None:
        axis = GLOBAL_STEP if any(key.startswith("train/") for key in values) else "round"
        self.run.log({axis: step, **values})

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers `run.report_to` names, behind one small interface; with none, every call does nothing."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        report_to = cfg.run.report_to
        self.state_path = run_dir / STATE_FILE
        self.state: dict[str, Any] = {"global_step": 0, "round_start": {}, "wandb_id": None}
        if report_to and self.state_path.exists():
            self.state.update(json.loads(self.state_path.read_text()))
        self.writers: list[_TensorBoard | _WandB] = []
        if "tensorboard" in report_to:
            self.writers.append(_TensorBoard(run_dir))
        if "wandb" in report_to:
            writer = _WandB(cfg, run_dir, self.state["wandb_id"])
            self.state["wandb_id"] = writer.run.id
            self.writers.append(writer)
            self._save()

    def log_round(self, round_: int, metrics: dict[str, float]) -> None:
        """A finished round's metrics (see `round_metrics`), at step = the round."""
        for writer in self.writers:
            writer.log(metrics, round_)

    def log_steps(self, round_: int, steps: list[dict[str, Any]]) -> None:
        """The round's trainer step records; a round logged again keeps its first global steps."""
        if not self.writers or not steps:
            return
        start = self.state["round_start"].setdefault(str(round_), self.state["global_step"])
        for step in steps:
            for writer in self.writers:
                writer.log(step_metrics(step), start + step["step"])
        self.state["global_step"] = max(self.state["global_step"], start + steps[-1]["step"])
        self._save()

    def _save(self) -> None:
        partial = self.state_path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.state))
        partial.replace(self.state_path)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []
