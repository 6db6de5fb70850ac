"""The typed records (loop/core/records.py): their columns are the store's, and the store, not their
producers, sets the round of a phase's rows."""

from __future__ import annotations

from pathlib import Path

from tutorloop.store.history import PhaseOutputs, RunHistory

SAMPLE = {"example_id": "q1", "task": "explain", "source": "big", "input": "Q: 1+1?", "target": " 2", "weight": 1.0}
PAIR = {"example_id": "q1", "input": "Q: 1+1?", "anchor": " a", "positive": " p", "negative": " n"}
RATIONALE = {
    "teacher": "big",
    "strategy": "cote",
    "example_id": "q1",
    "sample_index": 0,
    "rationale": "1+1=2",
    "extracted": "2",
    "accepted": True,
    "reject_reason": None,
    "feedback": None,
    "request_hash": "h",
    "task": "explain",
}
STEP = {
    "step": 1,
    "epoch": 1.0,
    "lr": 1e-4,
    "loss": 2.0,
    "task_losses": {"explain": 2.0},
    "contrast_loss": None,
    "tokens": 10,
    "pad_fraction": 0.0,
    "elapsed_s": 0.5,
}
ATTEMPT = {
    "example_id": "q1",
    "sample_index": 0,
    "mode": "explain",
    "output": "2",
    "extracted": "2",
    "correct": True,
    "prompt_tokens": 5,
    "output_tokens": 1,
}


def table_columns(history: RunHistory, table: str) -> set[str]:
    return {
        r[0]
        for r in history.writer.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        )
    }


def test_record_columns_are_the_tables_columns_less_what_the_store_sets(tmp_path: Path) -> None:
    from tutorloop.loop.core.records import (
        AttemptRecord,
        ContrastPairRecord,
        RationaleRecord,
        SampleRecord,
        TeacherCallRecord,
        TrainStepRecord,
        columns,
    )

    history = RunHistory(tmp_path)
    stored_by_the_store = {"round"}
    for record, table, more in [
        (AttemptRecord, "attempts", {"phase", "split", "batch"}),
        (RationaleRecord, "rationales", set()),
        (SampleRecord, "samples", set()),
        (ContrastPairRecord, "contrast_pairs", set()),
        (TrainStepRecord, "train_steps", set()),
    ]:
        assert set(columns(record)) | stored_by_the_store | more == table_columns(history, table), table
        assert "round" not in columns(record)
    # A teacher call names its round itself: the journal recovers it without knowing the round.
    assert set(columns(TeacherCallRecord)) | {"created_at"} == table_columns(history, "teacher_calls")
    assert tuple(STEP) == columns(TrainStepRecord) and tuple(RATIONALE) == columns(RationaleRecord)


def test_the_store_sets_the_round_of_a_phases_rows(tmp_path: Path) -> None:
    history = RunHistory(tmp_path)
    history.keep_graded_rationales(2, [RATIONALE])
    history.finish_phase(
        2,
        "teach",
        1.0,
        PhaseOutputs(
            rows={"rationales": [RATIONALE], "samples": [SAMPLE], "contrast_pairs": [PAIR]}, train_steps=[STEP]
        ),
    )
    for table in ("rationales", "samples", "contrast_pairs", "train_steps"):
        assert history.writer.fetch(f"SELECT DISTINCT round FROM {table}") == [(2,)], table
    assert history.writer.fetch("SELECT count(*) FROM rationales") == [(1,)]  # the kept ones were replaced
    assert history.round_samples(2) == [SAMPLE]
    assert history.round_pairs(2) == [PAIR]
    # Earlier samples carry the round that made them, which a replay names as its source.
    assert history.earlier_samples(3) == [dict(SAMPLE, round=2)]


def test_stored_attempts_get_round_phase_split_and_batch_from_the_store(tmp_path: Path) -> None:
    history = RunHistory(tmp_path)
    history.store_attempts(1, "exam", [ATTEMPT], questions=1, split="train", batch=4)
    assert history.writer.fetch("SELECT round, phase, split, batch FROM attempts") == [(1, "exam", "train", 4)]
    assert history.attempts(1, "exam", "explain") == [ATTEMPT]
    assert history.exam_progress(1, "exam", "explain") == ({"q1"}, 5)
