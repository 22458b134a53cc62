"""`inferq dead-letters`: list batches taken out of circulation, replay, export, purge them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from inferq.common.errors import InvalidInput
from inferq.common.settings import get_settings

if TYPE_CHECKING:
    from inferq.producer.deadletter_export import PurgePlan

console = Console(stderr=True, soft_wrap=True)
dead_app = typer.Typer(
    help="Batches workers could not finish (payload kept): list them, send them again, "
    "export their rows to a file, purge them.",
    no_args_is_help=True,
)
JSON_OPT = typer.Option(False, "--json", help="Print JSON.")


@dead_app.command("list")
def list_cmd(
    limit: int = typer.Option(100, "--limit", min=1, help="How many, most recent first."),
    as_json: bool = JSON_OPT,
) -> None:
    """List dead-lettered batches with the reason and how many rows they hold."""
    from inferq.producer import InferenceClient
    from inferq.producer.deadletters import list_dead_letters

    with InferenceClient(get_settings()) as client:
        letters = list_dead_letters(client.engine, limit)
    if as_json:
        sys.stdout.write(json.dumps([d.to_json() for d in letters], indent=2) + "\n")
        return
    if not letters:
        console.print("no dead letters")
        return
    table = Table("batch", "model", "rows", "deliveries", "when", "reason")
    for d in letters:
        model = f"{d.model}@{d.version}" if d.model else "-"
        table.add_row(d.batch_id, model, f"{d.rows:,}", f"{d.deliveries:,}",
                      d.created_at.strftime("%Y-%m-%d %H:%M:%S"), d.reason)  # fmt: skip
    Console(soft_wrap=True).print(table)


@dead_app.command("replay")
def replay_cmd(
    batch_ids: list[str] = typer.Argument(None, help="Batch ids to send again."),
    replay_all: bool = typer.Option(False, "--all", help="Send every dead letter again."),
    as_json: bool = JSON_OPT,
) -> None:
    """Publish dead-lettered batches again once their cause is fixed (same job ids)."""
    from inferq.producer import InferenceClient
    from inferq.producer.deadletters import replay

    if bool(batch_ids) == replay_all:
        console.print("[bold red]error:[/] give batch ids or --all (not both)")
        raise typer.Exit(2)
    with InferenceClient(get_settings()) as client:
        results = replay(client, None if replay_all else list(batch_ids))
    if as_json:
        sys.stdout.write(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    else:
        for r in results:
            console.print(f"{r.batch_id}: {r.outcome}{f' ({r.detail})' if r.detail else ''}")
    if any(r.outcome in {"not found", "unreadable"} for r in results):
        raise typer.Exit(1)


@dead_app.command("export")
def export_cmd(
    file: Path = typer.Argument(
        ..., dir_okay=False, help="Where to write: a .csv or .parquet file (replaced)."
    ),
    batch_ids: list[str] = typer.Argument(None, help="Only these batch ids (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Write the dead letters' rows to a file to look at or fix: batch id, reason, job id,
    key, row number, the row's own error if any, and its features as sent (named after the
    model's schema). Payloads are decoded with the message contract's checks (untrusted);
    one that does not decode is one row with `payload_error`. In CSV, text that a
    spreadsheet would run as a formula (starting with = + - @) gets a leading '.
    """
    from inferq.common.db import make_engine
    from inferq.common.failures import translated
    from inferq.producer.deadletter_export import export, file_format

    file_format(file)  # a wrong suffix is refused before connecting
    settings = get_settings()
    engine = make_engine(settings)
    try:
        with translated(settings):
            report = export(engine, file, list(batch_ids) if batch_ids else None)
    finally:
        engine.dispose()
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        console.print(
            f"wrote {report.rows:,} row(s) of {report.batches:,} dead letter(s) to "
            f"{escape(str(file))}"
            + (f" ({len(report.unreadable):,} unreadable: see payload_error)"
               if report.unreadable else "")
        )  # fmt: skip
    if report.not_found:
        console.print(f"[bold red]not found:[/] {escape(', '.join(report.not_found))}")
        raise typer.Exit(1)


@dead_app.command("purge")
def purge_cmd(
    batch_ids: list[str] = typer.Argument(None, help="Batch ids to remove."),
    purge_all: bool = typer.Option(False, "--all", help="Remove every dead letter."),
    older_than: str | None = typer.Option(
        None, "--older-than", help="Remove the dead letters older than this, e.g. 7d."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask (needed when stdin is not a terminal, e.g. cron)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Remove dead letters for good (by batch id, --all, or --older-than); their payloads
    are gone with them, so `export` first what you may need. Asks unless --yes."""
    from inferq.common.db import make_engine
    from inferq.common.failures import translated
    from inferq.common.timewindow import parse_duration
    from inferq.producer import deadletter_export as dl

    if sum((bool(batch_ids), purge_all, older_than is not None)) != 1:
        raise InvalidInput("give batch ids, --all or --older-than (exactly one of them)")
    age = parse_duration(older_than) if older_than is not None else None
    settings = get_settings()
    engine = make_engine(settings)
    try:
        with translated(settings):
            plan = dl.plan_purge(engine, list(batch_ids) if batch_ids else None, age)
            if plan.batch_ids and not yes:
                _confirm_purge(plan)
            if plan.batch_ids:
                plan = dl.purge(engine, plan)
    finally:
        engine.dispose()
    if as_json:
        sys.stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")
    else:
        console.print(
            f"removed {len(plan.batch_ids):,} dead letter(s) holding {plan.rows:,} row(s)"
            if plan.removed
            else "no dead letters to remove"
        )
    if plan.not_found:
        console.print(f"[bold red]not found:[/] {escape(', '.join(plan.not_found))}")
        raise typer.Exit(1)


def _confirm_purge(plan: PurgePlan) -> None:
    what = f"{len(plan.batch_ids):,} dead letter(s) holding {plan.rows:,} row(s)"
    if not sys.stdin.isatty():
        raise InvalidInput(f"`inferq dead-letters purge` would remove {what}: pass --yes to do "
                           "it without a prompt")  # fmt: skip
    if plan.unanswered:
        console.print(
            f"[bold yellow]note:[/] the jobs of {len(plan.unanswered):,} of them have no "
            "result row: purging loses those rows for good (`inferq dead-letters export` "
            "or `replay` them first)"
        )
    typer.confirm(f"remove {what} for good?", abort=True, err=True)
