"""Base for inferq's worker bootsteps that run a periodic check against the broker's Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import bootsteps


class RedisTimerStep(bootsteps.StartStopStep):
    """A bootstep owning one Redis client and one repeating timer entry."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.client: Any = None

    def schedule(self, timer: Any, url: str, every: float, fun: Callable[..., Any],
                 args: tuple[Any, ...]) -> None:  # fmt: skip
        """Open the Redis client and call ``fun(*args)`` every ``every`` seconds."""
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.tref = timer.call_repeatedly(every, fun, args, priority=10)

    def stop(self, parent: Any) -> None:
        """Cancel the timer entry and close the Redis client."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.client is not None:
            self.client.close()
            self.client = None


def free_process(pool: Any) -> bool | None:
    """Whether a prefork pool process could start a job now; None for pools we can't see into.

    Jobs handed to the pool and not finished sit in billiard's result cache, so a cache
    smaller than the process count means a process is idle.
    """
    try:
        return len(pool._pool._cache) < pool.num_processes
    except Exception:
        return None
