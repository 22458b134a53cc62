"""The score task's Celery Request: never crash the worker acking on a closed connection.

When the broker connection drops, Celery closes it and kombu puts every unacked message
back in Redis. A task that finishes a moment later is still acked by Celery 5.7, on the
closed channel: kombu raises AttributeError (not a connection error), Celery calls it
unrecoverable and the whole worker exits (seen in the Redis-restart fault test). Its message
is already back in the queue, so there is nothing to ack: skip it and say so.
"""

from __future__ import annotations

import logging

from celery.worker.request import Request
from inferq.common.compat import channel_gone

log = logging.getLogger("inferq.worker")


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
