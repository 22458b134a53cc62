"""The ``inferq`` command line: a thin layer over the packages (all callable from Python)."""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from inferq.cli_models import JSON_OPT, models_app, print_json
from inferq.common.errors import UnknownSettingWarning
from inferq.common.failures import mask_url
from inferq.common.settings import Settings, get_settings

app = typer.Typer(
    help="inferq: asynchronous batch inference for scikit-learn models "
    "(Redis + Celery workers -> Postgres `predictions`).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(
    help="Results database: migrations (Alembic), daily partitions, retention (prune).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one line per error, for logs

_state = {"debug": False}  # set by the global --debug option, read by main()
_default_showwarning = warnings.showwarning


def _print_version(value: bool) -> None:
    if value:
        from inferq import __version__

        sys.stdout.write(f"inferq {__version__}\n")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", help="Also print the traceback of an error (or set INFERQ_DEBUG=1)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _state["debug"] = debug


# ----- db --------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    as_json: bool = JSON_OPT,
) -> None:
    """Apply migrations (same as `alembic upgrade head`)."""
    from inferq import migrations

    settings = get_settings()
    migrations.upgrade(settings, revision)
    current, head = migrations.current_revision(settings), migrations.head_revision(settings)
    if as_json:
        print_json({"current": current, "head": head, "up_to_date": current == head})
    else:  # what it did: a message on stderr (stdout is for data)
        err_console.print(f"database at revision {current}")


@db_app.command("current")
def db_current(as_json: bool = JSON_OPT) -> None:
    """Show the database's migration revision and the newest one shipped."""
    from inferq import migrations

    settings = get_settings()
    current, head = migrations.current_revision(settings), migrations.head_revision(settings)
    data = {"current": current, "head": head, "up_to_date": current == head}
    if as_json:
        print_json(data)
    else:
        console.print(f"current: {data['current']}  head: {data['head']}")


# ----- worker ----------------------------------------------------------------------------
@app.command(
    "worker",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[OPTIONS] [CELERY WORKER OPTIONS]",
)
def worker(
    ctx: typer.Context,
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-c", help="Worker processes (default: number of CPUs)."
    ),
    queues: str | None = typer.Option(
        None, "--queues", "-Q", help="Comma-separated queues (default: online,bulk)."
    ),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Node name."),
    loglevel: str = typer.Option("info", "--loglevel", "-l", help="Log level."),
    pool: str = typer.Option("prefork", "--pool", "-P", help="Celery pool (prefork, solo...)."),
) -> None:
    """Start a worker (same as `celery -A inferq.workers.app worker`) with models preloaded.

    Any other `celery worker` option is passed through to Celery as given, e.g.
    `--autoscale 4,1`, `--max-tasks-per-child 100`, `-O fair`, `--without-gossip`
    (`celery worker --help` lists them); Celery rejects the ones it does not know.
    """
    from inferq.workers.app import app as celery_app

    settings = celery_app.inferq_settings
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        f"--queues={queues or f'{settings.online_queue},{settings.bulk_queue}'}",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    import click

    try:
        celery_app.worker_main([*argv, *ctx.args])  # pass-through options last, in order
    except click.ClickException as exc:  # an option Celery does not take: its own words
        err_console.print(
            f"[bold red]error:[/] celery worker: {escape(exc.format_message())} "
            "(`celery worker --help` lists the options `inferq worker` passes through)"
        )
        raise typer.Exit(2) from None


# ----- bulk runs -------------------------------------------------------------------------
def _register_run_commands() -> None:
    from inferq import cli_runs

    app.command("score")(cli_runs.score)
    app.command("runs")(cli_runs.runs)
    from inferq import cli_results

    app.command("results")(cli_results.results)
    from inferq.cli_dead import dead_app

    app.add_typer(dead_app, name="dead-letters")
    from inferq.cli_feedback import feedback_app

    app.add_typer(feedback_app, name="feedback")
    from inferq import cli_monitor

    app.command("drift")(cli_monitor.drift)
    app.command("report")(cli_monitor.report)


_register_run_commands()


