"""Worker liveness: a dead worker's messages go back to the queue in seconds, not minutes.

Redis hands an unacked message to another worker only after the visibility timeout (300 s),
which must stay above the task time limit so a slow batch is never scored twice at once.
Waiting that long after every OOM kill or lost node is what this module removes:

- each worker process that consumes (an *incarnation*: hostname, pid, random token) beats
  every ``INFERQ_LIVENESS_TIMEOUT / 5`` seconds into the sorted set ``inferq:nodes`` (score:
  Redis's own clock, so hosts' clocks do not matter), from a thread of its own, so a long
  model load or a busy event loop never looks like death;
- the delivery tags it holds are kept in the set ``inferq:held:<incarnation>``, written in
  the same Redis transaction in which kombu records them unacked (common/compat.py), and
  removed with them on ack, reject or restore;
- every worker also reaps: an incarnation silent for ``INFERQ_LIVENESS_TIMEOUT`` is removed
  (one reaper wins, atomically) and each of its held deliveries still unacked is put back at
  the head of its queue with kombu's own requeue.

A worker that was only paused or cut off (SIGSTOP, a network partition, a Redis failover
longer than the timeout) may then finish a batch another worker also scores: writes are
idempotent per job, so that costs work and never a second row. A reaper reaps only after
its own beats have been continuous for a whole timeout, so after a Redis restart or
failover, when every beat looks old, nobody is taken for dead before it had time to beat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from typing import Any, ClassVar

from celery import bootsteps
from inferq.common import compat, inflight, redisconn
from inferq.common.settings import Settings

log = logging.getLogger("inferq.worker")

NODES = "inferq:nodes"
HELD = "inferq:held:"

# Beat: stamp this incarnation with Redis's clock and drop held tags kombu no longer has
# unacked (acked elsewhere, restored by a visibility sweep). Returns 1 if the entry was new:
# on any beat but the first, that means another worker took us for dead.
_BEAT_LUA = """
local now = redis.call('TIME')
local new = redis.call('ZADD', KEYS[1], tonumber(now[1]) + tonumber(now[2]) / 1e6, ARGV[1])
for _, tag in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('HEXISTS', KEYS[3], tag) == 0 then redis.call('SREM', KEYS[2], tag) end
end
for _, tag in ipairs(redis.call('HKEYS', KEYS[4])) do
  if redis.call('HEXISTS', KEYS[3], tag) == 0 then redis.call('HDEL', KEYS[4], tag) end
end
return new
"""

# Claim the incarnations silent for longer than ARGV[1] seconds: remove each from the set
# (so exactly one reaper gets it) and hand back its held tags: {name, age, n, tags..., ...}.
_CLAIM_LUA = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local out = {}
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t - tonumber(ARGV[1]),
                        'WITHSCORES', 'LIMIT', 0, 20)
for i = 1, #dead, 2 do
  local name = dead[i]
  if redis.call('ZREM', KEYS[1], name) == 1 then
    local held = ARGV[2] .. name
    local tags = redis.call('SMEMBERS', held)
    redis.call('DEL', held)
    table.insert(out, name)
    table.insert(out, tostring(t - tonumber(dead[i + 1])))
    table.insert(out, #tags)
    for _, tag in ipairs(tags) do table.insert(out, tag) end
  end
end
return out
"""

# Leaving cleanly: remove the entry unless deliveries are still held (then the others reap
# them once we stop beating). Returns the number still held.
_LEAVE_LUA = """
for _, tag in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('HEXISTS', KEYS[3], tag) == 0 then redis.call('SREM', KEYS[2], tag) end
end
local held = redis.call('SCARD', KEYS[2])
if held == 0 then redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('DEL', KEYS[2]) end
return held
"""


