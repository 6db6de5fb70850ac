"""run.report_to: TensorBoard event files read back through tensorboard's own reader, the W&B offline
run folder read back record by record, and both fed by the round engine (in-process fakes, as in
test_engine_plan.py) on a Hugging Face dataset.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from test_engine_plan import config, new_run

from tutorloop.loop.core.config import Config
from tutorloop.loop.core.errors import ConfigError
from tutorloop.loop.engine import RoundEngine
from tutorloop.loop.tracking import STATE_FILE, TENSORBOARD_DIR, Trackers, round_metrics
from tutorloop.store.query import fetch_rows

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

STEPS = [
    {"step": 1, "loss": 2.0, "lr": 1e-3, "task_losses": {"answer": 1.5, "explain": 2.5}, "contrast_loss": None},
    {"step": 2, "loss": 1.0, "lr": 5e-4, "task_losses": {"answer": 0.5, "explain": 1.5}, "contrast_loss": 0.25},
]


def tracked(*report_to: str) -> Config:
    return Config.model_validate({"run": {"name": "tracked", "report_to": list(report_to)}})


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's TensorBoard event files, by tag: (step, value) in step order."""
    reader = event_accumulator.EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    reader.Reload()
    return {tag: sorted((e.step, round(e.value, 6)) for e in reader.Scalars(tag)) for tag in reader.Tags()["scalars"]}


def test_tensorboard_gets_round_metrics_and_step_losses(tmp_path: Path) -> None:
    trackers = Trackers(tracked("tensorboard"), tmp_path)
    trackers.log_round(-1, {"eval/accuracy_explain": 0.125})
    trackers.log_steps(0, STEPS)
    trackers.log_round(0, {"eval/accuracy_explain": 0.5, "teacher/calls": 12.0, "teacher/cost_usd": 0.01})
    trackers.log_steps(1, STEPS[:1])
    trackers.close()
    found = scalars(tmp_path)
    assert found["eval/accuracy_explain"] == [(-1, 0.125), (0, 0.5)]
    assert found["teacher/calls"] == [(0, 12.0)]
    # steps count on over the rounds: round 1's first step follows round 0's last
    assert found["train/loss"] == [(1, 2.0), (2, 1.0), (3, 2.0)]
    assert found["train/loss_answer"] == [(1, 1.5), (2, 0.5), (3, 1.5)]
    assert found["train/contrast_loss"] == [(2, 0.25)]
    assert found["train/learning_rate"][0] == (1, 0.001)


def test_a_resumed_run_continues_the_step_count(tmp_path: Path) -> None:
    first = Trackers(tracked("tensorboard"), tmp_path)
    first.log_steps(0, STEPS)
    first.log_steps(1, STEPS[:1])  # killed after this; round 1 trains again on resume
    first.close()
    second = Trackers(tracked("tensorboard"), tmp_path)
    second.log_steps(1, STEPS)
    second.log_steps(2, STEPS[:1])
    second.close()
    assert json.loads((tmp_path / STATE_FILE).read_text())["round_start"] == {"0": 0, "1": 2, "2": 4}
    assert sorted({step for step, _ in scalars(tmp_path)["train/loss"]}) == [1, 2, 3, 4, 5]


def test_no_trackers_write_nothing_and_a_missing_package_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet = Trackers(tracked(), tmp_path / "none")
    quiet.log_round(0, {"eval/accuracy_explain": 1.0})
    quiet.log_steps(0, STEPS)
    quiet.close()
    assert not (tmp_path / "none").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without the package gives
    with pytest.raises(
        ConfigError,
        match=r"^run.report_to: wandb needs the `wandb` package: "
        r"pip install 'tutorloop\[wandb\]'$",
    ):
        Trackers(tracked("wandb"), tmp_path)


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of the offline run's .wandb file (a LevelDB-style log of 32 KiB blocks:
    a 7-byte file header, then per chunk crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    [path] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data, records, chunk, position = path.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(run_dir: Path) -> list[dict[str, float]]:
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in wandb_records(run_dir)
        if record.WhichOneof("record_type") == "history"
    ]


