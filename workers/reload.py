"""Hot reload: workers follow the registry without a restart.

Every ``INFERQ_RELOAD_INTERVAL`` seconds the worker's main process reads the serving tables
(models/lifecycle.py: aliases, shadows, retired versions, runtimes; three small queries).
When something changed it loads the new versions *in the main process*, drops retired and
outdated ones, and recycles the prefork children: billiard sets each child's restart event,
the child exits between jobs (never during one: no job fails or is redelivered), and the
pool forks a replacement from the main process, which shares the new model copy-on-write.
A solo or threads pool serves from the main process directly: nothing to recycle.

What it costs is measured in BENCHMARKS.md (time from promote to serving, memory per child).
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from celery import bootsteps
from inferq.models.lifecycle import serving_state
from inferq.workers import runtime

log = logging.getLogger("inferq.worker")


class ModelWatcher(bootsteps.StartStopStep):
    """Worker bootstep: follow promotes, retires, shadows and optimizations every few seconds."""

    requires: ClassVar[set[str]] = {
        "celery.worker.components:Timer",
        "celery.worker.components:Pool",
    }

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.failing = False

    def start(self, worker: Any) -> None:
        """Schedule the rounds (INFERQ_RELOAD_INTERVAL=0 turns them off)."""
        every = worker.app.inferq_settings.reload_interval
        if every > 0:
            self.tref = worker.timer.call_repeatedly(every, self.round, (worker,), priority=10)

    def stop(self, worker: Any) -> None:
        """Cancel the timer entry."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def round(self, worker: Any) -> bool:
        """One look at the registry; True when the children were recycled."""
        rt = runtime.get()
        try:
            state = serving_state(rt.engine)
        except Exception as exc:  # registry away: keep serving what is loaded, say it once
            if not self.failing:
                log.warning("registry unreachable, serving what is loaded: %s", exc)
            self.failing = True
            return False
        if self.failing:
            log.warning("registry reachable again")
            self.failing = False
        if state.fingerprint == rt.state_fingerprint:
            return False
        started = time.monotonic()
        before = set(rt.preloaded_refs)
        changed = rt.apply_state(state)
        rt.dispose_parent_engine()
        if not changed:
            return False
        settle_before_fork()
        after = set(rt.preloaded_refs)
        log.warning(
            "registry changed: loaded %s, dropped %s in %.2f s; recycling pool processes",
            ", ".join(sorted(after - before)) or "-",
            ", ".join(sorted(before - after)) or "-",
            time.monotonic() - started,
        )
        recycle(worker.pool)
        publisher = getattr(worker, "inferq_node_info", None)
        if publisher is not None:  # `inferq workers` shows the new models now
            publisher.poke()
        return True


def settle_before_fork() -> None:
    """Make what the main process holds cheap to share with the children it forks next.

    ``gc.freeze()`` moves every object to the permanent generation: a child's garbage
    collector then never walks (and so never writes, un-sharing the page) the parent's
    objects. Measured by the lifecycle benchmark: the first pool process held ~60 MB of
    private memory unrelated to the model without it. ``malloc_trim`` returns what a reload
    freed (the dropped version) to the system instead of keeping it in glibc's arenas.
    """
    import gc

    gc.collect()
    gc.freeze()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def recycle(pool: Any) -> bool:
    """Ask each pool process to exit between jobs; the pool forks replacements from the main
    process. False for pools without processes (solo, threads): they serve the new state."""
    try:
        pool.restart()
    except (NotImplementedError, AttributeError):
        return False
    return True
