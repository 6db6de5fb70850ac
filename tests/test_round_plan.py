"""Where a round's trainer state lives in the run directory: `trainer_state/round-<k>/`, or the older
`checkpoints/round-<k>/` that a run killed mid-training by older code left behind."""

from __future__ import annotations

from pathlib import Path

from tutorloop.loop.round_plan import remove_trainer_state, trainer_state_dir


def _state_in(folder: Path) -> None:
    (folder / "step-000003").mkdir(parents=True)
    (folder / "latest").write_text("step-000003")


def test_a_fresh_round_trains_into_trainer_state(tmp_path: Path) -> None:
    assert trainer_state_dir(tmp_path, 2) == tmp_path / "trainer_state" / "round-2"


def test_a_resume_finds_the_state_older_code_left_in_checkpoints(tmp_path: Path) -> None:
    _state_in(tmp_path / "checkpoints" / "round-1")
    assert trainer_state_dir(tmp_path, 1) == tmp_path / "checkpoints" / "round-1"
    assert trainer_state_dir(tmp_path, 2) == tmp_path / "trainer_state" / "round-2"  # other rounds: the new folder
    _state_in(tmp_path / "trainer_state" / "round-1")
    assert trainer_state_dir(tmp_path, 1) == tmp_path / "trainer_state" / "round-1"  # the new one wins


def test_clean_up_removes_either_folder(tmp_path: Path) -> None:
    for root in ("checkpoints", "trainer_state"):
        _state_in(tmp_path / root / "round-1")
    _state_in(tmp_path / "trainer_state" / "round-2")
    remove_trainer_state(tmp_path, 1)
    assert not (tmp_path / "checkpoints" / "round-1").exists()
    assert not (tmp_path / "trainer_state" / "round-1").exists()
    assert (tmp_path / "trainer_state" / "round-2" / "latest").exists()  # another round's state stays
    remove_trainer_state(tmp_path, 3)  # nothing there: no error
