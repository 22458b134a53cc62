"""`inferq feedback`: load ground truth (true labels or values) for scored jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from inferq.common.settings import get_settings

console = Console(stderr=True, soft_wrap=True)
feedback_app = typer.Typer(
    help="Ground truth: load true labels/values; compare in the model_accuracy_daily view.",
    no_args_is_help=True,
)
JSON_OPT = typer.Option(False, "--json", help="Print the report as JSON.")


@feedback_app.command("load")
def load_cmd(
    file: Path = typer.Argument(..., help="A CSV (.csv, .csv.gz) or Parquet file."),
    key_column: str = typer.Option(
        ..., "--key-column", help="Column of job ids (--by job) or of your row keys (--by key)."
    ),
    label_column: str = typer.Option(
        ..., "--label-column", help="Column of true labels (classifiers) or values (regressors)."
    ),
    by: str = typer.Option(
        "job", "--by", help="What the key column holds: job (job ids) or key (your row ids)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="The model the labels are for (required with --by key)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Load a file of labels: new ones are added, changed ones replaced, the same ones kept.

    Prints one summary line: rows read, new / changed / unchanged labels, rows skipped (no
    id or no label) and how many match a prediction (none matching usually means a wrong
    --by or --model: the line after it says which would match).
    """
    from inferq.common.db import make_engine
    from inferq.common.failures import translated
    from inferq.producer.feedback import load_file

    settings = get_settings()
    engine = make_engine(settings)
    try:
        with translated(settings):
            report = load_file(engine, file, key_column, label_column, by=by, model=model)
    finally:
        engine.dispose()
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:  # what it did: a message (stdout is for --json); plain, paths may hold markup
        sys.stderr.write(report.summary() + "\n")
    if report.hint:
        console.print(f"[bold yellow]note:[/] {escape(report.hint)}")
