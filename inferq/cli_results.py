"""`inferq results`: a run's rows, or a model's rows over a time window, as a file.

Data goes to stdout (CSV when no file is given) or to the file; messages go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import typer
from rich.console import Console

from inferq.common.errors import InvalidInput
from inferq.common.settings import get_settings

console = Console(stderr=True, soft_wrap=True)


def results(
    run_id: str | None = typer.Argument(None, help="A bulk run's id (see `inferq runs`)."),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="File to write: .parquet, .csv or .csv.gz (default: CSV on stdout).",
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Instead of a run: this model's rows (online jobs too)."
    ),
    since: str | None = typer.Option(
        None, "--since", help="With --model: rows scored in the last 30m, 24h, 7d..."
    ),
    until: str | None = typer.Option(
        None,
        "--until",
        help="With --model: leave out the most recent rows (e.g. 1h = up to an hour ago).",
    ),
    status: str | None = typer.Option(
        None, "--status", help="Only 'ok' rows or only 'error' rows (default: both)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON summary (rows, file, columns) on stdout; needs -o."
    ),
) -> None:
    """Write results to a file: a run's rows in input order, or a model's rows by time.

    Columns: row_no, the run's id column (`key` online), job_id, status, label, score,
    proba_<class> per class, error, error_code, model_name, model_version, runtime, run_id,
    batch_id, worker, submitted_at, scored_at (README "Results as files").
    """
    from inferq.common.db import make_engine
    from inferq.common.timewindow import since as since_time
    from inferq.producer.export import Selection

    if run_id and (model or since or until):
        raise InvalidInput("give a run id, or --model with --since/--until, not both")
    if not run_id and not model:
        raise InvalidInput("give a run id (`inferq runs` lists them), or --model NAME --since 24h")
    if as_json and output in (None, "-"):
        raise InvalidInput("--json describes a written file: give --output FILE")
    sel = Selection(
        run_id=run_id, model=model, since=since_time(since) if since else None,
        until=since_time(until) if until else None, status=status,
    )  # fmt: skip
    engine = make_engine(get_settings())
    try:
        report = write(engine, sel, output, quiet=as_json)
    finally:
        engine.dispose()
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")


def write(engine: Any, sel: Any, output: str | None, quiet: bool = False) -> Any:
    """Export ``sel`` to ``output`` with a live row count and a closing line on stderr."""
    from inferq.producer.export import export_results, output_format

    output_format(output)  # a bad file name fails before the query runs
    to_file = output not in (None, "-")
    show = to_file and not quiet and console.is_terminal
    status = console.status(f"writing {sel.describe()}...", spinner="dots")
    with status if show else contextlib.nullcontext():

        def on_rows(n: int) -> None:
            if show:
                status.update(f"writing {sel.describe()}: {n:,} rows")

        report = export_results(engine, sel, output, on_rows=on_rows)
    if not quiet:
        where = report.path if to_file else "stdout"
        size = f" ({report.bytes / 1e6:,.1f} MB)" if report.bytes is not None else ""
        console.print(
            f"wrote {report.rows:,} rows of {sel.describe()} to {where}{size} "
            f"in {report.seconds:,.1f}s"
        )
        if report.run_status not in (None, "done", "failed"):
            console.print(
                f"[yellow]note:[/] the run is still {report.run_status}: these are the rows "
                "scored so far"
            )
        if report.rows == 0:
            console.print("[yellow]note:[/] no rows matched")
    return report
