"""`tutorloop` command line: run, resume, fork, status, sql, report, compare, export, experiment.

Expected failures (a usage mistake, bad config, bad data, bad SQL, a locked or missing history) are
TutorloopErrors, caught once in `main`: one line on stderr and the error's exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Iterator, NoReturn

import pyarrow as pa

from tutorloop.loop.core.config import load_config
from tutorloop.loop.core.errors import EXIT_FAILURE, EXIT_USAGE, TutorloopError
from tutorloop.loop.formatting import markdown_table

FORMATS = ("table", "markdown", "csv", "json", "parquet")


def format_table(table: pa.Table, max_width: int = 60) -> str:
    """Aligned text table, long cells cut with an ellipsis."""
    columns = table.column_names
    rows = [["" if v is None else str(v) for v in row.values()] for row in table.to_pylist()]
    rows = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in rows]
    rows = [[c.replace("\n", "\\n") for c in r] for r in rows]
    widths = [max([len(name)] + [len(r[i]) for r in rows]) for i, name in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out)


def format_result(table: pa.Table, fmt: str) -> str:
    """`table` as text in one of FORMATS but parquet (binary, see write_result)."""
    if fmt == "table":
        return format_table(table)
    if fmt == "markdown":
        return markdown_table(table.column_names, [list(row.values()) for row in table.to_pylist()])
    if fmt == "json":
        return json.dumps(table.to_pylist(), default=str, indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow(["" if v is None else v for v in row.values()])
        return buffer.getvalue().rstrip("\n")
    raise TutorloopError(f"unknown format {fmt!r}", EXIT_USAGE)


def _is_history(target: str) -> bool:
    """A run directory or a .duckdb file (a query too long for a path name is neither)."""
    try:
        path = Path(target)
        return path.is_dir() or (path.is_file() and path.suffix == ".duckdb")
    except OSError:
        return False


def split_sql_targets(targets: list[str]) -> tuple[list[str], str | None]:
    """`sql` arguments -> (runs, query): the leading arguments that are run directories or history files
    are runs; what follows (at most one argument) is the query."""
    runs: list[str] = []
    for index, target in enumerate(targets):
        if _is_history(target):
            runs.append(target)
            continue
        rest = targets[index:]
        if not runs:
            raise TutorloopError(
                f'{target}: not a run directory or history file; usage: tutorloop sql RUN_DIR [RUN_DIR ...] ["QUERY"]',
                EXIT_USAGE,
            )
        if len(rest) > 1:
            raise TutorloopError(
                f"{rest[1]}: give the query as one quoted argument, after the run directories", EXIT_USAGE
            )
        return runs, rest[0]
    return runs, None


def write_result(table: pa.Table, fmt: str, out: str | None) -> None:
    """Print or save a result; parquet goes to a file only (it is binary)."""
    if fmt == "parquet" and not out:
        raise TutorloopError("--format parquet needs --out FILE", EXIT_USAGE)
    if not out:
        print(format_result(table, fmt))
        return
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, out)
        else:
            Path(out).write_text(format_result(table, fmt) + "\n")
    except OSError as exc:
        raise TutorloopError(f"--out {out}: cannot write ({exc.strerror or exc})") from None


def read_statements(stream: io.TextIOBase, prompt: bool) -> Iterator[str]:
    """Yield SQL statements from `stream`, each ending at a line that ends with `;`."""
    lines: list[str] = []
    while True:
        if prompt:
            print("sql> " if not lines else "...> ", end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line:
            break
        if not lines and line.strip().lower() in (".quit", ".exit", "\\q", "quit", "exit"):
            return
        lines.append(line)
        if line.rstrip().endswith(";"):
            statement = "".join(lines).strip()
            lines = []
            if statement.strip("; \n"):
                yield statement
    rest = "".join(lines).strip()
    if rest:
        yield rest


def interactive_sql(runs: list[str], fmt: str, out: str | None, wait: float) -> int:
    """Read statements until end of input; every statement opens and closes the files, so a prompt left
    open never blocks a run. A bad statement prints its error and the prompt goes on."""
    from tutorloop.store.query import query_runs

    prompt = sys.stdin.isatty()
    if prompt:
        print(
            f"tutorloop sql on {', '.join(runs)}: end each query with ';', quit with .quit or Ctrl-D", file=sys.stderr
        )
    failures = 0
    for statement in read_statements(sys.stdin, prompt):
        try:
            write_result(query_runs(runs, statement, timeout_s=wait), fmt, out)
        except TutorloopError as exc:
            failures += 1
            print(f"tutorloop: error: {exc}", file=sys.stderr)
    return EXIT_FAILURE if failures and not prompt else 0


def cmd_sql(args: argparse.Namespace) -> int:
    from tutorloop.store.query import query_runs

    runs, sql = split_sql_targets(args.targets)
    if args.file:
        if sql:
            raise TutorloopError("give the query either as an argument or with -f, not both", EXIT_USAGE)
        try:
            sql = Path(args.file).read_text()
        except OSError as exc:
            raise TutorloopError(f"-f {args.file}: cannot read ({exc.strerror or exc})", EXIT_USAGE) from None
    if sql is None:
        return interactive_sql(runs, args.format, args.out, args.wait)
    write_result(query_runs(runs, sql, timeout_s=args.wait), args.format, args.out)
    return 0


def prefer_local_ray_env(address: str | None) -> None:
    """A local Ray binds to loopback and sends no usage statistics; Ray reads these on import."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    if args.dry_run:
        from tutorloop.loop.dry_run import dry_run

        print(dry_run(cfg, Path(args.run_dir) if args.run_dir else Path(cfg.run.run_dir) / cfg.run.name))
        return 0
    prefer_local_ray_env(args.address or cfg.ray.address)
    from tutorloop.loop.run_dir import run_from_config

    return run_from_config(
        cfg, run_dir=args.run_dir, overwrite=args.overwrite, resume=args.resume, address=args.address
    )