# ----- demo ------------------------------------------------------------------------------
@app.command("demo")
def demo(
    rows: int = typer.Option(3000, "--rows", min=10, max=1_000_000, help="Rows to score."),
    concurrency: int = typer.Option(2, "--concurrency", "-c", min=1, help="Worker processes."),
    timeout: float = typer.Option(180.0, "--timeout", help="Seconds to wait for results."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the whole pipeline once: train, register, start a worker, submit, wait, show results."""
    from inferq.demo import run_demo

    summary = run_demo(
        get_settings(), rows=rows, concurrency=concurrency, timeout=timeout, quiet=as_json
    )
    if as_json:
        print_json(summary)


@app.command("config")
def config(as_json: bool = JSON_OPT) -> None:
    """Show every setting: its effective value and where it came from (passwords masked)."""
    settings = get_settings()
    from_env = [f"INFERQ_{name.upper()}" for name in sorted(settings.model_fields_set)]
    values = {
        f"INFERQ_{name.upper()}": _shown(settings, name) for name in type(settings).model_fields
    }
    data = {
        "broker": mask_url(settings.effective_broker_url),
        "database": mask_url(settings.effective_database_url),
        "model_store": str(settings.model_store_dir),
        "home": str(settings.home_dir),
        "batch_size": settings.batch_size,
        "queues": [settings.online_queue, settings.bulk_queue],
        "embedded": settings.embedded_broker or not settings.database_url,
        "settings": values,
        "from_environment": from_env,
    }
    if as_json:
        print_json(data)
        return
    width = max(map(len, values))
    for var, value in values.items():
        # JSON spelling (true, 1.5, null -> unset) is also how the variables are written.
        shown = "unset" if value is None else value if isinstance(value, str) else json.dumps(value)
        source = "" if var in from_env else "  (default)"
        # Plain write, not rich: values may hold '[' (IPv6 hosts) that rich would eat.
        sys.stdout.write(f"{var:<{width}}  {shown}{source}\n")


def _shown(settings: Settings, name: str) -> Any:
    """The effective value of one setting as `inferq config` shows it (secrets masked)."""
    effective = {
        "home": settings.home_dir,
        "model_store": settings.model_store_dir,
        "broker_url": settings.effective_broker_url,
        "database_url": settings.database_url or settings.effective_database_url,
        "inflight_stale_after": settings.stale_after,
    }
    value = effective.get(name, getattr(settings, name))
    if hasattr(value, "get_secret_value"):  # SecretStr: never shown, not even masked
        return "***" if value.get_secret_value() else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def main() -> None:
    """Console-script entry point: every failure becomes one line on stderr (README)."""
    warnings.showwarning = _show_warning
    try:
        app()
    except Exception as exc:  # SystemExit (typer.Exit, usage errors) passes through
        if _stdout_closed(exc):
            # The reader of our stdout went away (`inferq results RUN | head`): stop quietly,
            # as other Unix tools do, instead of reporting a failure.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(141) from None
        raise SystemExit(_report(exc)) from None


def _stdout_closed(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) is EPIPE *and* our stdout is a pipe whose
    reader is gone (a broker or database socket's EPIPE is a real failure)."""
    seen, epipe = 0, False
    while exc is not None and seen < 10 and not epipe:
        epipe = isinstance(exc, OSError) and exc.errno == errno.EPIPE
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    if not epipe:
        return False
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _report(exc: Exception) -> int:
    """Print one line for ``exc`` (and the traceback with --debug); return the exit code.

    2: inferq's own errors and translated database/broker/settings failures (the message
    says what to do); 1: anything unexpected (a bug: the traceback is for the report).
    """
    from inferq.common.failures import one_line, translate

    debug = _state["debug"] or os.environ.get("INFERQ_DEBUG", "").strip().lower() in {
        "1", "true", "yes", "on", "y", "t",
    }  # fmt: skip
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    error = translate(exc)
    if error is not None:
        message = " ".join(str(error).split())  # one line, whatever the message held
        err_console.print(f"[bold red]error:[/] {escape(message)}")
        return 2
    hint = "" if debug else " (run `inferq --debug ...` for the traceback)"
    err_console.print(
        f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(one_line(exc))}{hint}"
    )
    return 1


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Unknown-variable warnings as one ``warning:`` line; others the usual way."""
    if issubclass(category, UnknownSettingWarning):
        err_console.print(f"[bold yellow]warning:[/] {escape(str(message))}")
    else:
        _default_showwarning(message, category, *args, **kwargs)


# ----- operations ------------------------------------------------------------------------
def _register_ops_commands() -> None:
    from inferq import cli_ops

    app.command("flower")(cli_ops.flower)
    app.command("metrics")(cli_ops.metrics)
    app.command("scale")(cli_ops.scale)
    from inferq import cli_workers

    app.command("workers")(cli_workers.workers)
    from inferq import cli_db

    db_app.command("prune")(cli_db.prune)
    db_app.command("partitions")(cli_db.partitions)


_register_ops_commands()
