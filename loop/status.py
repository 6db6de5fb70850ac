"""`tutorloop status`: where a run is, read from its history without disturbing the writer."""

from __future__ import annotations

from pathlib import Path

from tutorloop.loop.formatting import percent
from tutorloop.store.query import fetch_rows


def describe_run(run_dir: Path) -> str:
    run = fetch_rows(run_dir, "SELECT name, status, message, created_at FROM runs")
    if not run:
        return f"{run_dir}: no run recorded yet"
    run = run[0]
    lines = [
        f"run {run['name']} ({run_dir}): {run['status']}"
        + (f" - {run['message']}" if run["message"] else "")
        + f", started {run['created_at']:%Y-%m-%d %H:%M}"
    ]
    active = fetch_rows(
        run_dir,
        "SELECT round, name, status, progress, total FROM phases "
        "WHERE status <> 'done' ORDER BY started_at DESC LIMIT 1",
    )
    if active:
        p = active[0]
        total = p["total"] or "?"  # a training's step count is known once the trainer has planned it
        lines.append(f"now: round {p['round']} phase {p['name']} ({p['status']}) {p['progress']}/{total}")
    summary = fetch_rows(
        run_dir,
        "SELECT round, kind, status, test_accuracy, pool_accuracy, mistakes, "
        "teacher_calls, cache_hits, teacher_cost_usd, round_s FROM round_summary",
    )
    if summary:
        lines.append("round  kind      status   test acc  pool acc  mistakes  calls  hits  cost $    seconds")
        for r in summary:
            lines.append(
                f"{r['round']:>5}  {r['kind']:<8}  {r['status']:<7}  {percent(r['test_accuracy']):>8}  "
                f"{percent(r['pool_accuracy']):>8}  {r['mistakes'] if r['mistakes'] is not None else '-':>8}  "
                f"{r['teacher_calls'] or 0:>5}  {r['cache_hits'] or 0:>4}  {r['teacher_cost_usd'] or 0:>7.4f}  "
                f"{r['round_s'] or 0:>7.0f}"
            )
    if run["status"] != "finished":
        # A run killed outright still says `running`; resuming it is safe either way.
        lines.append(f"resume (if it is not running): tutorloop resume {run_dir}")
    return "\n".join(lines)
