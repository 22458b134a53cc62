"""Base for inferq's worker bootsteps that run a periodic check against the broker's Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import bootsteps
from inferq.common import redisconn
from inferq.common.settings import Settings


class RedisTimerStep(bootsteps.StartStopStep):
    """A bootstep owning one Redis client and one repeating timer entry."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.client: Any = None

    def schedule(self, timer: Any, settings: Settings, every: float, fun: Callable[..., Any],
                 args: tuple[Any, ...]) -> None:  # fmt: skip
        """Open the broker's Redis client and call ``fun(*args)`` every ``every`` seconds."""
        self.client = redisconn.broker_client(settings)
        self.tref = timer.call_repeatedly(every, fun, args, priority=10)

    def stop(self, parent: Any) -> None:
        """Cancel the timer entry and close the Redis client."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.client is not None:
            self.client.close()
            self.client = None
