"""`tutorloop export RUN_DIR [--round K] --out DIR [--merge]`: a round's adapter, ready to use elsewhere.

Without `--round` the round with the highest test accuracy is exported (ties go to the later round,
which was trained longer), and the choice is stated. The folder is either the peft adapter (plus the
tokenizer) or, with `--merge`, the adapter merged into the base as a plain transformers folder. Both
get a model card (README.md) with the base model, teacher, task, rounds and measured accuracies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tutorloop.loop.compare import strategies_by_round
from tutorloop.loop.core.config import config_from_dict
from tutorloop.loop.core.errors import RunError
from tutorloop.loop.core.student_prompt import student_prompt
from tutorloop.loop.formatting import markdown_table, percent
from tutorloop.store.query import fetch_rows, history_path


@dataclass
class ExportResult:
    out_dir: Path
    round: int
    merged: bool
    reason: str  # why this round: asked for, or best on the test split
    test_accuracy: float | None


def choose_round(rounds: list[dict[str, Any]], asked: int | None) -> tuple[int, str]:
    """(round, reason) among rounds that have an adapter; `rounds` rows hold round, test_accuracy."""
    available = sorted(r["round"] for r in rounds)
    if not available:
        raise RunError("no round has a trained adapter yet (round 0 stores the first)")
    if asked is not None:
        if asked not in available:
            raise RunError(
                f"--round {asked}: no adapter for that round; rounds with one: {', '.join(map(str, available))}"
            )
        return asked, f"round {asked} as asked"
    measured = [r for r in rounds if r["test_accuracy"] is not None]
    if not measured:
        latest = available[-1]
        return latest, f"round {latest}: the latest (no round evaluated yet)"
    best = max(measured, key=lambda r: (r["test_accuracy"], r["round"]))
    return best["round"], (
        f"round {best['round']}: best test accuracy ({percent(best['test_accuracy'])}; ties go to the later round)"
    )


def _base_description(student: dict[str, Any]) -> str:
    model = student.get("model")
    if model == "tiny":
        tiny = student.get("tiny", {})
        return (
            f"tiny from-scratch {tiny.get('arch')} ({tiny.get('n_layer')} layers, width {tiny.get('n_embd')}), "
            f"built and pretrained by tutorloop (student.model: tiny)"
        )
    if student.get("gguf_file"):
        return f"{model} (GGUF {student['gguf_file']}, dequantized)"
    return str(model)


def _round_label(round_: int, chosen: int) -> str:
    if round_ < 0:
        return "baseline (untrained)"
    return f"{round_} (this folder)" if round_ == chosen else str(round_)


def model_card(
    cfg: dict[str, Any],
    rounds: list[dict[str, Any]],
    chosen: int,
    reason: str,
    merged: bool,
    run_name: str,
    strategies: str,
    base_source: str,
) -> str:
    """README.md for the exported folder (Hugging Face model card layout with YAML front matter)."""
    student = cfg.get("student", {})
    teacher = cfg.get("teacher", {})
    data = cfg.get("data", {})
    modes = list(student.get("eval_modes") or ["explain"])
    base = _base_description(student)
    teachers = [f"{t['name']}: {t['model']} via the {t['backend']} backend" for t in teacher.get("teachers", [])]
    lines = [
        "---",
        f"library_name: {'transformers' if merged else 'peft'}",
        "tags: [tutorloop, lora, distillation, reasoning]",
        "---",
        "",
        f"# {run_name}, round {chosen} ({'merged' if merged else 'LoRA adapter'})",
        "",
        "A student model trained by tutorloop from a teacher LLM's explanations over "
        "rounds (multi-task rationale learning in round 0, tailored corrections of the student's own mistakes "
        "with self-reflection afterwards).",
        "",
        f"- **Base model**: {base}; weights loaded from `{base_source}`",
        f"- **Teacher**: {'; '.join(teachers) or '-'}",
        f"- **Teaching strategies**: {strategies or '-'}",
        f"- **Task**: {data.get('task')}",
        f"- **Rounds**: {', '.join(str(r['round']) for r in rounds if r['round'] >= 0)} trained; this folder "
        f"holds round {chosen}",
        f"- **Why this round**: {reason}",
        f"- **LoRA**: r={student.get('lora', {}).get('r')}, alpha={student.get('lora', {}).get('alpha')}, "
        f"modules {student.get('lora', {}).get('target_modules')}",
        "",
        "## Measured accuracy (test split, greedy decoding)",
        "",
        markdown_table(
            ["round"] + [f"{m} mode" for m in modes],
            [[_round_label(r["round"], chosen)] + [percent(r.get(f"acc_{m}")) for m in modes] for r in rounds],
        ),
    ]
    example = student_prompt("Tom has 3 apples and buys 4 more. How many apples does he have?", "explain")
    if merged:
        load = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            "model = AutoModelForCausalLM.from_pretrained('THIS_FOLDER')",
            "tokenizer = AutoTokenizer.from_pretrained('THIS_FOLDER')",
        ]
    else:
        load = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"base = AutoModelForCausalLM.from_pretrained({base_source!r})  # the base model above",
            "model = PeftModel.from_pretrained(base, 'THIS_FOLDER')",
            "tokenizer = AutoTokenizer.from_pretrained('THIS_FOLDER')",
        ]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        *load,
        f"prompt = {example!r}",
        "ids = tokenizer(prompt, return_tensors='pt')",
        "out = model.generate(**ids, max_new_tokens=96, do_sample=False)",
        "print(tokenizer.decode(out[0][ids['input_ids'].shape[1]:], skip_special_tokens=True))",
        "```",
        "",
        "The prompt format is the one the student was trained on: `[explain]` asks for a rationale ending "
        "in `Therefore, the answer is N.`, `[answer]` for the bare answer.",
        "",
    ]
    return "\n".join(lines)


def export_run(
    run_dir: str | Path, out_dir: str | Path, round_: int | None = None, merge: bool = False
) -> ExportResult:
    """Export a round's adapter (peft folder + tokenizer) or the merged model, with a model card."""
    run_dir = Path(run_dir)
    path = history_path(run_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"--out {out}: folder exists and is not empty; choose a new folder")
    runs = fetch_rows(path, "SELECT name, config FROM runs")
    if not runs:
        raise RunError(f"{run_dir}: the history holds no run")
    cfg_dict = json.loads(runs[0]["config"])
    cfg = config_from_dict(cfg_dict, str(path))
    modes = list(cfg.student.eval_modes)
    accuracy_columns = ", ".join(f"max(value) FILTER (WHERE name = 'accuracy_{m}') AS acc_{m}" for m in modes)
    measured = fetch_rows(
        path,
        f"SELECT round, {accuracy_columns}, max(value) FILTER (WHERE name = 'accuracy') "
        f"AS test_accuracy FROM metrics WHERE split = 'test' GROUP BY round ORDER BY round",
    )
    adapters = {
        r["round"]: r
        for r in fetch_rows(path, "SELECT round, path, sha256 FROM checkpoints WHERE kind = 'adapter' ORDER BY round")
    }
    candidates = [
        dict(next((m for m in measured if m["round"] == k), {"test_accuracy": None}), round=k) for k in adapters
    ]
    chosen, reason = choose_round(candidates, round_)
    folder = run_dir / adapters[chosen]["path"]
    _check_adapter(folder, adapters[chosen]["sha256"])
    out.mkdir(parents=True, exist_ok=True)
    from tutorloop.actors.models import load_tokenizer, student_source

    base_source = student_source(cfg.student)
    if merge:
        from tutorloop.actors.export import merge_adapter

        merge_adapter(cfg.student, str(folder), out)
    else:
        shutil.copytree(folder, out, dirs_exist_ok=True)
        # The tokenizer travels with the adapter: the tiny student's tokenizer exists nowhere else.
        load_tokenizer(base_source).save_pretrained(out)
    rows = [m for m in measured if m["round"] < 0 or m["round"] in adapters]
    strategies = strategies_by_round(
        fetch_rows(path, "SELECT DISTINCT round, strategy FROM rationales WHERE round <= ?", [chosen])
    )
    (out / "README.md").write_text(
        model_card(cfg_dict, rows, chosen, reason, merge, runs[0]["name"], strategies, base_source)
    )
    accuracy = next((m["test_accuracy"] for m in measured if m["round"] == chosen), None)
    return ExportResult(out, chosen, merge, reason, accuracy)


def _check_adapter(folder: Path, sha256: str) -> None:
    """The stored adapter must be the one the run recorded (sha256 of its reproducible tar bytes)."""
    from tutorloop.actors.models import adapter_to_bytes

    if not (folder / "adapter_config.json").is_file():
        raise RunError(f"{folder}: adapter folder missing or incomplete")
    if hashlib.sha256(adapter_to_bytes(folder)).hexdigest() != sha256:
        raise RunError(f"{folder}: adapter files changed since the run stored them (sha256 differs)")
