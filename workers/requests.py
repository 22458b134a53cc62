"""The score task's Celery Request: never crash the worker acking on a closed connection.

When the broker connection drops, Celery closes it and kombu puts every unacked message
back in Redis. A task that finishes a moment later is still acked by Celery 5.7, on the
closed channel: kombu raises AttributeError (not a connection error), Celery calls it
unrecoverable and the whole worker exits (seen in the Redis-restart fault test). Its message
is already back in the queue, so there is nothing to ack: skip it and say so.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.request import Request

log = logging.getLogger("inferq.worker")


def channel_gone(req: Any) -> bool:
    """True when ``req``'s channel was closed (connection lost): it can't be acked any more,
    and kombu has already restored its message to the queue."""
    channel = getattr(req.message, "channel", None)
    if channel is None or getattr(channel, "closed", False):
        return True
    transport = getattr(channel, "connection", None)
    return transport is None or getattr(transport, "client", True) is None


class SafeRequest(Request):
    """Celery's Request, with acks and rejects skipped once the channel is gone."""

    acknowledged: bool

    def acknowledge(self) -> None:
        """Ack, unless the connection was lost (then the message is already requeued)."""
        if not self.acknowledged and channel_gone(self):
            log.warning(
                "task %s finished after the broker connection was lost; its message was "
                "requeued and will be delivered again (a no-op write)", self.id,
            )  # fmt: skip
            self.acknowledged = True
            return
        super().acknowledge()

    def reject(self, requeue: bool = False) -> None:
        """Reject, unless the connection was lost (then the message is already requeued)."""
        if not self.acknowledged and channel_gone(self):
            self.acknowledged = True
            return
        super().reject(requeue=requeue)


def patch_kombu_close_after_collect() -> None:
    """Keep a Redis reconnect from killing the worker (kombu 5.7 / Celery 5.7).

    On a lost connection Celery first ``collect()``s the connection (its transport's client
    becomes None), then ``close()``s it; closing the default channel restores unacked
    messages through that client and raises AttributeError, which Celery treats as
    unrecoverable: the worker exits (1 in 3 Redis-restart test runs). Those messages are
    restored by the visibility-timeout sweep anyway, so the close is finished without them.
    """
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel.close
    if getattr(original, "_inferq_patched", False):
        return

    def close(self: Any) -> None:
        try:
            original(self)
        except AttributeError:
            if getattr(getattr(self, "connection", None), "client", True) is not None:
                raise
            log.warning("broker connection already torn down; its unacked messages return "
                        "after the visibility timeout")  # fmt: skip
            self.closed = True

    close._inferq_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel.close = close  # type: ignore[method-assign]
