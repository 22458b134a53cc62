"""Consumer watchdog: restart a consumer that stopped fetching after a broker reconnect.

Celery workers on Redis can reconnect after a broker restart and then never fetch again
(celery/celery#8030, #8091, #10205; seen here once in six Redis-SIGKILL runs: the queue kept
44,000 jobs while the worker sat idle). The watchdog, a consumer bootstep on the event
loop, notices the state no healthy consumer is in — messages waiting in a queue it consumes,
a free pool process, and nothing received for ``INFERQ_CONSUMER_STALL_SECONDS`` — and raises
a connection error inside the loop, which Celery answers as it answers any lost connection:
it closes the consumer and starts a fresh one (reserved messages come back to Redis).
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from celery.signals import task_received
from inferq.common import inflight, redisconn
from inferq.common.compat import ConsumerStalled, free_process
from inferq.common.settings import Settings
from inferq.workers.steps import RedisTimerStep

log = logging.getLogger("inferq.worker")
_last_received = [time.monotonic()]


@task_received.connect
def _received(**_: Any) -> None:
    """Main process: a message was received (any task)."""
    _last_received[0] = time.monotonic()


def stalled(waiting: int, free_process: bool, idle_for: float, limit: float) -> bool:
    """The watchdog's rule: work waits, capacity is free, and nothing arrived for too long."""
    return limit > 0 and waiting > 0 and free_process and idle_for >= limit


class ConsumerWatchdog(RedisTimerStep):
    """Consumer bootstep: check every few seconds; registered anew by each consumer start."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}
    started = 0.0  # monotonic time of the consumer start this step belongs to

    def start(self, c: Any) -> None:
        """Begin checking (Redis brokers only; INFERQ_CONSUMER_STALL_SECONDS=0 turns it off)."""
        settings: Settings = c.app.inferq_settings
        limit = settings.consumer_stall_seconds
        if limit <= 0 or not redisconn.is_redis(settings.broker_url) or c.timer is None:
            return
        self.started = time.monotonic()
        every = max(1.0, min(10.0, limit / 4))
        self.schedule(c.timer, settings, every, self._check, (c, limit))

    def _check(self, c: Any, limit: float) -> None:
        free = free_process(c.pool)
        if free is None:  # a pool we can't see into: nothing to conclude
            return
        queues = [q.name for q in (c.task_consumer.queues if c.task_consumer else [])]
        try:
            waiting = inflight.waiting(self.client, queues) if queues else 0
        except Exception as exc:  # Redis away: the consumer notices that on its own
            log.debug("watchdog check skipped: %s", exc)
            return
        idle_for = time.monotonic() - max(_last_received[0], self.started)
        if stalled(waiting, free, idle_for, limit):
            log.error(
                "consumer stalled: %d message(s) waiting in %s, a free process, nothing "
                "received for %.0f s; restarting the consumer", waiting, ",".join(queues),
                idle_for,
            )  # fmt: skip
            raise ConsumerStalled("inferq watchdog: consumer stopped fetching")
