"""`inferq db prune` and `inferq db partitions`: retention of daily partitions (ops/prune.py)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from inferq.cli_models import JSON_OPT, print_json
from inferq.common.errors import InvalidInput
from inferq.common.settings import Settings, get_settings

if TYPE_CHECKING:
    from inferq.ops.prune import PartitionItem, PrunePlan

err_console = Console(stderr=True, soft_wrap=True)


def older_than_from(option: str | None, settings: Settings) -> dt.timedelta:
    """``--older-than``, else INFERQ_RETENTION, as a timedelta (else a clear error)."""
    from inferq.common.timewindow import parse_duration

    value = option or settings.retention
    if not value:
        raise InvalidInput(
            "how old must results be to go? give --older-than (e.g. --older-than 90d) "
            "or set INFERQ_RETENTION (e.g. INFERQ_RETENTION=90d)"
        )
    return parse_duration(value)


def prune(
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="Drop the days whose rows are all older than this, e.g. 90d "
        "(default: INFERQ_RETENTION).",
    ),
    archive: Path | None = typer.Option(
        None,
        "--archive",
        file_okay=False,
        help="First write each partition to Parquet under this folder "
        "(DIR/<table>/day=YYYY-MM-DD/<partition>.parquet), checked before the drop.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would go (row counts may be estimates); change nothing."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask (needed when stdin is not a terminal, e.g. cron)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Drop (optionally archive) the daily partitions older than the retention, and old rows of
    the hourly drift/accuracy tables and finished bulk runs. Writers are never blocked."""
    from inferq.common.db import make_engine
    from inferq.common.failures import translated
    from inferq.ops import prune as ops

    settings = get_settings()
    older = older_than_from(older_than, settings)
    engine = make_engine(settings)
    try:
        with translated(settings):
            the_plan = ops.plan(engine, older)
            nothing = not the_plan.partitions and not any(t.rows for t in the_plan.tables)
            if not (dry_run or nothing or yes):
                _confirm(the_plan)
            if dry_run:
                result: PrunePlan = the_plan
            else:
                # Progress goes to stderr, also with --json: cron logs show how far it got.
                def say(msg: str) -> None:
                    err_console.print(escape(msg))

                result = ops.prune(engine, the_plan, archive, progress=say)
    finally:
        engine.dispose()
    if as_json:
        print_json(result.to_dict())
        return
    _print_prune(result, Console(soft_wrap=True))
    n = result.to_dict()["totals"]
    cutoff = f"{result.cutoff:%Y-%m-%d %H:%M} UTC"
    if nothing:
        err_console.print(f"nothing older than {cutoff} to drop")
        return
    err_console.print(
        f"{'dry run: would drop' if dry_run else 'dropped'} {n['days']} day(s), "
        f"{n['partitions']} partition(s), {'' if n['rows_exact'] else '~'}{n['rows']:,} rows "
        f"older than {cutoff}" + (" (nothing changed)" if dry_run else "")
    )


def _confirm(the_plan: PrunePlan) -> None:
    if not sys.stdin.isatty():
        raise InvalidInput(
            f"`inferq db prune` would drop {len(the_plan.partitions)} partition(s) of "
            f"{len(the_plan.days)} day(s): pass --yes to do it without a prompt "
            "(or --dry-run to list them)"
        )
    _print_prune(the_plan, err_console)
    typer.confirm("drop these for good?", abort=True, err=True)


def _rows(item: PartitionItem) -> str:
    if item.rows is None:
        return "?"
    return f"{'' if item.exact else '~'}{item.rows:,}"


def _print_prune(result: PrunePlan, out: Console) -> None:
    report = hasattr(result, "archive")
    table = Table("day")
    table.add_column("partition", no_wrap=True, min_width=28)
    table.add_column("rows")
    table.add_column("state")
    table.add_column("archive file", overflow="fold")
    for p in result.partitions:
        table.add_row(p.day.isoformat(), p.name, _rows(p), "dropped" if p.dropped else p.state,
                      p.archive or ("-" if report else ""))  # fmt: skip
    for t in result.tables:  # the small tables: rows older than the cutoff itself
        table.add_row("< cutoff", t.table, f"{t.rows:,}", "deleted" if t.deleted else "", "")
    out.print(table)


def partitions(
    create_ahead: int | None = typer.Option(
        None,
        "--create-ahead",
        min=0,
        max=366,
        help="First create the missing partitions of yesterday, today and the next N days.",
    ),
    create: bool = typer.Option(
        False, "--create", help="Same as --create-ahead $INFERQ_PARTITIONS_AHEAD (e.g. in cron)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """List the daily partitions per table: day, rows (estimate), size; optionally create the
    coming days' ones now (before workers start)."""
    from inferq.common import partitions as parts
    from inferq.common.db import make_engine
    from inferq.common.failures import translated
    from inferq.ops.prune import partition_info

    settings = get_settings()
    engine = make_engine(settings)
    created: list[str] = []
    try:
        with translated(settings):
            if create_ahead is not None or create:
                ahead = settings.partitions_ahead if create_ahead is None else create_ahead
                created = parts.ensure_ahead(engine, ahead)
            items = partition_info(engine)
    finally:
        engine.dispose()
    postgres = engine.dialect.name == "postgresql"
    if as_json:
        tables: dict[str, list[dict[str, Any]]] = {t: [] for t in parts.PARTITIONED}
        for p in items:
            tables[p.table].append({"name": p.name, "day": p.day.isoformat(), "rows": p.rows,
                                    "rows_exact": p.exact, "size_bytes": p.size_bytes,
                                    "state": p.state})  # fmt: skip
        print_json({"backend": engine.dialect.name, "partitioned": postgres,
                    "created": created, "tables": tables})  # fmt: skip
        return
    if created:
        err_console.print(f"created {len(created)} partition(s): {', '.join(created)}")
    if not postgres:
        err_console.print("SQLite has no partitions: rows per table and day")
    table = Table()
    table.add_column("partition", no_wrap=True, min_width=28)
    for name in ("day", "rows", "size", "state"):
        table.add_column(name)
    for p in sorted(items, key=lambda p: (parts.PARTITIONED.index(p.table), p.day)):
        size = "" if p.size_bytes is None else _size(p.size_bytes)
        table.add_row(p.name, p.day.isoformat(), _rows(p), size, p.state)
    Console(soft_wrap=True).print(table)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
