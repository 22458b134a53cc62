"""Worker bootstep: keep the coming days' partitions of the results tables created.

Each worker's main process creates today's and the next ``INFERQ_PARTITIONS_AHEAD`` days'
partitions at start and once an hour (common/partitions.py). Any one worker doing it is
enough; many doing it is safe (an advisory lock makes creation one-at-a-time). The writer
also creates a missing partition on demand, so this only keeps that off the write path.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from celery import bootsteps
from inferq.common import partitions
from inferq.workers import runtime

log = logging.getLogger("inferq.worker")

#: Seconds between rounds.
INTERVAL = 3600.0


class PartitionKeeper(bootsteps.StartStopStep):
    """Create the coming days' partitions at start, then every hour."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        """One round now (before jobs arrive), then the timer."""
        self.round()
        self.tref = worker.timer.call_repeatedly(INTERVAL, self.round, priority=5)

    def stop(self, worker: Any) -> None:
        """Cancel the timer entry."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def round(self) -> None:
        """Create what is missing; a failure (lock timeout, database away) waits for the next."""
        rt = runtime.get()
        try:
            created = partitions.ensure_ahead(rt.engine, rt.settings.partitions_ahead)
        except Exception as exc:
            log.warning("could not create the coming days' partitions (retried in 1 h): %s", exc)
            return
        if created:
            log.info("created partitions %s", ", ".join(created))
