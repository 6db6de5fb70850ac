"""The forking-paths count: how many experiments and runs in one runs folder were scored on the same test split.

Every look at a test split is a chance to find a difference by luck; the experiment report prints how many
runs (and experiments holding them) in its runs folder share its test split, so a reader can weigh its
p-values against the paths tried. Only each run's config.yaml is read (no history is opened), so the count
stays cheap on a folder of hundreds of runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tutorloop.loop.core.config import DataSection
from tutorloop.store.experiment_store import EXPERIMENT_FILE
from tutorloop.store.query import HISTORY_FILE

CONFIG_FILE = "config.yaml"  # run_dir's name for it; importing run_dir would load the engine's imports
# The data keys that decide which questions the test split holds. Its draw is seeded by the task's name
# (datasets.subset; the synthetic task's generator by a fixed seed), so `task` stands for that seed too.
TEST_SPLIT_KEYS = ("task", "data_dir", "split", "test_size", "test_path", "dataset", "dataset_config", "test_split")


@dataclass(frozen=True)
class ForkingPaths:
    experiments: int  # experiment folders holding at least one run on the test split
    runs: int  # run folders (config.yaml beside history.duckdb) on the test split
    folder: Path

    def line(self) -> str:
        return (
            f"Forking paths: {self.experiments} experiment(s) and {self.runs} run(s) in {self.folder} "
            f"(this experiment included) have been scored on this test split; each is one more look at it."
        )


def test_split_key(data: dict[str, Any]) -> tuple | None:
    """What identifies a config's test split; None for a data section this version cannot read."""
    try:
        section = DataSection.model_validate(data)
    except ValidationError:
        return None
    synthetic = section.synthetic.model_dump() if section.task == "synthetic" else None  # its generator's settings
    return (*(getattr(section, key) for key in TEST_SPLIT_KEYS), repr(synthetic))


def _run_data(run_dir: Path) -> dict | None:
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, dict) else None


def count_forking_paths(runs_folder: Path, data: dict[str, Any]) -> ForkingPaths:
    """Runs under `runs_folder` whose config's test split is `data`'s, and the experiments holding them."""
    wanted = test_split_key(data)
    runs, experiments = 0, set()
    for folder, children, files in os.walk(runs_folder):
        if CONFIG_FILE not in files or HISTORY_FILE not in files:
            continue
        children.clear()  # a run folder holds no other runs (adapters, reports, checkpoints)
        run_data = _run_data(Path(folder))
        if run_data is None or test_split_key(run_data) != wanted:
            continue
        runs += 1
        experiment = next((p for p in Path(folder).parents if (p / EXPERIMENT_FILE).is_file()), None)
        if experiment is not None and runs_folder in experiment.parents:
            experiments.add(experiment)
    return ForkingPaths(len(experiments), runs, runs_folder)
