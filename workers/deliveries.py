"""Counting deliveries that never finished, to stop a message that kills its worker looping.

With `task_reject_on_worker_lost`, a message whose worker process dies (segfault, out of
memory, hard time limit) goes back to the queue — forever, if it kills every process that
takes it. Each delivery increments a counter in Redis when it starts and deletes it when it
ends (success, error rows or retry), so the counter only grows for deliveries that died.
Past the cap the message is dead-lettered instead of scored.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("inferq.worker")
_TTL = 24 * 3600


class DeliveryCounter:
    """Per-process Redis counter of unfinished deliveries per batch id (Redis brokers only)."""

    def __init__(self, broker_url: str | None) -> None:
        scheme = (broker_url or "").split(":", 1)[0]
        self._url = broker_url if scheme in {"redis", "rediss"} else None
        self._client: Any = None
        self._pid = 0

    def _redis(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            import redis

            assert self._url is not None
            self._client = redis.Redis.from_url(self._url, socket_timeout=5)
            self._pid = os.getpid()
        return self._client

    @staticmethod
    def _key(batch_id: str) -> str:
        return f"inferq:deliveries:{batch_id}"

    def start(self, batch_id: str) -> int:
        """Record a delivery; returns how many deliveries of this batch did not finish + 1."""
        if self._url is None:
            return 0
        try:
            pipe = self._redis().pipeline()
            pipe.incr(self._key(batch_id))
            pipe.expire(self._key(batch_id), _TTL)
            return int(pipe.execute()[0])
        except Exception as exc:  # never block scoring on the counter
            log.warning("delivery counter unavailable: %s", exc)
            return 0

    def finish(self, batch_id: str) -> None:
        """The delivery ended without its process dying: forget it."""
        if self._url is None:
            return
        try:
            self._redis().delete(self._key(batch_id))
        except Exception as exc:
            log.warning("delivery counter unavailable: %s", exc)
