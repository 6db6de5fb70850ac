"""`tutorloop` command line: run, resume, status, sql, report.

Expected failures (bad config, bad data, a locked or missing history) end with one line on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

import pyarrow as pa

from tutorloop.loop.config import ConfigError, load_config

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(RuntimeError):
    """An expected failure; its message is printed as one line."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


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
    if fmt == "table":
        return format_table(table)
    if fmt == "json":
        return json.dumps(table.to_pylist(), default=str, indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow(["" if v is None else v for v in row.values()])
        return buffer.getvalue().rstrip("\n")
    raise CliError(f"unknown format {fmt!r}", EXIT_USAGE)


def cmd_sql(args: argparse.Namespace) -> int:
    from tutorloop.store.query import query

    if args.file:
        sql = Path(args.file).read_text()
    elif args.query:
        sql = args.query
    else:
        raise CliError("give a query, e.g. tutorloop sql RUN_DIR \"SELECT * FROM round_summary\"", EXIT_USAGE)
    table = query(args.run_dir, sql)
    text = format_result(table, args.format)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


def _local_ray_env(address: str | None) -> None:
    """A local Ray binds to loopback and sends no usage statistics; Ray reads these on import."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    _local_ray_env(args.address or cfg.ray.address)
    from tutorloop.loop.engine import run_from_config

    return run_from_config(cfg, args.config, run_dir=args.run_dir, overwrite=args.overwrite,
                           resume=args.resume, address=args.address)


def cmd_resume(args: argparse.Namespace) -> int:
    _local_ray_env(args.address)
    from tutorloop.loop.engine import resume_run

    return resume_run(Path(args.run_dir), overrides=args.set, address=args.address)


def cmd_status(args: argparse.Namespace) -> int:
    from tutorloop.loop.status import describe_run

    print(describe_run(Path(args.run_dir)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    raise CliError("tutorloop report is not built yet; query the history with tutorloop sql meanwhile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tutorloop",
        description="Teach a small student model to reason with a teacher LLM, round by round.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start a run from a YAML config")
    run.add_argument("config", help="YAML config, e.g. configs/quick.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set teacher.model=gpt-4o-mini (repeatable)")
    run.add_argument("--run-dir", help="run directory (default: <run.run_dir>/<run.name>)")
    run.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    run.add_argument("--resume", action="store_true", help="continue an existing run directory")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="continue a stopped or killed run")
    resume.add_argument("run_dir")
    resume.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a resume-safe key, e.g. --set run.rounds=4")
    resume.add_argument("--address", help="Ray cluster address")
    resume.set_defaults(func=cmd_resume)

    status = sub.add_parser("status", help="where a run is: round, phase, progress (works while it runs)")
    status.add_argument("run_dir")
    status.set_defaults(func=cmd_status)

    sql = sub.add_parser("sql", help="read-only SQL over a run's history")
    sql.add_argument("run_dir", help="run directory or history.duckdb file")
    sql.add_argument("query", nargs="?", help="SQL query (or use -f)")
    sql.add_argument("-f", "--file", help="read the query from a file")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument("--out", help="write the result to this file instead of stdout")
    sql.set_defaults(func=cmd_sql)

    report = sub.add_parser("report", help="write report.md and report.html into the run directory")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tutorloop.loop.errors import RunError
    from tutorloop.loop.tasks import DataError
    from tutorloop.store.connect import StoreBusyError
    from tutorloop.store.query import ReadOnlyQueryError
    from tutorloop.store.schema import SchemaError

    import duckdb

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ReadOnlyQueryError) as exc:
        print(f"tutorloop: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"tutorloop: error: {exc}", file=sys.stderr)
        return exc.code
    except (RunError, DataError, StoreBusyError, SchemaError, FileNotFoundError) as exc:
        print(f"tutorloop: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except duckdb.Error as exc:
        print(f"tutorloop: error: SQL: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