def cmd_resume(args: argparse.Namespace) -> int:
    prefer_local_ray_env(args.address)
    from tutorloop.loop.run_dir import resume_run

    return resume_run(Path(args.run_dir), overrides=args.set, address=args.address)


def cmd_fork(args: argparse.Namespace) -> int:
    prefer_local_ray_env(args.address)
    from tutorloop.loop.engine import RoundEngine
    from tutorloop.loop.fork import fork_run

    parent = Path(args.parent_dir)
    run_dir = Path(args.run_dir) if args.run_dir else parent.parent / args.name
    cfg = fork_run(parent, run_dir, args.after_round, overrides=args.set, overwrite=args.overwrite)
    print(f"tutorloop: forked {parent} after round {args.after_round} into {run_dir}", flush=True)
    return RoundEngine(cfg, run_dir, args.address).run()


def cmd_status(args: argparse.Namespace) -> int:
    from tutorloop.loop.status import describe_run

    print(describe_run(Path(args.run_dir)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tutorloop.loop.report import write_report

    md_path, html_path = write_report(args.run_dir, examples=args.examples)
    print(f"tutorloop: wrote {md_path} and {html_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tutorloop.loop.compare import compare_sections, parse_groups, render_sections

    text_formats = ("table", "markdown")
    only = args.table or (None if args.format in text_formats else "runs")
    sections = compare_sections(args.run_dirs, parse_groups(args.group), only=only)
    if only:
        write_result(sections[only].table, args.format, args.out)
        return 0
    text = render_sections(sections, args.format == "markdown", lambda table: format_result(table, args.format))
    if not args.out:
        print(text)
        return 0
    try:
        Path(args.out).write_text(text + "\n")
    except OSError as exc:
        raise TutorloopError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.action == "run":
        prefer_local_ray_env(args.address)
        from tutorloop.loop.experiment import run_experiment

        return run_experiment(args.target, args.dir, amend=args.amend, address=args.address, parallel=args.parallel)
    from tutorloop.loop.experiment_report import experiment_status, write_experiment_report

    if args.action == "status":
        print(experiment_status(args.target))
        return 0
    text, path = write_experiment_report(args.target)
    print(text)
    print(f"tutorloop: wrote {path}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tutorloop.loop.export_run import export_run

    result = export_run(args.run_dir, args.out, round_=args.round, merge=args.merge)
    kind = "merged model" if result.merged else "peft adapter"
    print(f"tutorloop: exported {kind} of {result.reason} to {result.out_dir}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other expected failure: one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("tutorloop").strip()
        raise TutorloopError(f"{command + ': ' if command else ''}{message}; see {self.prog} --help", EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tutorloop",
        description="Teach a small student model to reason with a teacher LLM, round by round.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(sub)
    _add_read_commands(sub)
    _add_experiment_command(sub)
    return parser


def _add_experiment_command(sub: argparse._SubParsersAction) -> None:
    """`experiment run SPEC | status DIR | report DIR`: pre-registered arms x seeds."""
    experiment = sub.add_parser(
        "experiment",
        help="a pre-registered experiment: arms x seeds, its plan frozen before the first run",
        description="run SPEC.yaml [--dir DIR] freezes the spec into DIR/experiment.duckdb, then runs each seed's "
        "prefix and its arms (forks); status DIR and report DIR read it (report: markdown, also DIR/report.md).",
    )
    experiment.add_argument("action", choices=("run", "status", "report"))
    experiment.add_argument(
        "target", metavar="SPEC|DIR", help="run: the spec YAML; status, report: the experiment folder"
    )
    experiment.add_argument("--dir", help="run: the experiment folder (default: runs/<spec name>)")
    experiment.add_argument(
        "--amend", metavar="WHY", help="run: record a changed spec as an amendment to the frozen plan, with the reason"
    )
    experiment.add_argument("--address", help="run: a Ray cluster (default: RAY_ADDRESS): as many runs at once as fit")
    experiment.add_argument("--parallel", type=int, metavar="N", help="run: on a cluster, at most N runs at once")
    experiment.set_defaults(func=cmd_experiment)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that run rounds: run, resume, fork."""
    run = sub.add_parser("run", help="start a run from a YAML config")
    run.add_argument("config", help="YAML config, e.g. configs/quick.yaml")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set teacher.model=gpt-4o-mini (repeatable)",
    )
    run.add_argument("--run-dir", help="run directory (default: <run.run_dir>/<run.name>)")
    run.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    run.add_argument("--resume", action="store_true", help="continue an existing run directory")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and the worst-case teacher cost; start, send and write nothing",
    )
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="continue a stopped or killed run")
    resume.add_argument("run_dir")
    resume.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a resume-safe key, e.g. --set run.rounds=4",
    )
    resume.add_argument("--address", help="Ray cluster address")
    resume.set_defaults(func=cmd_resume)

    fork = sub.add_parser("fork", help="a new run continuing from a finished round of another run (ablations)")
    fork.add_argument("parent_dir", metavar="RUN_DIR", help="the run to branch from (left untouched)")
    fork.add_argument(
        "--after-round", type=int, required=True, help="last round to inherit (-1 = only the zero-shot baseline)"
    )
    where = fork.add_mutually_exclusive_group(required=True)
    where.add_argument("--name", help="the fork's name; its directory is next to the parent's")
    where.add_argument("--run-dir", help="the fork's run directory")
    fork.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="what the fork does differently, e.g. --set training.selection=random (repeatable)",
    )
    fork.add_argument("--overwrite", action="store_true", help="delete an existing fork directory first")
    fork.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    fork.set_defaults(func=cmd_fork)


def _add_read_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that only read a run's history: status, sql, report, compare, export."""
    status = sub.add_parser("status", help="where a run is: round, phase, progress (works while it runs)")
    status.add_argument("run_dir")
    status.set_defaults(func=cmd_status)

    sql = sub.add_parser(
        "sql",
        help="read-only SQL over one or more runs' histories",
        usage="tutorloop sql [options] RUN_DIR [RUN_DIR ...] [QUERY]",
        description="Read-only SQL. Arguments that are run directories (or history.duckdb files) come first; "
        "the query follows as one quoted argument. With several runs every table and view gets a "
        "`run` column (the run directory's name). Without a query (and without -f) statements are "
        "read from stdin, each ended by ';'.",
    )
    sql.add_argument(
        "targets", nargs="+", metavar="RUN_DIR|QUERY", help="run directories or history files, then the query"
    )
    sql.add_argument("-f", "--file", help="read the query from a file")
    sql.add_argument("--format", choices=FORMATS, default="table")
    sql.add_argument("--out", help="write the result to this file instead of stdout (needed for parquet)")
    sql.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for a run's write to finish before giving up (default 10)",
    )
    sql.set_defaults(func=cmd_sql)

    report = sub.add_parser("report", help="write report.md and report.html into the run directory")
    report.add_argument("run_dir")
    report.add_argument("--examples", type=int, default=6, help="tailored feedback examples shown (default 6)")
    report.set_defaults(func=cmd_report)

    compare = sub.add_parser(
        "compare",
        help="runs side by side (accuracy per round, cost, calls, time), with paired tests",
        description="Runs side by side, then paired tests on the test questions they share: per pair of runs "
        "and round, or, for arms of runs that differ only in run.seed, per arm and between arms. "
        "The text formats print every table that applies; csv, json and parquet print one (--table).",
    )
    compare.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    compare.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR,RUN_DIR",
        help="an arm of seeds, named (repeatable); default: arms found from the stored configs",
    )
    compare.add_argument(
        "--table",
        choices=("runs", "pairs", "arms", "arm-tests"),
        help="only this table (default: all that apply; csv, json and parquet: runs)",
    )
    compare.add_argument("--format", choices=FORMATS, default="table")
    compare.add_argument("--out", help="write the output to this file instead of stdout")
    compare.set_defaults(func=cmd_compare)

    export = sub.add_parser("export", help="a round's adapter as a peft folder, or merged into the base")
    export.add_argument("run_dir")
    export.add_argument("--round", type=int, help="round to export (default: best test accuracy)")
    export.add_argument("--out", required=True, help="new folder to write")
    export.add_argument("--merge", action="store_true", help="merge into the base model (plain transformers folder)")
    export.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and getattr(args, "targets", None) is not None and not any(e.startswith("-") for e in extra):
            args.targets += extra  # `sql RUN --format csv "QUERY"`: argparse leaves a late positional over
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except TutorloopError as exc:
        print(f"tutorloop: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
