"""Counting deliveries that never finished, to stop a message that kills its worker looping.

With `task_reject_on_worker_lost`, a message whose worker process dies (segfault, out of
memory, hard time limit) goes back to the queue — forever, if it kills every process that
takes it. Each delivery increments a counter in Redis when it starts and deletes it when it
ends (success, error rows or retry), so the counter only grows for deliveries that died.
Past the cap the message is dead-lettered instead of scored.

The same round trips maintain the in-flight ledger (common/inflight.py): a delivery that
starts touches its record, one that ends with an answer removes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from inferq.common import inflight, redisconn
from inferq.common.settings import Settings

log = logging.getLogger("inferq.worker")
_TTL = 24 * 3600


class DeliveryCounter:
    """Per-process Redis counter of unfinished deliveries per batch id (Redis brokers only)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._url = settings.broker_url if redisconn.is_redis(settings.broker_url) else None
        self._ledger = settings.inflight_ledger
        self._client: Any = None
        self._pid = 0

    def _redis(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            assert self._url is not None
            self._client = redisconn.broker_client(self._settings)
            self._pid = os.getpid()
        return self._client

    @staticmethod
    def _key(batch_id: str) -> str:
        return f"inferq:deliveries:{batch_id}"

    def start(self, batch_id: str) -> int:
        """Record a delivery; returns how many deliveries of this batch did not finish + 1."""
        return self.start_many([batch_id])[0]

    def start_many(self, batch_ids: Sequence[str]) -> list[int]:
        """:meth:`start` for several batches (a dynamic batch) in one round trip."""
        if self._url is None or not batch_ids:
            return [0] * len(batch_ids)
        try:
            pipe = self._redis().pipeline()
            for batch_id in batch_ids:
                pipe.incr(self._key(batch_id))
                pipe.expire(self._key(batch_id), _TTL)
                if self._ledger:
                    inflight.touch(pipe, batch_id)
            replies = pipe.execute()
        except Exception as exc:  # never block scoring on the counter
            log.warning("delivery counter unavailable: %s", exc)
            return [0] * len(batch_ids)
        step = 3 if self._ledger else 2
        return [int(replies[i * step]) for i in range(len(batch_ids))]

    def finish(self, batch_id: str, answered: bool) -> None:
        """The delivery ended without its process dying; ``answered``: its rows are stored."""
        self.finish_many({batch_id: answered})

    def finish_many(self, outcomes: Mapping[str, bool]) -> None:
        """:meth:`finish` for several batches (batch id -> answered) in one round trip."""
        if self._url is None or not outcomes:
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            pipe.delete(*(self._key(b) for b in outcomes))
            if self._ledger:
                inflight.drop(pipe, [b for b, answered in outcomes.items() if answered])
                for batch_id in (b for b, answered in outcomes.items() if not answered):
                    inflight.touch(pipe, batch_id)  # requeued: its new copy was just sent
            pipe.execute()
        except Exception as exc:
            # Harmless: a leftover record only causes a re-send, which is a no-op write.
            log.warning("delivery counter unavailable: %s", exc)
