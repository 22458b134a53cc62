"""The in-flight reconciler: a worker bootstep that re-sends batches Redis lost.

Runs in each worker's main process on Celery's timer; one worker per round does the work
(a Redis lock). See common/inflight.py for what the ledger holds and why.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from inferq.common import inflight, redisconn
from inferq.common.celery import send_score
from inferq.common.settings import Settings
from inferq.workers.health import parked
from inferq.workers.steps import RedisTimerStep

log = logging.getLogger("inferq.worker")


def reconcile_once(app: Any, client: Any, settings: Settings) -> int:
    """Re-send every stale, unqueued batch of the ledger; returns how many were sent."""
    if not inflight.claim_round(client, settings.reconcile_interval):
        return 0
    now = time.time()
    records = inflight.stale(client, now - settings.stale_after)
    if settings.liveness_timeout > 0:
        # With liveness, a batch no live worker holds unacked, not parked and not queued
        # is lost as soon as it is older than twice the liveness timeout (a dead worker's
        # in-flight pop: BRPOP took it, the worker died before kombu recorded it).
        cutoff = now - 2 * settings.liveness_timeout
        if client.zcount(inflight.INDEX, "-inf", cutoff):  # else nothing to look up
            seen = {r.batch_id for r in records}
            skip = inflight.held_batches(client) | {p.batch_id for p in parked(client)} | seen
            records += inflight.stale(client, cutoff, skip=skip)
    if not records:
        return 0
    with app.producer_or_acquire() as producer:
        for rec in records:
            send_score(app, producer, rec.queue, rec.payload, rec.describe, time.time())
    # Touched only after the sends: a crash in between re-sends them next round (a no-op).
    pipe = client.pipeline(transaction=False)
    for rec in records:
        inflight.touch(pipe, rec.batch_id)
    pipe.execute()
    log.warning(
        "in-flight ledger: re-sent %d batch(es) unanswered, held by no live worker and no "
        "longer queued (lost between Redis and a worker): %s",
        len(records),
        ", ".join(r.batch_id for r in records[:5]) + (" ..." if len(records) > 5 else ""),
    )
    return len(records)


class InflightReconciler(RedisTimerStep):
    """Worker bootstep: run :func:`reconcile_once` every ``reconcile_interval`` seconds."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

    def start(self, worker: Any) -> None:
        """Schedule the rounds (only for Redis brokers with the ledger on)."""
        settings: Settings = worker.app.inferq_settings
        if not (settings.inflight_ledger and redisconn.is_redis(settings.broker_url)):
            return
        self.schedule(worker.timer, settings, settings.reconcile_interval,
                      self._round, (worker.app, settings))  # fmt: skip

    def _round(self, app: Any, settings: Settings) -> None:
        try:
            reconcile_once(app, self.client, settings)
        except Exception as exc:  # Redis away: the next round tries again
            log.warning("in-flight reconcile round failed: %s", exc)
