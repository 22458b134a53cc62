"""The inferq Celery app for workers: ``celery -A inferq.workers.app worker`` or ``inferq worker``.

Importing this module reads no settings and opens no connection; configuration is read
when Celery first needs it, and models are loaded in ``worker_init`` (the parent, before
the prefork pool forks its children).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready
from inferq.common import compat, inflight, redisconn
from inferq.common.celery import create_celery
from inferq.common.errors import SchemaNotReady
from inferq.common.failures import mask_url, one_line, translate
from inferq.workers import runtime
from inferq.workers.liveness import LivenessStep
from inferq.workers.maintenance import PartitionKeeper
from inferq.workers.nodeinfo import NodeInfoStep
from inferq.workers.parking import ParkClaimer, node_queue
from inferq.workers.preload import WorkerRuntime, limit_threads
from inferq.workers.reconcile import InflightReconciler
from inferq.workers.reload import ModelWatcher, settle_before_fork
from inferq.workers.watchdog import ConsumerWatchdog

log = logging.getLogger("inferq.worker")

app = create_celery()
import inferq.workers.tasks  # noqa: E402,F401  (registers the task on this app)

app.steps["worker"].add(InflightReconciler)
app.steps["worker"].add(ParkClaimer)
app.steps["worker"].add(ModelWatcher)
app.steps["worker"].add(PartitionKeeper)
app.steps["worker"].add(LivenessStep)
app.steps["worker"].add(NodeInfoStep)  # after liveness: same incarnation name
compat.check()  # a moved Celery/kombu internal stops the worker here, by name
compat.install_redis_hooks(inflight.BATCH_HEADER, inflight.UNACKED_BATCHES)
compat.install_pool_shutdown_fix()  # SIGTERM always ends the worker
app.steps["consumer"].add(ConsumerWatchdog)


@worker_init.connect
def _preload_models(sender: Any = None, **_: Any) -> None:
    """Parent process, before fork: pin threads and load models (shared copy-on-write)."""
    limit_threads()
    rt = runtime.install(WorkerRuntime(app.inferq_settings))
    rt.health.node = getattr(sender, "hostname", None) or "local"
    if sender is not None and redisconn.is_redis(rt.settings.broker_url):
        # Claimed parked messages come through a queue only this worker consumes.
        sender.app.amqp.queues.select_add(node_queue(sender.hostname))
    try:
        behind = schema_behind(rt.settings)
        if behind:  # it would write rows the tables cannot take: every batch dead-lettered
            raise SchemaNotReady(mask_url(rt.settings.effective_database_url), behind)
        rt.preload()
    except Exception as exc:
        problem = translate(exc, rt.settings)
        if isinstance(problem, SchemaNotReady):  # it could not write a single result
            sys.stderr.write(f"inferq worker: refusing to start: {problem}\n")
            raise SystemExit(2) from None
        # Registry unreachable: models load on demand per child; say so loudly.
        rt.preload_error = one_line(problem or exc)
    for problem in rt.unservable.values():
        rt.health.report(problem)
    refuse = refuse_to_start(rt.settings.start_check, rt.preloaded_refs, list(rt.unservable))
    if refuse:
        # Logging is not configured yet: say it on stderr, one line per model, then exit.
        for problem in rt.unservable.values():
            sys.stderr.write(f"inferq worker: {problem}\n")
        sys.stderr.write(f"inferq worker: refusing to start: {refuse}\n")
        raise SystemExit(3)
    rt.health.forget_connection()  # IMPORTANT: children must not share the parent's socket
    settle_before_fork()


def schema_behind(settings: Any) -> str | None:
    """Why the results database is older than this worker's code (None: it is not).

    A database *ahead* of the code (a newer inferq ran `inferq db upgrade` first, as the
    upgrade order says) is fine: migrations only add what older code does not use.
    """
    from inferq import migrations

    current, head = migrations.current_revision(settings), migrations.head_revision(settings)
    if current == head or (
        current is not None and not migrations.known_revision(settings, current)
    ):
        return None
    return f"it is at migration {current or 'none'}, this worker needs {head}"


def refuse_to_start(policy: str, served: list[str], unservable: list[str]) -> str | None:
    """Why the start check refuses this worker (INFERQ_START_CHECK), or None to start."""
    if not unservable or policy == "off":
        return None
    if policy == "all":
        return (
            f"{len(unservable)} model version(s) cannot be served here "
            "(INFERQ_START_CHECK=all); fix the environment or set INFERQ_START_CHECK=any"
        )
    if not served:
        return (
            f"none of the {len(unservable)} model version(s) it must serve can be loaded here; "
            "fix the environment (INFERQ_START_CHECK=off starts anyway: their jobs wait)"
        )
    return None


@worker_ready.connect
def _report_preload(**_: Any) -> None:
    """Log what was preloaded (logging is only configured after worker_init has run)."""
    rt = runtime.get()
    if rt.preload_error:
        log.error("model preload failed, models load on demand per child: %s", rt.preload_error)
    for ref, reason in rt.preload_failures.items():
        log.error("could not preload %s: %s", ref, reason)
    for problem in rt.unservable.values():
        log.error("%s (its jobs are requeued, not answered, until a worker can serve it)", problem)
    refs = rt.preloaded_refs
    log.info("preloaded %d model(s) before fork: %s", len(refs), ", ".join(refs) or "-")


@worker_process_init.connect
def _child_init(**_: Any) -> None:
    """Each prefork child: keep BLAS/OpenMP at one thread."""
    limit_threads()
    runtime.get().health.forget_connection()
