"""Access to the process-wide WorkerRuntime (created in the worker parent before fork)."""

from __future__ import annotations

from inferq.workers.preload import WorkerRuntime

_runtime: WorkerRuntime | None = None


def install(rt: WorkerRuntime) -> WorkerRuntime:
    """Make ``rt`` the runtime used by tasks in this process (and its forked children)."""
    global _runtime
    _runtime = rt
    return rt


def get() -> WorkerRuntime:
    """The installed runtime; a task running outside `inferq worker` builds one from settings."""
    global _runtime
    if _runtime is None:
        from celery import current_app

        settings = getattr(current_app, "inferq_settings", None)
        if settings is None:
            from inferq.common.settings import get_settings

            settings = get_settings()
        _runtime = WorkerRuntime(settings)
    return _runtime
