"""The round engine with in-process workers (no Ray): the plan of each kind of round, resume points,
the empty-round paths, and training progress reaching the history while the trainer works.

The student group and trainer are fakes with known behaviour: the fake student answers a question
of even number right once an adapter has learned it (the adapter is a real peft-style folder naming the questions it
was trained on); the fake trainer takes one step per four samples. The teacher is the real program
teacher through the in-process pool, and the history is a real DuckDB file.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tutorloop.actors.models import adapter_to_bytes
from tutorloop.actors.student import ExamChunk
from tutorloop.actors.teacher import LocalTeacherPool
from tutorloop.loop.core.config import Config, load_config
from tutorloop.loop.core.datasets import Example
from tutorloop.loop.core.errors import ConfigError, RunError
from tutorloop.loop.core.teacher_config import TeacherSection
from tutorloop.loop.engine import RoundEngine
from tutorloop.loop.round_plan import ROUND_PLAN, round_kind
from tutorloop.loop.run_dir import create_run
from tutorloop.store.query import fetch_rows

REPO = Path(__file__).resolve().parents[1]
CHUNK = 8  # questions per exam chunk of the fake student group
SMALL = ["run.report=false", "run.rounds=1", "data.synthetic.train_size=12", "data.synthetic.test_size=6"]


def config(*overrides: str) -> Config:
    return load_config(str(REPO / "configs" / "quick.yaml"), [*SMALL, *overrides])


def learned(adapter: bytes | None) -> set[str]:
    """The questions a fake adapter was trained on."""
    if adapter is None:
        return set()
    with tarfile.open(fileobj=io.BytesIO(adapter)) as tar:
        return set(json.loads(tar.extractfile("adapter_config.json").read())["learned"])


class FakeWorkers:
    """In-process stand-ins for the student group, trainer and teacher pool; every call is logged.

    `interrupt(call)` decides, per logged call, whether a Ctrl-C arrives during it (after the exam's
    first chunk, or after the training's first step)."""

    def __init__(
        self,
        cfg: Config,
        tmp: Path,
        knows_all_after_training: bool = False,
        interrupt: Callable[[tuple], bool] = lambda call: False,
    ) -> None:
        self.cfg, self.tmp = cfg, tmp
        self.knows_all = knows_all_after_training
        self.interrupt = interrupt
        self.engine: RoundEngine | None = None
        self.seconds = {"ray_start_s": 0.0}
        self.calls: list[tuple] = []
        self.teacher_pool: LocalTeacherPool | None = None
        self.teacher_pool_cfg: TeacherSection | None = None
        self.teacher_sections: list[TeacherSection] = []  # the teachers each teach phase was given
        self.progress_seen: list[dict] = []
        self.state_dirs: list[Path] = []  # the folder each training was given for its state

    def start(self) -> None:
        self.calls.append(("start",))

    def wait_ready(self) -> None:
        pass  # nothing loads in-process

    def exam(
        self,
        examples: list[Example],
        mode: str,
        num_samples: int,
        greedy: bool,
        seed: int,
        adapter: bytes | None,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[ExamChunk]:
        call = ("exam", mode, num_samples, tuple(e.id for e in examples))
        self.calls.append(call)
        known = learned(adapter)
        for index in range(0, len(examples), CHUNK):
            part = examples[index : index + CHUNK]
            records = [
                self._attempt(e, k, mode, self._right(e, adapter, known)) for e in part for k in range(num_samples)
            ]
            if on_wait is not None:
                on_wait()
            if index == 0 and self.interrupt(call):
                self.engine.stopping.requested = True  # what the Ctrl-C handler does
            yield ExamChunk(index // CHUNK, part, records)

    def _right(self, example: Example, adapter: bytes | None, known: set[str]) -> bool:
        """Without an adapter nothing; with one, everything (`knows_all`) or the learned questions of
        even number (the odd ones stay mistakes round after round)."""
        if adapter is None:
            return False
        return self.knows_all or (example.id in known and int(example.id.rsplit("/", 1)[1]) % 2 == 0)

    @staticmethod
    def _attempt(example: Example, k: int, mode: str, right: bool) -> dict:
        answer = example.answer if right else "99"
        return {
            "example_id": example.id,
            "sample_index": k,
            "mode": mode,
            "output": f" I think so.\nTherefore, the answer is {answer}.",
            "extracted": answer,
            "correct": right,
            "prompt_tokens": 10,
            "output_tokens": 5,
        }

    def train(
        self,
        samples: list[dict],
        pairs: list[dict],
        init_adapter: bytes | None,
        checkpoint_dir: str,
        on_progress: Callable[[int, int, dict | None], None],
        poll: Callable[[], None],
        seed: int | None = None,
    ) -> dict:
        call = ("train", len(samples), len(pairs))
        self.calls.append(call)
        self.state_dirs.append(Path(checkpoint_dir))
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        (Path(checkpoint_dir) / "latest").write_text("step-000001")  # as the real trainer leaves it
        folder = self.tmp / f"adapter-{len(self.calls)}"
        folder.mkdir(exist_ok=True)
        ids = learned(init_adapter) | {s["example_id"] for s in samples}
        (folder / "adapter_config.json").write_text(json.dumps({"learned": sorted(ids)}))
        total = -(-len(samples) // 4)
        steps = []
        for step in range(1, total + 1):
            steps.append(
                {
                    "step": step,
                    "epoch": 1.0,
                    "lr": 1e-3,
                    "loss": 1.0 / step,
                    "task_losses": {},
                    "contrast_loss": None,
                    "tokens": 40,
                    "pad_fraction": 0.0,
                    "elapsed_s": 0.1 * step,
                }
            )
            on_progress(total, step, steps[-1])
            self.progress_seen.append(
                fetch_rows(
                    self.engine.run_dir,
                    "SELECT progress, total FROM phases WHERE status = 'running' AND name = 'train'",
                )[0]
            )
            if step == 1 and self.interrupt(call):
                self.engine.stopping.requested = True
            poll()
        return {"adapter": adapter_to_bytes(folder), "steps": steps}

    def teacher(self, teacher_cfg: TeacherSection) -> LocalTeacherPool:
        self.calls.append(("teacher",))
        self.teacher_sections.append(teacher_cfg)
        if self.teacher_pool is not None and self.teacher_pool_cfg != teacher_cfg:
            self.teacher_pool.close()
            self.teacher_pool = None
        if self.teacher_pool is None:
            self.teacher_pool = LocalTeacherPool(teacher_cfg, data_dir=self.cfg.data.data_dir)
            self.teacher_pool_cfg = teacher_cfg
        return self.teacher_pool

    def shutdown(self) -> dict[str, float]:
        if self.teacher_pool is not None:
            self.teacher_pool.close()
        return {}


def engine_for(cfg: Config, run_dir: Path, tmp: Path, **fakes) -> tuple[RoundEngine, FakeWorkers]:
    workers = FakeWorkers(cfg, tmp, **fakes)
    engine = RoundEngine(cfg, run_dir, workers=workers)
    workers.engine = engine
    return engine, workers


def new_run(cfg: Config, tmp_path: Path, name: str = "run", **fakes) -> tuple[RoundEngine, FakeWorkers]:
    run_dir = tmp_path / name
    create_run(cfg, run_dir)
    work = tmp_path / f"{name}-work"
    work.mkdir()
    return engine_for(cfg, run_dir, work, **fakes)


def snapshot(run_dir: Path) -> dict:
    return {
        "rounds": fetch_rows(run_dir, "SELECT round, kind, status FROM rounds ORDER BY round"),
        "metrics": fetch_rows(run_dir, "SELECT round, split, name, value FROM metrics ORDER BY ALL"),
        "attempts": fetch_rows(
            run_dir, "SELECT round, phase, example_id, mode, sample_index, correct FROM attempts ORDER BY ALL"
        ),
        "samples": fetch_rows(run_dir, "SELECT round, example_id, task, source FROM samples ORDER BY ALL"),
        "steps": fetch_rows(run_dir, "SELECT round, step, loss FROM train_steps ORDER BY ALL"),
    }


def test_each_kind_of_round_runs_its_plan(tmp_path: Path) -> None:
    engine, workers = new_run(config(), tmp_path)
    assert engine.run() == 0
    phases = fetch_rows(engine.run_dir, "SELECT round, name, status FROM phases ORDER BY started_at")
    for round_ in (-1, 0, 1):
        assert [p["name"] for p in phases if p["round"] == round_] == list(ROUND_PLAN[round_kind(round_)])
    assert all(p["status"] == "done" for p in phases)
    kinds = [c[0] if c[0] != "exam" else f"exam/{c[2]}" for c in workers.calls]
    # baseline: eval (2 modes + the prompted one); core: teach, train, eval; tailored: pool exam (2 samples),
    # teach, train, eval
    assert kinds == [
        "start",
        "exam/1",
        "exam/1",
        "exam/1",
        "teacher",
        "train",
        "exam/1",
        "exam/1",
        "exam/2",
        "teacher",
        "train",
        "exam/1",
        "exam/1",
    ]
    pool_exam = next(c for c in workers.calls if c[0] == "exam" and c[2] == 2)
    assert len(pool_exam[3]) == 12
    run = fetch_rows(engine.run_dir, "SELECT status, message FROM runs")[0]
    assert run == {"status": "finished", "message": "finished"}
    # Round 1 taught exactly its mistakes (the fake student's odd-numbered questions).
    mistakes = {
        r["example_id"]
        for r in fetch_rows(
            engine.run_dir, "SELECT example_id FROM attempts WHERE round = 1 AND phase = 'exam' AND NOT correct"
        )
    }
    taught = {r["example_id"] for r in fetch_rows(engine.run_dir, "SELECT example_id FROM rationales WHERE round = 1")}
    assert taught == mistakes


def test_training_progress_reaches_the_history_while_training(tmp_path: Path) -> None:
    engine, workers = new_run(config(), tmp_path)
    assert engine.run() == 0
    steps = fetch_rows(engine.run_dir, "SELECT round, count(*) AS n FROM train_steps GROUP BY round ORDER BY round")
    # Each step was in the history as the running phase's progress while the trainer still worked.
    assert workers.progress_seen == [
        {"progress": step, "total": s["n"]} for s in steps for step in range(1, s["n"] + 1)
    ]
    train = fetch_rows(engine.run_dir, "SELECT round, progress, total FROM phases WHERE name = 'train' ORDER BY round")
    assert [(t["round"], t["progress"], t["total"]) for t in train] == [(s["round"], s["n"], s["n"]) for s in steps]


def test_a_stop_inside_an_exam_resumes_where_it_stopped(tmp_path: Path) -> None:
    cfg = config()
    reference, _ = new_run(cfg, tmp_path, "reference")
    assert reference.run() == 0
    pool_exam = lambda call: call[0] == "exam" and call[2] == 2  # noqa: E731
    engine, first = new_run(cfg, tmp_path, "stopped", interrupt=pool_exam)
    assert engine.run() == 130
    assert fetch_rows(engine.run_dir, "SELECT status FROM runs")[0]["status"] == "stopped"
    assert fetch_rows(engine.run_dir, "SELECT status, progress FROM phases WHERE round = 1 AND name = 'exam'") == [
        {"status": "stopped", "progress": CHUNK}
    ]
    resumed, second = engine_for(cfg, engine.run_dir, tmp_path / "stopped-work")
    assert resumed.run() == 0
    exams = [c for c in second.calls if c[0] == "exam"]
    # The done rounds are not run again; the exam asks only for the questions it had not stored.
    assert [c[2] for c in exams] == [2, 1, 1]
    assert set(exams[0][3]) == set(pool_exam_ids(first)) - stored_ids(first, CHUNK)
    assert [c[0] for c in second.calls].count("train") == 1
    assert snapshot(resumed.run_dir) == snapshot(reference.run_dir)


def pool_exam_ids(workers: FakeWorkers) -> tuple[str, ...]:
    return next(c for c in workers.calls if c[0] == "exam" and c[2] == 2)[3]


def stored_ids(workers: FakeWorkers, count: int) -> set[str]:
    return set(pool_exam_ids(workers)[:count])


def test_a_stop_inside_training_skips_the_done_teach_phase_on_resume(tmp_path: Path) -> None:
    cfg = config()
    reference, _ = new_run(cfg, tmp_path, "reference")
    assert reference.run() == 0
    engine, _ = new_run(cfg, tmp_path, "stopped", interrupt=lambda call: call[0] == "train")
    assert engine.run() == 130
    phases = {
        p["name"]: p["status"] for p in fetch_rows(engine.run_dir, "SELECT name, status FROM phases WHERE round = 0")
    }
    assert phases == {"teach": "done", "train": "stopped"}
    # The trainer state as older code named its folder: the resumed training continues from there.
    old_state = engine.run_dir / "checkpoints" / "round-0"
    old_state.parent.mkdir()
    (engine.run_dir / "trainer_state" / "round-0").rename(old_state)
    resumed, second = engine_for(cfg, engine.run_dir, tmp_path / "stopped-work")
    assert resumed.run() == 0
    # Round 0's teacher is not asked again; its training runs again from its stored samples.
    assert [c[0] for c in second.calls if c[0] in ("teacher", "train")] == ["train", "teacher", "train"]
    assert snapshot(resumed.run_dir) == snapshot(reference.run_dir)
    assert second.state_dirs == [old_state, engine.run_dir / "trainer_state" / "round-1"]
    assert not old_state.exists() and not list((engine.run_dir / "trainer_state").iterdir())  # removed once stored


def test_a_round_without_mistakes_keeps_the_previous_adapter(tmp_path: Path) -> None:
    engine, workers = new_run(config(), tmp_path, knows_all_after_training=True)
    assert engine.run() == 0
    assert [c[0] for c in workers.calls].count("train") == 1  # round 1 had nothing to learn
    summary = fetch_rows(engine.run_dir, "SELECT round, mistakes, samples FROM round_summary WHERE round = 1")[0]
    assert (summary["mistakes"], summary["samples"]) == (0, 0)
    checkpoints = fetch_rows(engine.run_dir, "SELECT round, sha256 FROM checkpoints ORDER BY round")
    assert [c["round"] for c in checkpoints] == [0, 1] and checkpoints[0]["sha256"] == checkpoints[1]["sha256"]
    assert fetch_rows(engine.run_dir, "SELECT count(*) AS n FROM train_steps WHERE round = 1")[0]["n"] == 0


def test_round_0_without_samples_fails_in_one_line(tmp_path: Path) -> None:
    # Rationalization samples come only from rp or crop rationales; cote gives none.
    engine, workers = new_run(config("training.tasks=[rationalize]"), tmp_path)
    with pytest.raises(RunError, match="round 0 built no training samples for training.tasks=\\['rationalize'\\]"):
        engine.run()
    assert "train" not in [c[0] for c in workers.calls]
    assert fetch_rows(engine.run_dir, "SELECT status FROM runs")[0]["status"] == "failed"
    assert fetch_rows(engine.run_dir, "SELECT name, status FROM phases WHERE round = 0 ORDER BY name") == [
        {"name": "teach", "status": "done"},
        {"name": "train", "status": "failed"},
    ]


def test_answer_only_training_asks_no_teacher(tmp_path: Path) -> None:
    engine, workers = new_run(config("training.tasks=[answer]"), tmp_path)
    assert engine.run() == 0
    assert fetch_rows(engine.run_dir, "SELECT count(*) AS n FROM teacher_calls")[0]["n"] == 0
    tasks = fetch_rows(engine.run_dir, "SELECT DISTINCT task, source FROM samples WHERE round = 0")
    assert tasks == [{"task": "answer", "source": "gold"}]


# ----- teachers per kind of round -----------------------------------------------------------------
def two_teachers(base_url: str, replay_rounds: str, api_rounds: str) -> list[str]:
    teachers = (
        f"[{{name: davinci, backend: replay, rounds: {replay_rounds}}}, {{name: api, backend: openai, "
        f"model: program, base_url: '{base_url}', rounds: {api_rounds}}}]"
    )
    return [
        "data.task=multiarith",
        "data.pool_size=8",
        "data.test_size=4",
        f"teacher.teachers={teachers}",
        "teacher.strategies=[zero_shot_cot]",
        "teacher.retry_backoff_s=0.02",
    ]


@pytest.mark.parametrize("replay_rounds, api_rounds", [("core", "tailored"), ("all", "all")])
def test_replay_for_round_0_and_an_api_teacher_for_tailored_rounds(
    tmp_path: Path, teacher_server, replay_rounds: str, api_rounds: str
) -> None:
    engine, workers = new_run(config(*two_teachers(teacher_server.base_url, replay_rounds, api_rounds)), tmp_path)
    assert engine.run() == 0
    taught = fetch_rows(engine.run_dir, "SELECT DISTINCT round, teacher, strategy FROM rationales")
    by_round = {r: {(t["teacher"], t["strategy"]) for t in taught if t["round"] == r} for r in (0, 1)}
    core = {("davinci", "zero_shot_cot")} | ({("api", "zero_shot_cot")} if api_rounds == "all" else set())
    assert by_round[0] == core
    # The API teacher tailors; a replay teacher kept for tailored rounds re-explains the same mistakes.
    assert by_round[1] == {("api", "tailored")} | ({("davinci", "zero_shot_cot")} if replay_rounds == "all" else set())
    sent_to_api = fetch_rows(
        engine.run_dir,
        "SELECT count(*) AS n FROM teacher_calls WHERE teacher = 'api' AND strategy = 'tailored' AND round = 1",
    )[0]["n"]
    assert sent_to_api > 0 and teacher_server.calls >= sent_to_api
    assert [sorted(t.name for t in s.teachers) for s in workers.teacher_sections] == [
        sorted(n for n, r in (("davinci", replay_rounds), ("api", api_rounds)) if r in ("all", kind))
        for kind in ("core", "tailored")
    ]
    assert fetch_rows(engine.run_dir, "SELECT status FROM runs")[0]["status"] == "finished"


def test_every_kind_of_round_needs_a_teacher() -> None:
    teachers = "[{name: a, backend: program, model: p, rounds: core}, {name: b, backend: program, rounds: core}]"
    with pytest.raises(ConfigError, match="key 'teacher.teachers': .*no teacher teaches the tailored rounds"):
        config(f"teacher.teachers={teachers}")


def test_a_tagged_teacher_also_trains_the_prompt_eval_uses(tmp_path: Path) -> None:
    engine, _ = new_run(config("teacher.teachers.0.task_tag=prog"), tmp_path)
    assert engine.run() == 0
    tasks = fetch_rows(
        engine.run_dir,
        "SELECT round, task, count(*) AS n FROM samples WHERE source = 'program' GROUP BY ALL ORDER BY ALL",
    )
    for round_ in (0, 1):
        counts = {t["task"]: t["n"] for t in tasks if t["round"] == round_}
        # Each accepted rationale trains its teacher's prefix and the plain [explain] one, which eval asks with.
        assert counts.get("prog", 0) > 0 and counts["prog"] == counts.get("explain"), tasks


def test_served_teachers_count_in_the_cpus_a_run_needs() -> None:
    from tutorloop.loop.cluster import needed_cpus

    served = (
        "teacher.teachers=[{name: r, backend: replay, rounds: core}, {name: s, backend: openai, "
        "model: m, rounds: tailored, serve: {model: smollm2-135m-instruct, num_cpus: 1.5}}]"
    )
    assert needed_cpus(config(served)) == needed_cpus(config()) + 1.5


class FakeServers:
    """Stands in for actors/serving.served_teachers: points served teachers at the test server, logs
    each start and stop."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.log: list[tuple[str, tuple[str, ...]]] = []

    @contextlib.contextmanager
    def __call__(self, section: TeacherSection, log_dir: str | None = None) -> Iterator[TeacherSection]:
        names = tuple(t.name for t in section.teachers)
        self.log.append(("start", names))
        try:
            yield section.model_copy(
                update={
                    "teachers": [
                        t.model_copy(update={"base_url": self.base_url, "serve": None}) for t in section.teachers
                    ]
                }
            )
        finally:
            self.log.append(("stop", names))


SERVED = (
    "teacher.teachers=[{name: davinci, backend: replay, rounds: core}, {name: live, backend: openai, "
    "model: program, rounds: tailored, serve: {model: smollm2-135m-instruct}}]"
)
MULTIARITH = ["data.task=multiarith", "data.pool_size=8", "data.test_size=4", "teacher.strategies=[zero_shot_cot]"]


def test_served_teachers_start_with_the_first_round_they_teach_and_stop_with_the_run(
    tmp_path: Path, teacher_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tutorloop.actors.serving as serving

    servers = FakeServers(teacher_server.base_url)
    monkeypatch.setattr(serving, "served_teachers", servers)
    cfg = config(*MULTIARITH, SERVED, "run.rounds=2")
    # Stopped inside round 2's training: round 1 started the server, the stop ends it.
    engine, _ = new_run(cfg, tmp_path, interrupt=lambda call: call[0] == "train" and engine.history.round_done(1))
    assert engine.run() == 130
    assert servers.log == [("start", ("live",)), ("stop", ("live",))]
    assert teacher_server.calls > 0
    # The resumed run's teaching is done: it starts no server.
    resumed, _ = engine_for(cfg, engine.run_dir, tmp_path / "run-work")
    assert resumed.run() == 0
    assert len(servers.log) == 2
    # A round-0-only run never needs the served teacher.
    only_core, _ = new_run(config(*MULTIARITH, SERVED, "run.rounds=0"), tmp_path, "core")
    assert only_core.run() == 0 and len(servers.log) == 2
