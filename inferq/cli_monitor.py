"""`inferq drift` (and the monitoring commands beside it): is the model still fine?"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from inferq.cli_models import JSON_OPT, _engine, console, err_console, print_json

_STYLE = {"drift": "bold red", "warn": "yellow", "ok": "green", "too few rows": "dim"}


def drift(
    name: str = typer.Argument(..., help="Model name."),
    version: int | None = typer.Option(None, "--version", "-v", help="Only this version."),
    since: str = typer.Option("24h", "--since", help="Window: 30m, 24h, 7d..."),
    by: str | None = typer.Option(None, "--by", help="Also split by day, version or worker."),
    as_json: bool = JSON_OPT,
) -> None:
    """PSI and Jensen-Shannon per feature and for the output, against the baseline.

    A feature is flagged only when its PSI is above 0.1 (warn) or 0.25 (drift) AND above what
    sampling noise alone gives for the window's row count (the 99th percentile of PSI under
    no drift), so small windows do not raise false alarms. Reads the exact counts workers
    add per batch, never the predictions: fast for any window. Exit code 1 when a feature
    is flagged (for cron and CI).
    """
    from inferq.common.timewindow import since as window_start
    from inferq.ops.drift import drift_report

    start = window_start(since)
    groups = drift_report(_engine(), name, start, version, by)
    if as_json:
        print_json({"model": name, "since": start.isoformat(), "by": by,
                    "groups": [g.to_json() for g in groups]})  # fmt: skip
    elif not groups:
        err_console.print(f"no scored rows of {escape(name)} since {since} with drift counts")
    for g in groups if not as_json else []:
        if g.missing_baseline:
            err_console.print(f"[bold yellow]note:[/] {escape(g.missing_baseline)}")
            continue
        where = "" if g.group == "all" else f", {by} {g.group}"
        table = Table("feature", "rows", "PSI", "noise (99%)", "JS", "verdict",
                      title=f"{name}@{g.version}{where}, last {since}")  # fmt: skip
        for f in g.features:
            style = _STYLE.get(f.verdict, "")
            table.add_row(
                escape(f.feature), f"{f.rows:,}", f"{f.psi:.4f}", f"{f.noise:.4f}",
                f"{f.js:.4f}", f"[{style}]{f.verdict}[/]" if style else f.verdict,
            )  # fmt: skip
        console.print(table)
    if any(g.flagged for g in groups):
        raise typer.Exit(1)


def report(
    name: str = typer.Argument(..., help="Model name."),
    days: int = typer.Option(7, "--days", "-d", min=1, max=366, help="UTC days, today included."),
    version: int | None = typer.Option(None, "--version", "-v", help="Only this version."),
    html: Path | None = typer.Option(
        None, "--html", help="Also write one self-contained HTML page with plots to this file."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Is this model still fine? Its last --days days on one screen.

    Throughput, errors, latency, drift, estimated and realised accuracy per day.

    Estimated accuracy (no labels needed) stands beside realised accuracy with its label
    coverage, so you learn how far to trust the estimate. Realised accuracy needs the
    Postgres views (`inferq db upgrade`) and labels (`inferq feedback load`). --html writes
    one page (plots embedded, no external links: it opens offline).
    """
    from inferq.ops.report import build_report
    from inferq.ops.report_html import render_terminal, write_html

    engine = _engine()
    try:
        rep = build_report(engine, name, days, version)
    finally:
        engine.dispose()
    if html is not None:
        write_html(rep, html)
    if as_json:
        print_json({**rep.to_json(), "html": str(html) if html is not None else None})
        return
    render_terminal(rep, console)
    if html is not None:
        err_console.print(f"wrote {escape(str(html))}")
