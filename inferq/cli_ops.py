"""`inferq flower`, `inferq metrics`, `inferq scale`: operating inferq (logic in ``ops/``)."""

from __future__ import annotations

import json
import os
import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from inferq.common import redisconn
from inferq.common.errors import ConfigError
from inferq.common.settings import Settings, get_settings

console = Console(stderr=True, soft_wrap=True)


def flower(
    port: int = typer.Option(5555, "--port", min=1, max=65535, help="HTTP port."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to bind."),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Start without authentication (local use only)."
    ),
) -> None:
    """Start Flower for the inferq workers; basic auth from INFERQ_FLOWER_BASIC_AUTH."""
    from inferq.ops.flower import flower_command

    argv, env = flower_command(
        get_settings(), port=port, address=address, insecure_no_auth=insecure_no_auth
    )
    if "FLOWER_UNAUTHENTICATED_API" in env:
        console.print("[bold yellow]warning:[/] Flower runs WITHOUT authentication")
    sys.stdout.flush()
    # exec: Flower becomes this process, so SIGTERM from compose/k8s reaches it directly.
    os.execve(argv[0], argv, env)


def metrics(
    port: int = typer.Option(9808, "--port", min=0, max=65535, help="HTTP port of /metrics."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to bind."),
    settle_seconds: float = typer.Option(
        10.0, "--settle-seconds", min=0.0, help="Read the ledger this far behind the clock."
    ),
    max_rows: int = typer.Option(
        10_000, "--max-rows", min=1, help="Ledger rows read per scrape at most (rest: next)."
    ),
) -> None:
    """Serve Prometheus metrics: queue depth and age, rows/s, batch sizes, latency, errors."""
    from inferq.ops.metrics import serve

    settings = get_settings()
    if not settings.embedded_broker:  # the embedded broker: database metrics only
        _require_redis(settings, "inferq metrics")
    server, _ = serve(settings, port=port, address=address,
                      settle_seconds=settle_seconds, max_rows=max_rows)  # fmt: skip
    console.print(f"inferq metrics on http://{address}:{server.server_port}/metrics")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


def scale(
    target_seconds: float = typer.Option(
        300.0, "--target-seconds", min=1.0, help="Drain the backlog within this many seconds."
    ),
    window: float = typer.Option(
        900.0, "--window", min=1.0, help="Measure throughput over the last N seconds."
    ),
    inspect: bool = typer.Option(
        True, "--inspect/--no-inspect", help="Ask running workers for their process count."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Worker processes needed to drain the queues within --target-seconds, with the inputs."""
    from inferq.common.celery import create_celery
    from inferq.common.db import make_engine
    from inferq.ops.metrics import BrokerProbe
    from inferq.ops.scale import build_loads, current_processes, measure_throughput, plan_processes

    settings = get_settings()
    _require_redis(settings, "inferq scale")
    probe = BrokerProbe(settings)
    try:
        depths, _ = probe.read()
    finally:
        probe.close()
    measured = measure_throughput(make_engine(settings), settings, window)
    plan = plan_processes(
        build_loads(settings, {d.queue: d.messages for d in depths}, measured), target_seconds
    )
    if inspect:
        app = create_celery(settings)
        plan.current_processes = current_processes(app)
        app.close()
    if as_json:
        sys.stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")
        return
    table = Table("queue", "messages", "rows (est.)", "rows/msg", "rows/s per process",
                  "process-s", "KEDA listLength/process")  # fmt: skip
    for q in plan.queues:
        rate = "-" if q.rows_per_process_second is None else f"{q.rows_per_process_second:,.0f}"
        secs = "?" if q.process_seconds is None else f"{q.process_seconds:,.1f}"
        per = f"{q.list_length_per_process:,}" if q.list_length_per_process else "-"
        table.add_row(q.queue, f"{q.messages:,}", f"{q.rows_estimate:,.0f}",
                      f"{q.rows_per_message:,.0f}", rate, secs, per)  # fmt: skip
    Console().print(table)
    have = "" if plan.current_processes is None else f" (running now: {plan.current_processes:,})"
    Console().print(
        f"worker processes needed to drain within {target_seconds:g}s: "
        f"[bold]{plan.processes:,}[/]{'' if plan.exact else ' (at least)'}{have}"
    )
    for note in plan.notes:
        console.print(f"note: {note}")


def _require_redis(settings: Settings, command: str) -> None:
    """Queue depths are read from Redis lists: refuse other brokers with the fix."""
    if not redisconn.is_redis(settings.broker_url):
        raise ConfigError(
            f"{command} reads queue depths from Redis: set INFERQ_BROKER_URL=redis://... "
            f"(the broker now is {settings.effective_broker_url.split('://')[0]}://)"
        )
