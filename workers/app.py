"""The inferq Celery app for workers: ``celery -A inferq.workers.app worker`` or ``inferq worker``.

Importing this module reads no settings and opens no connection; configuration is read
when Celery first needs it, and models are loaded in ``worker_init`` (the parent, before
the prefork pool forks its children).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready
from inferq.common.celery import create_celery
from inferq.workers import runtime
from inferq.workers.preload import WorkerRuntime, limit_threads
from inferq.workers.reconcile import InflightReconciler
from inferq.workers.requests import patch_kombu_close_after_collect
from inferq.workers.watchdog import ConsumerWatchdog

log = logging.getLogger("inferq.worker")

app = create_celery()
import inferq.workers.tasks  # noqa: E402,F401  (registers the task on this app)

app.steps["worker"].add(InflightReconciler)
patch_kombu_close_after_collect()
app.steps["consumer"].add(ConsumerWatchdog)


@worker_init.connect
def _preload_models(sender: Any = None, **_: Any) -> None:
    """Parent process, before fork: pin threads and load models (shared copy-on-write)."""
    limit_threads()
    rt = runtime.install(WorkerRuntime(app.inferq_settings))
    try:
        rt.preload()
    except Exception as exc:  # registry unreachable/unmigrated: serve on demand, say so loudly
        rt.preload_error = f"{type(exc).__name__}: {exc}"


@worker_ready.connect
def _report_preload(**_: Any) -> None:
    """Log what was preloaded (logging is only configured after worker_init has run)."""
    rt = runtime.get()
    if rt.preload_error:
        log.error("model preload failed, models load on demand per child: %s", rt.preload_error)
    for ref, reason in rt.preload_failures.items():
        log.error("could not preload %s (its messages get error rows): %s", ref, reason)
    refs = rt.preloaded_refs
    log.info("preloaded %d model(s) before fork: %s", len(refs), ", ".join(refs) or "-")


@worker_process_init.connect
def _child_init(**_: Any) -> None:
    """Each prefork child: keep BLAS/OpenMP at one thread."""
    limit_threads()