def test_wandb_offline_run_folder_holds_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "tutorloop-test")
    trackers = Trackers(tracked("wandb"), tmp_path)
    trackers.log_round(0, {"eval/accuracy_explain": 0.5, "pool/mistakes": 3.0})
    trackers.log_steps(0, STEPS)
    trackers.close()
    rows = wandb_history(tmp_path)
    assert {"round": 0, "eval/accuracy_explain": 0.5, "pool/mistakes": 3.0}.items() <= rows[0].items()
    losses = [(r["train/global_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert losses == [(1, 2.0), (2, 1.0)]
    run_id = json.loads((tmp_path / STATE_FILE).read_text())["wandb_id"]
    configs = [r for r in wandb_records(tmp_path) if r.WhichOneof("record_type") == "run"]
    assert configs and configs[0].run.run_id == run_id and configs[0].run.project == "tutorloop-test"


def test_wandb_that_cannot_start_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")

    def not_logged_in(**_: object) -> None:  # what wandb.init raises without an API key or a mode
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", not_logged_in)
    with pytest.raises(
        ConfigError,
        match=r"^run.report_to: wandb could not start \(UsageError: No API key "
        r"configured.*\); log in with `wandb login`, or set WANDB_MODE=offline",
    ):
        Trackers(tracked("wandb"), tmp_path)


class TrackedEngine(RoundEngine):
    """The engine with the tracker calls engine.py is to make; once engine.py has its own `trackers`
    this subclass adds nothing, so the test then checks engine.py's wiring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shim = not hasattr(self, "trackers")
        if self.shim:
            self.trackers = Trackers(self.cfg, self.run_dir)

    def run_round(self, round_: int):
        report = super().run_round(round_)
        if self.shim:
            self.trackers.log_round(round_, round_metrics(self.history, round_, self.cfg.student.eval_modes))
        return report

    def _run_training(self, round_, samples, pairs, init, checkpoint_dir):
        adapter, steps = super()._run_training(round_, samples, pairs, init, checkpoint_dir)
        if self.shim:
            self.trackers.log_steps(round_, steps)
        return adapter, steps


def test_an_engine_run_on_an_hf_dataset_reaches_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    from tutorloop.loop.core.datasets import load_examples

    # The quick config's synthetic problems, saved as a Hugging Face dataset (the program teacher
    # answers them wherever they come from).
    synthetic = config().data
    columns = lambda split: {  # noqa: E731
        "question": [e.question for e in load_examples(synthetic, split)],
        "answer": [e.answer for e in load_examples(synthetic, split)],
    }
    datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(columns(split)) for split in ("train", "test")}
    ).save_to_disk(str(tmp_path / "arith"))
    cfg = config("data.task=hf", f"data.dataset={tmp_path / 'arith'}", "run.report_to=[tensorboard]")
    monkeypatch.setattr("test_engine_plan.RoundEngine", TrackedEngine)  # new_run builds this engine
    engine, _ = new_run(cfg, tmp_path)
    assert engine.run() == 0
    engine.trackers.close()
    assert engine.pool[0].id.startswith("hf/train/")
    found = scalars(engine.run_dir)
    assert [step for step, _ in found["eval/accuracy_explain"]] == [-1, 0, 1]
    assert [step for step, _ in found["eval/accuracy_answer"]] == [-1, 0, 1]
    assert [step for step, _ in found["teacher/calls"]] == [0, 1]
    assert [step for step, _ in found["pool/mistakes"]] == [1]
    [pool] = fetch_rows(
        engine.run_dir, "SELECT value FROM metrics WHERE round = 1 AND split = 'train' AND name = 'accuracy'"
    )
    assert found["pool/accuracy"] == [(1, pytest.approx(pool["value"]))]
    steps = fetch_rows(engine.run_dir, "SELECT count(*) AS n FROM train_steps")[0]["n"]
    assert len(found["train/loss"]) == steps > 0
