"""Clients for the broker's Redis, whatever form INFERQ_BROKER_URL takes.

inferq talks to the broker's Redis directly for the in-flight ledger, the delivery cap,
worker liveness, parked messages, health reports and the metrics exporter. Those clients
must reach the same server Celery does: a plain ``redis://`` or TLS ``rediss://`` URL, or
Redis Sentinel (kombu's ``sentinel://h1:26379;sentinel://h2:26379/0`` form plus the master's
name in ``INFERQ_SENTINEL_MASTER``), in which case the client asks the sentinels for the
current master on every (re)connect and follows a failover by itself.

This is the one place that turns a broker URL into a Redis client.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

REDIS_SCHEMES = ("redis", "rediss", "sentinel")
SENTINEL_PORT = 26379


def scheme(url: str | None) -> str:
    """The URL's scheme in lower case ('' for None)."""
    return (url or "").split(":", 1)[0].strip().lower()


def is_redis(url: str | None) -> bool:
    """True for brokers that are a Redis server: redis://, rediss:// and sentinel://."""
    return scheme(url) in REDIS_SCHEMES


def is_sentinel(url: str | None) -> bool:
    """True for kombu's Redis Sentinel URLs (``sentinel://host:port;sentinel://...``)."""
    return scheme(url) == "sentinel"


def sentinel_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels of a ``sentinel://`` URL and the master's connection options.

    Like kombu, the first part carries the password and the db number
    (``sentinel://:secret@h1:26379/0;sentinel://h2:26379``); the others add sentinels.
    """
    nodes: list[tuple[str, int]] = []
    options: dict[str, Any] = {}
    for i, part in enumerate(p.strip() for p in url.split(";") if p.strip()):
        parts = urlsplit(part)
        nodes.append((parts.hostname or "localhost", parts.port or SENTINEL_PORT))
        if i == 0:
            if parts.username:
                options["username"] = unquote(parts.username)
            if parts.password:
                options["password"] = unquote(parts.password)
            db = parts.path.strip("/")
            options["db"] = int(db) if db.isdigit() else 0
    return nodes, options


def connect(
    url: str,
    master: str | None = None,
    *,
    socket_timeout: float = 5.0,
    socket_connect_timeout: float = 5.0,
) -> Any:
    """A redis-py client for ``url`` (for Sentinel: the current master of ``master``)."""
    import redis

    if not is_sentinel(url):
        return redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout
        )
    if not master:
        raise ValueError(
            "INFERQ_BROKER_URL is a Redis Sentinel URL: set INFERQ_SENTINEL_MASTER to the "
            "name the sentinels monitor (the 'sentinel monitor <name> ...' line)"
        )
    from redis.sentinel import Sentinel

    nodes, options = sentinel_nodes(url)
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_connect_timeout}
    return Sentinel(nodes, sentinel_kwargs=dict(timeouts), **timeouts).master_for(master, **options)


def broker_client(settings: Any, **timeouts: float) -> Any:
    """A client for the broker named by ``settings`` (which must be a Redis broker)."""
    return connect(str(settings.broker_url), settings.sentinel_master, **timeouts)
