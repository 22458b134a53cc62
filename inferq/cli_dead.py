"""`inferq dead-letters`: list batches taken out of circulation, and replay them."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from inferq.common.settings import get_settings

console = Console(stderr=True, soft_wrap=True)
dead_app = typer.Typer(
    help="Batches workers could not finish (payload kept): list them, send them again.",
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
        table.add_row(d.batch_id, model, str(d.rows), str(d.deliveries),
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