def parse_claims(out: list[Any]) -> list[tuple[str, float, list[str]]]:
    """The claim script's flat answer as (incarnation, silent seconds, tags)."""
    claims, i = [], 0
    while i < len(out):
        name, age, n = _text(out[i]), float(_text(out[i + 1])), int(out[i + 2])
        claims.append((name, age, [_text(t) for t in out[i + 3 : i + 3 + n]]))
        i += 3 + n
    return claims


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Liveness:
    """The beating and reaping of one worker incarnation (a thread; see the module doc)."""

    def __init__(self, settings: Settings, app: Any, hostname: str) -> None:
        self.timeout = float(settings.liveness_timeout)
        self.every = self.timeout / 5
        self.name = f"{hostname}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.held_key = HELD + self.name
        self._settings = settings
        self._app = app
        self._client: Any = None
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._continuous_since: float | None = None
        self._last_ok: float | None = None
        self._beats = 0

    # ----- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """First beat now (before any message is taken), then the thread."""
        self._client = redisconn.broker_client(self._settings)
        self._beat_script = self._client.register_script(_BEAT_LUA)
        self._claim_script = self._client.register_script(_CLAIM_LUA)
        self._leave_script = self._client.register_script(_LEAVE_LUA)
        try:
            self.beat()
        except Exception as exc:  # the thread keeps trying; Celery waits for Redis too
            log.warning("liveness: first beat failed (%s); retrying every %.0f s", exc, self.every)
        compat.record_deliveries_in(self.held_key)
        self._thread = threading.Thread(target=self._run, name="inferq-liveness", daemon=True)
        self._thread.start()
        log.info("liveness: beating every %.0f s as %s; a worker silent for %.0f s is taken "
                 "for dead", self.every, self.name, self.timeout)  # fmt: skip

    def stop(self) -> None:
        """Stop beating; leave the set unless deliveries are still held (then they are
        reaped like a dead worker's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.every + 6)
        compat.record_deliveries_in(None)
        try:
            held = self._leave_script(keys=self._keys(), args=[self.name])
        except Exception as exc:
            log.warning("liveness: could not leave cleanly (%s); others reap this worker's "
                        "deliveries after %.0f s", exc, self.timeout)  # fmt: skip
            held = -1
        if held and held > 0:
            log.warning("liveness: %d deliveries still held at shutdown; other workers "
                        "requeue them %.0f s from now", held, self.timeout)  # fmt: skip
        for closer in (self._conn, self._client):
            if closer is not None:
                with contextlib.suppress(Exception):  # shutting down; nothing to save
                    closer.close()

    def _keys(self) -> list[str]:
        return [NODES, self.held_key, compat.redis_layout().unacked, inflight.UNACKED_BATCHES]

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.beat()
                if self.may_reap():
                    self.reap()
            except Exception as exc:  # Redis away: beats resume, continuity restarts
                log.warning("liveness: %s", exc)
                self._drop_connection()

    # ----- one round ----------------------------------------------------------------
    def beat(self) -> None:
        """Stamp this incarnation; notice when another worker took it for dead."""
        new = self._beat_script(keys=self._keys(), args=[self.name])
        now = time.monotonic()
        gap = None if self._last_ok is None else now - self._last_ok
        if gap is None or gap > 2 * self.every + 5:
            self._continuous_since = now  # first beat, or after a pause / Redis outage
        self._last_ok = now
        if new and self._beats:
            log.warning(
                "liveness: this worker was silent for more than %.0f s (paused, cut off, or "
                "Redis failed over) and was taken for dead: the messages it held went to "
                "other workers; batches finishing here now are no-op writes", self.timeout,
            )  # fmt: skip
        self._beats += 1

    def may_reap(self) -> bool:
        """Only after a whole timeout of our own beats: after a Redis restart or failover
        every beat looks old, and nobody must be taken for dead before it could beat."""
        since = self._continuous_since
        return since is not None and time.monotonic() - since >= self.timeout

    def reap(self) -> int:
        """Requeue the deliveries of incarnations silent for longer than the timeout."""
        out = self._claim_script(keys=[NODES], args=[self.timeout, HELD])
        restored = 0
        for name, age, tags in parse_claims(out):
            for tag in tags:
                compat.restore_delivery(self._channel(), tag)
            restored += len(tags)
            log.warning("liveness: worker %s silent for %.0f s, taken for dead: %d message(s) "
                        "it held are back in the queue", name, age, len(tags))  # fmt: skip
        return restored

    def _channel(self) -> Any:
        if self._conn is None:
            self._conn = self._app.connection_for_write()
        return self._conn.default_channel

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # it is broken anyway
                self._conn.release()
            self._conn = None


class LivenessStep(bootsteps.StartStopStep):
    """Worker bootstep. It starts before the consumer and stops after it (Celery starts the
    consumer last), so every delivery is taken while this worker beats."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.liveness: Liveness | None = None

    def start(self, worker: Any) -> None:
        """Redis brokers with INFERQ_LIVENESS_TIMEOUT > 0 only."""
        settings: Settings = worker.app.inferq_settings
        if settings.liveness_timeout <= 0 or not redisconn.is_redis(settings.broker_url):
            return
        self.liveness = Liveness(settings, worker.app, worker.hostname)
        worker.inferq_incarnation = self.liveness.name  # workers/nodeinfo.py publishes under it
        self.liveness.start()

    def stop(self, worker: Any) -> None:
        """Leave (see Liveness.stop)."""
        if self.liveness is not None:
            self.liveness.stop()
            self.liveness = None
