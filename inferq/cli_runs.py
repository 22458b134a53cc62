"""`inferq score` and `inferq runs`: bulk scoring runs from the command line.

Exit codes of `inferq score`: 0 every row answered (error rows included); 1 the run could not
finish (broker/database failure, --timeout); 2 bad input or usage (nothing enqueued, or the
run record says why it stopped); 3 the run finished but failed (--max-error-rate exceeded, or
duplicate ids).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from inferq.common.errors import InvalidInput, TransientError
from inferq.common.settings import get_settings
from inferq.common.timewindow import since as window_start

console = Console(stderr=True, soft_wrap=True)


class RowsPerSecond(TransferSpeedColumn):
    """rich's speed column, in rows/s instead of bytes/s."""

    def render(self, task: Any) -> Any:
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("-" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RowsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def score(
    model: str = typer.Option(..., "--model", "-m", help="NAME, NAME@VERSION or NAME:ALIAS."),
    input_path: str | None = typer.Option(None, "--input", "-i", help=".csv or .parquet file."),
    sql: str | None = typer.Option(None, "--sql", help="SELECT query to score instead of a file."),
    source_url: str | None = typer.Option(
        None, "--source-url", help="Database of --sql (default: the results database)."
    ),
    id_column: str = typer.Option(..., "--id-column", help="Column of row ids (unique)."),
    run_id: str | None = typer.Option(
        None, "--run-id", help="Name the run; the same id again resumes it."
    ),
    chunk_size: int | None = typer.Option(
        None, "--chunk-size", min=1, max=100_000, help="Rows per message (default 10000)."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until every row is scored."),
    timeout: float | None = typer.Option(None, "--timeout", help="Give up waiting after N s."),
    max_error_rate: float | None = typer.Option(
        None, "--max-error-rate", min=0.0, max=1.0, help="Fail the run above this error share."
    ),
    rescore_errors: bool = typer.Option(
        False,
        "--rescore-errors",
        help="With --run-id of a finished run: score again the chunks holding error rows that "
        "were not the data's fault (model unavailable, dead-lettered, time limit); the new "
        "result replaces the error row, still one row per job.",
    ),
    stall_timeout: float | None = typer.Option(
        None,
        "--stall-timeout",
        min=1,
        help="Give up (exit 1, resumable with the same --run-id) after this many seconds "
        "without one row scored, e.g. no worker consumes the queue (default: "
        "INFERQ_BULK_STALL_SECONDS, 600). A warning comes after half of it, at most 60 s.",
    ),
    skip_id_check: bool = typer.Option(
        False,
        "--skip-id-check",
        help="Do not read the id column first to refuse repeated ids (for inputs whose ids "
        "are known unique, e.g. a primary key); a repeated id then fails the run at its end.",
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="When the run finishes, also write its rows to this file (.parquet, .csv, "
        ".csv.gz), in input order; same as `inferq results RUN_ID -o FILE`.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary, no progress bar."),
) -> None:
    """Score a CSV/Parquet file or a SQL query in bulk; results land in `predictions`."""
    from inferq.producer import InferenceClient
    from inferq.producer.sources import open_source

    if rescore_errors and not run_id:
        raise typer.BadParameter("--rescore-errors needs the --run-id of a finished run")
    if output is not None:
        if not wait:
            raise typer.BadParameter("--output needs the run to finish: drop --no-wait")
        from inferq.producer.export import output_format

        output_format(output)  # a bad file name fails before anything is sent
    settings = get_settings()
    if stall_timeout is not None:  # also bounds a run held back by backpressure
        settings = settings.model_copy(update={"bulk_stall_seconds": stall_timeout})
    client = InferenceClient(settings)
    try:
        source = open_source(input_path, sql, source_url, settings.effective_database_url)
        try:
            opts = ScoreOptions(
                model, id_column, run_id, chunk_size, max_error_rate, wait, timeout, as_json,
                rescore_errors, settings.bulk_stall_seconds, not skip_id_check,
            )  # fmt: skip
            code, result, errors = _run(client, source, opts)
        finally:
            close = getattr(source, "close", None)
            if close:
                close()
        written = None
        if output is not None and result.status in ("done", "failed"):
            from inferq import cli_results
            from inferq.producer.export import Selection

            written = cli_results.write(
                client.engine, Selection(run_id=result.run_id), output, quiet=as_json
            )
    finally:
        client.close()
    if as_json:
        data = result.to_json()
        if written is not None:
            data["output"] = written.to_json()
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        _print_summary(result, errors)
        if output is not None and written is None:
            console.print(
                f"no file written: the run did not finish; `inferq results {result.run_id} "
                f"-o {output}` writes it later"
            )
    raise typer.Exit(code)


@dataclass(frozen=True, slots=True)
class ScoreOptions:
    """What `inferq score` was asked to do (its options, minus the source and output)."""

    model: str
    id_column: str
    run_id: str | None
    chunk_size: int | None
    max_error_rate: float | None
    wait: bool
    timeout: float | None
    as_json: bool
    rescore_errors: bool
    stall: float
    check_ids: bool


def _run(client: Any, source: Any, o: ScoreOptions) -> tuple[int, Any, list[tuple[str, int]]]:
    """Prepare, enqueue and (optionally) wait; returns (exit code, progress, error breakdown)."""
    from inferq.producer.bulk import BulkScorer, RunFailed

    scorer = BulkScorer(client)
    as_json, timeout = o.as_json, o.timeout
    run = scorer.prepare(
        source, o.model, o.id_column, run_id=o.run_id, chunk_size=o.chunk_size,
        max_error_rate=o.max_error_rate, check_ids=o.check_ids,
    )  # fmt: skip
    if not as_json:
        verb = "resuming" if run.resumed else "starting"
        console.print(
            f"{verb} run [bold]{run.run_id}[/] with {run.mv.ref} on {source.description}"
            + (f" ({len(run.committed)} chunks already committed)" if run.committed else "")
        )
    if not run.complete:
        _warn_if_no_worker(client.settings, o.stall)
    bar = None if as_json else _progress_bar()
    tasks: dict[str, Any] = {}

    def show(p: Any) -> None:
        if bar is None:
            return
        if not tasks:
            tasks["enqueued"] = bar.add_task("enqueued", total=p.total_rows)
            tasks["scored"] = bar.add_task("scored", total=p.total_rows)
        for name, done in (("enqueued", p.enqueued), ("scored", p.scored)):
            bar.update(tasks[name], completed=done, total=p.total_rows)

    def stalled(idle: float) -> None:
        console.print(
            f"[bold yellow]warning:[/] no row scored for {idle:,.0f}s: is a worker consuming "
            f"queue '{client.settings.bulk_queue}'? (`inferq workers`); giving up after "
            f"{o.stall:,.0f}s without progress (--stall-timeout), resumable"
        )

    code = 0
    try:
        if run.complete:
            if not as_json:
                console.print(f"run {run.run_id} is already complete: nothing to send")
            result = scorer.progress(run.run_id)
        else:
            if bar is not None:
                bar.start()
            scorer.enqueue(run, show)
            finished = (
                scorer.wait(run.run_id, show, timeout, stall=o.stall, on_stall=stalled)
                if o.wait or o.rescore_errors
                else None
            )
            result = finished or scorer.progress(run.run_id)
        if o.rescore_errors:
            result = _rescore(scorer, run, result, timeout, as_json)
        if result.status == "failed":
            code = 3
    except (RunFailed, TransientError) as exc:
        if bar is not None:
            bar.stop()
        console.print(f"[bold red]run {run.run_id} did not finish:[/] {exc}")
        result, code = scorer.progress(run.run_id), 1
    finally:
        if bar is not None:
            bar.stop()
    errors = scorer.error_breakdown(run.run_id) if result.scored_error and not as_json else []
    return code, result, errors


def _warn_if_no_worker(settings: Any, stall: float) -> None:
    """Say at once when no live worker consumes the bulk queue (Redis brokers: what workers
    publish, as `inferq workers` lists it). A check that cannot run says nothing: the stall
    warning covers every broker."""
    from inferq.common.redisconn import broker_client, is_redis

    if not is_redis(settings.effective_broker_url):
        return
    try:
        from inferq.ops.workers import LIVE, read_redis

        client = broker_client(settings, socket_timeout=3, socket_connect_timeout=3)
        try:
            nodes = read_redis(client)
        finally:
            client.close()
    except Exception:
        return
    if not any(n.state == LIVE and settings.bulk_queue in n.queues for n in nodes):
        console.print(
            f"[bold yellow]warning:[/] no live worker consumes queue '{settings.bulk_queue}' "
            "(`inferq workers`): the rows wait in the queue until one starts; giving up after "
            f"{stall:,.0f}s without a row scored (--stall-timeout), resumable"
        )


def _rescore(scorer: Any, run: Any, result: Any, timeout: float | None, as_json: bool) -> Any:
    """--rescore-errors: send again the chunks whose error rows were not the data's fault."""
    from inferq.producer import rescore

    chunks = rescore.rescorable_chunks(scorer, run.run_id)
    if not chunks:
        if not as_json:
            console.print("no error rows to rescore (only rows whose data was the problem)")
        return result
    if not as_json:
        console.print(
            f"rescoring {sum(chunks.values()):,} error rows in {len(chunks)} chunk(s) "
            f"of run [bold]{run.run_id}[/]"
        )
    sent = rescore.send_rescore(scorer, run, set(chunks))
    return rescore.wait_rescored(scorer, run.run_id, sent, timeout=timeout)


def _print_summary(p: Any, errors: list[tuple[str, int]], out: Console | None = None) -> None:
    """One run's summary: on stderr after `inferq score`, on stdout (``out``) for `runs ID`."""
    shown = out or console
    data = p.to_json()
    style = {"done": "green", "failed": "red"}.get(p.status, "yellow")
    shown.print(
        f"run [bold]{p.run_id}[/]: [{style}]{p.status}[/] — {p.scored:,} of "
        f"{'?' if p.total_rows is None else f'{p.total_rows:,}'} rows scored "
        f"({p.scored_ok:,} ok, {p.scored_error:,} errors) in {data['seconds']:.1f}s, "
        f"{data['rows_per_second']:,.0f} rows/s"
    )
    if p.error:
        shown.print(f"[red]{p.error}[/]")
    for message, count in errors:
        shown.print(f"  {count:>8,} rows: {message}")


def runs(
    run_id: str | None = typer.Argument(None, help="Show one run in detail."),
    limit: int = typer.Option(20, "--limit", min=1, help="How many recent runs to list."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Only runs of this model: NAME or NAME@VERSION."
    ),
    status: str | None = typer.Option(
        None, "--status", help="Only runs in this status: enqueuing, running, done or failed."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Only runs started within this window: 30m, 24h, 7d..."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List recent bulk runs (--model, --status, --since filter them), or show one.

    One run: counts, rate, duration, and its error rows grouped by message.
    """
    from inferq.producer import InferenceClient
    from inferq.producer.bulk import BulkScorer
    from inferq.producer.runs import check_status, parse_model_filter

    if run_id and (model or status or since):
        raise InvalidInput("--model, --status and --since filter the list of runs: "
                           f"drop them to show run {run_id!r}")  # fmt: skip
    # Checked before connecting: a typo is a usage error, not a database one.
    start = window_start(since) if since else None
    if status is not None:
        check_status(status)
    if model is not None:
        parse_model_filter(model)
    with InferenceClient(get_settings()) as client:
        scorer = BulkScorer(client)
        if run_id:
            p = scorer.progress(run_id)
            errors = scorer.error_breakdown(run_id)
            if as_json:
                data = p.to_json()
                data["errors_by_message"] = [{"message": m, "rows": n} for m, n in errors]
                sys.stdout.write(json.dumps(data, indent=2) + "\n")
            else:
                _print_summary(p, errors, out=Console(soft_wrap=True))
            return
        listed = scorer.list_runs(limit, model=model, status=status, since=start)
    if as_json:
        sys.stdout.write(json.dumps([p.to_json() for p in listed], indent=2) + "\n")
        return
    if not listed:
        filtered = model or status or since
        console.print("no runs match" if filtered else "no runs yet (see `inferq score --help`)")
        return
    table = Table("run", "model", "status", "rows", "ok", "errors", "rows/s", "started")
    for p in listed:
        d = p.to_json()
        table.add_row(
            p.run_id, p.model, p.status, f"{p.total_rows or 0:,}", f"{p.scored_ok:,}",
            f"{p.scored_error:,}", f"{d['rows_per_second']:,.0f}",
            p.started_at.strftime("%Y-%m-%d %H:%M"),
        )  # fmt: skip
    Console().print(table)
