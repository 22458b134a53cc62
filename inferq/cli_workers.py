"""`inferq workers`: the worker nodes, the models they hold, their queues and heartbeats."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from inferq.common import redisconn
from inferq.common.settings import get_settings

err_console = Console(stderr=True, soft_wrap=True)
_STYLE = {"live": "green", "silent": "yellow", "reaped": "red"}


def workers(
    timeout: float = typer.Option(
        2.0,
        "--timeout",
        min=0.1,
        help="Without a Redis broker: seconds to wait for the workers' answers.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list of workers)."),
) -> None:
    """List worker nodes: the models they hold, queues, pool size and last heartbeat.

    Also name@version and runtime of each model, pid/host and start time.

    With a Redis broker every worker publishes this every few seconds; a worker whose last
    beat is older than its liveness timeout (INFERQ_LIVENESS_TIMEOUT, 15 s; 15 s too when
    liveness is off) is listed as "silent", one the other workers already took for dead (its
    messages went back to the queue) as "reaped"; a crashed worker disappears after 5
    minutes, a stopped one at once. With the embedded filesystem broker only the workers
    that answer within --timeout are listed (no heartbeats there).
    """
    from inferq.common.failures import translated
    from inferq.ops import workers as ops

    settings = get_settings()
    with translated(settings):
        if redisconn.is_redis(settings.broker_url):
            client = redisconn.broker_client(settings)
            try:
                nodes = ops.read_redis(client)
            finally:
                client.close()
        else:
            from inferq.common.celery import create_celery

            app = create_celery(settings)
            try:
                nodes = ops.read_inspect(app, timeout)
            finally:
                app.close()
    if as_json:
        sys.stdout.write(json.dumps([n.to_json() for n in nodes], indent=2) + "\n")
        return
    if not nodes:
        err_console.print(
            "no workers: none is running or publishing (start one with `inferq worker`)"
        )
        return
    table = Table("node", "state", "heartbeat", "models", "queues", "pool", "pid@host", "started")
    for n in nodes:
        models = "\n".join(
            f"{m['model']} ({m['runtime']}{', shadow' if m['role'] == 'shadow' else ''})"
            for m in n.models
        )
        models += "".join(f"\n{u} (unservable)" for u in n.unservable)
        pool = f"{n.pool or '?'} {n.concurrency if n.concurrency is not None else '?'}"
        if n.autoscale:
            pool += f" (autoscale {n.autoscale[0]},{n.autoscale[1]})"
        beat = "-" if n.last_heartbeat_seconds is None else f"{n.last_heartbeat_seconds:,.1f}s ago"
        style = _STYLE.get(n.state, "")
        table.add_row(
            escape(n.node), f"[{style}]{n.state}[/]", beat, escape(models or "-"),
            escape(", ".join(n.queues)), pool, escape(f"{n.pid}@{n.host}"),
            (n.started_at or "?").replace("T", " ").replace("+00:00", " UTC"),
        )  # fmt: skip
    Console(soft_wrap=True).print(table)
    live = sum(n.state == "live" for n in nodes)
    err_console.print(f"{live:,} live worker(s) of {len(nodes):,} listed")
