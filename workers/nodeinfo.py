"""What a worker node is and holds, for `inferq workers` (ops/workers.py reads it).

The worker's main process describes itself (host, pid, queues, pool size, the models it
holds with their runtime, when it started) and, with a Redis broker, publishes that from a
thread of its own every ``INFERQ_LIVENESS_TIMEOUT / 5`` seconds (5 s with liveness off):

- ``inferq:node-info:<incarnation>``: a hash of those fields plus ``beat``, the time of the
  last publish on Redis's own clock (host clocks do not matter); it expires ``TTL`` seconds
  after the last publish, so a crashed worker is listed as silent for a few minutes and then
  disappears, while a clean stop deletes it at once;
- ``inferq:node-index``: a sorted set of incarnations scored with that beat, so the CLI
  reads the few hashes it names instead of scanning the keyspace (entries older than the
  TTL are trimmed on every publish).

The incarnation is liveness's (``hostname/pid/token``, workers/liveness.py), so the CLI can
tell a worker that stopped beating ("silent") from one the others already reaped. Models
are read from the runtime on every publish, so a hot reload (workers/reload.py) shows within
one interval; the reload also wakes the publisher at once. The embedded filesystem broker
has no Redis: there ``inferq workers`` asks the live workers through Celery's remote control
instead (the ``inferq_node`` inspect command below answers with the same description).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, ClassVar

from celery import bootsteps
from celery.worker.control import inspect_command
from inferq.common import redisconn
from inferq.workers.liveness import LivenessStep

log = logging.getLogger("inferq.worker")

INDEX = "inferq:node-index"
INFO = "inferq:node-info:"
#: Publish interval with liveness off, and the silence after which such a worker is "silent".
DEFAULT_EVERY = 5.0
#: A crashed worker's hash stays this long after its last publish (at least 4 silences).
MIN_TTL = 300

_PUBLISH_LUA = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local ttl = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'beat', tostring(t), unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], t, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', t - ttl)
return tostring(t)
"""


def timing(liveness_timeout: float) -> tuple[float, float, int]:
    """(publish every, silent after, TTL) seconds for a worker's liveness timeout."""
    if liveness_timeout > 0:
        every, silent = liveness_timeout / 5, float(liveness_timeout)
    else:
        every, silent = DEFAULT_EVERY, 3 * DEFAULT_EVERY
    return every, silent, max(MIN_TTL, int(4 * silent))


def serving(rt: Any) -> list[dict[str, str]]:
    """The models the main process holds (children share them): ref, runtime, role."""
    held = list(rt.loaded_models())  # one C-level copy: safe against a concurrent reload
    out = []
    for (name, version), model in sorted(held):
        role = "shadow" if rt.shadows.get(name) == version else "serving"
        out.append({"model": f"{name}@{version}", "runtime": model.runtime, "role": role})
    return out


def describe(worker: Any) -> dict[str, Any]:
    """This worker node as `inferq workers` shows it (JSON-ready)."""
    from inferq.workers import parking, runtime

    from inferq import __version__

    rt = runtime.get()
    own = parking.node_queue(worker.hostname)  # claimed parked messages: not a real queue
    queues = [q for q in worker.app.amqp.queues.consume_from if q != own]
    scaler = getattr(worker, "autoscaler", None)
    pool = getattr(worker, "pool", None)
    processes = getattr(pool, "num_processes", None)
    settings = worker.app.inferq_settings
    every, silent, _ = timing(settings.liveness_timeout)
    return {
        "incarnation": getattr(worker, "inferq_incarnation", None) or incarnation(worker.hostname),
        "node": worker.hostname,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": getattr(worker, "inferq_started_at", None),
        "queues": sorted(queues),
        "pool": getattr(worker.pool_cls, "__module__", "?").rsplit(".", 1)[-1],
        "concurrency": worker.concurrency,
        "processes": processes if isinstance(processes, int) else None,
        "autoscale": (
            [scaler.max_concurrency, scaler.min_concurrency] if scaler is not None else None
        ),
        "max_tasks_per_child": worker.max_tasks_per_child,
        "models": serving(rt),
        "unservable": sorted(rt.unservable),
        "every": every,
        "silent_after": silent,
        "liveness": settings.liveness_timeout > 0 and redisconn.is_redis(settings.broker_url),
        "inferq_version": __version__,
    }


def incarnation(hostname: str) -> str:
    """A new incarnation name (liveness's form) when liveness did not make one."""
    return f"{hostname}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def fields(info: dict[str, Any]) -> list[str]:
    """The hash fields of ``info`` as a flat [field, value, ...] list (lists as JSON)."""
    flat: list[str] = []
    for key, value in info.items():
        flat += [key, json.dumps(value)]
    return flat


class NodePublisher:
    """Publishes one worker's description to Redis from a thread (see the module doc)."""

    def __init__(self, settings: Any, worker: Any) -> None:
        self.every, self.silent, self.ttl = timing(settings.liveness_timeout)
        self._settings = settings
        self._worker = worker
        self._wake = threading.Event()
        self._stopping = False
        self._client: Any = None
        self._script: Any = None
        self._thread: threading.Thread | None = None
        self.key = INFO + worker.inferq_incarnation

    def start(self) -> None:
        """First publish now, then every ``every`` seconds (or when poked)."""
        self._client = redisconn.broker_client(self._settings)
        self._script = self._client.register_script(_PUBLISH_LUA)
        self._thread = threading.Thread(target=self._run, name="inferq-nodeinfo", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Publish now (the models changed)."""
        self._wake.set()

    def publish(self) -> None:
        """One publish (raises on a Redis failure)."""
        info = describe(self._worker)
        self._script(keys=[self.key, INDEX], args=[self.ttl, info["incarnation"], *fields(info)])

    def _run(self) -> None:
        failing = False
        while not self._stopping:
            try:
                self.publish()
                failing = False
            except Exception as exc:  # advisory: serving goes on without it
                if not failing:
                    log.warning("could not publish this worker's description: %s", exc)
                failing = True
            self._wake.wait(self.every)
            self._wake.clear()

    def stop(self) -> None:
        """Stop publishing and remove the description (a clean stop is no silence)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(Exception):  # shutting down; the TTL removes it anyway
            name = self._worker.inferq_incarnation
            self._client.pipeline().delete(self.key).zrem(INDEX, name).execute()
        with contextlib.suppress(Exception):
            self._client.close()


class NodeInfoStep(bootsteps.StartStopStep):
    """Worker bootstep: started after liveness (same incarnation) and the pool."""

    requires: ClassVar[set[Any]] = {LivenessStep, "celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.publisher: NodePublisher | None = None

    def start(self, worker: Any) -> None:
        """Stamp the start time; publish with a Redis broker."""
        worker.inferq_started_at = time.time()
        if not getattr(worker, "inferq_incarnation", None):
            worker.inferq_incarnation = incarnation(worker.hostname)
        settings = worker.app.inferq_settings
        if not redisconn.is_redis(settings.broker_url):
            return  # `inferq workers` asks through remote control (inferq_node) instead
        self.publisher = NodePublisher(settings, worker)
        worker.inferq_node_info = self.publisher
        self.publisher.start()

    def stop(self, worker: Any) -> None:
        """Remove this worker's description."""
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
            worker.inferq_node_info = None


@inspect_command()
def inferq_node(state: Any) -> dict[str, Any]:
    """Remote-control answer for brokers without Redis: this worker's description."""
    return describe(state.consumer.controller)
