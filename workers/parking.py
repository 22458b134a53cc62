"""Parking: messages whose model this worker cannot load wait in Redis for one that can.

A worker that cannot load a registered version (its own environment: workers/health.py)
must not answer the jobs, and must not keep them either. Requeueing them to the shared
queue was tried first: the misconfigured worker, whose consumer is always free, took its own
requeued copies back (one job starved for minutes next to a healthy worker), and a degraded
worker spent its processes bouncing messages instead of serving the models it can.

So the process *parks* the message — its payload in ``inferq:parked:body``, a small record in
``inferq:parked:meta`` (model version, queue, when, why) — and acks it. Every worker's main
process looks at the parked records every ``INFERQ_PARK_CLAIM_INTERVAL`` seconds and claims
the ones it can serve (the version is preloaded, or its artifact verifies here, and none of
its own processes reported failing to load it in the last ``RECLAIM_AFTER`` s) by sending
them to its own node queue ``inferq.node.<hostname>``, which only it consumes. So a parked
message goes straight to a worker that can serve it, however many misconfigured ones there
are. Publish first, then delete: a crash in between costs a duplicate message, which the
idempotent write turns into a no-op.

Nothing is lost if the parked records are: the in-flight ledger still holds every parked
batch (parking does not answer it), and sends it again to its queue after
``INFERQ_INFLIGHT_STALE_AFTER`` when no worker claimed it; a claim whose worker died before
consuming its node queue is recovered the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import msgpack
from inferq.common import inflight, redisconn
from inferq.common.celery import send_score
from inferq.workers import runtime
from inferq.workers.health import BODY, META, Parked, parked
from inferq.workers.steps import RedisTimerStep

log = logging.getLogger("inferq.worker")

#: A worker claims a version its own processes failed to load only after this many seconds
#: (its store may have been fixed); sooner, it would take back what it just parked.
RECLAIM_AFTER = 30.0


def node_queue(hostname: str) -> str:
    """The queue only the worker ``hostname`` consumes (claimed parked messages)."""
    return f"inferq.node.{hostname}"


def park(
    client: Any, batch_id: str, ref: str, queue: str, payload: dict[str, Any], by: str,
    reason: str,
) -> None:  # fmt: skip
    """Keep a message's payload until a worker that can serve ``ref`` claims it."""
    meta = {"ref": ref, "q": queue, "t": time.time(), "by": by, "why": reason[:500]}
    pipe = client.pipeline(transaction=True)
    pipe.hset(BODY, batch_id, msgpack.packb(payload, use_bin_type=True))
    pipe.hset(META, batch_id, msgpack.packb(meta, use_bin_type=True))
    pipe.execute()


def claim(
    client: Any,
    can_serve: Callable[[str], bool],
    send: Callable[[str, dict[str, Any], str], None],
    limit: int = 200,
) -> list[Parked]:
    """Send parked messages this worker can serve to its node queue; returns what it took.

    ``send(batch_id, payload, ref)`` publishes one message; a record is deleted only after
    its message was sent (a failed send leaves it parked for the next round).
    """
    taken: list[Parked] = []
    answers: dict[str, bool] = {}
    for p in parked(client)[:limit]:
        if p.ref not in answers:
            answers[p.ref] = can_serve(p.ref)
        if not answers[p.ref]:
            continue
        raw = client.hget(BODY, p.batch_id)
        if raw is None:  # claimed by another worker meanwhile
            continue
        send(p.batch_id, msgpack.unpackb(raw, raw=False), p.ref)
        if client.hdel(META, p.batch_id):
            taken.append(p)
        client.hdel(BODY, p.batch_id)
    return taken


# ----- in the pool process ---------------------------------------------------------------
def park_message(rt: Any, hostname: str | None, payload: dict[str, Any], problem: Any) -> bool:
    """Park a message this process cannot serve; False when there is no Redis to park in."""
    client = rt.health.client()
    if client is None:
        return False
    batch_id = payload.get("batch_id")
    if not isinstance(batch_id, str):
        return False
    settings = rt.settings
    queue = settings.bulk_queue if payload.get("run_id") else settings.online_queue
    park(client, batch_id, problem.ref, queue, payload, hostname or "local", problem.reason)
    rt.health.report(problem)
    return True


# ----- in the worker's main process ------------------------------------------------------
class ServeCheck:
    """Whether this worker can serve a version: preloaded, or its artifact verifies here and
    none of its processes reported failing to load it lately. Answers are cached 60 s."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self._cache: dict[str, tuple[bool, float]] = {}

    def __call__(self, ref: str) -> bool:
        name, _, raw_version = ref.rpartition("@")
        if not raw_version.isdigit():
            return False
        if (name, int(raw_version)) in self.rt.preloaded_keys:
            return True
        reported = self.rt.health.reported_at(ref)
        if reported is not None and time.time() - reported < RECLAIM_AFTER:
            return False
        hit = self._cache.get(ref)
        if hit is not None and time.monotonic() - hit[1] < 60 and reported is None:
            return hit[0]
        ok = self._verify(name, int(raw_version))
        self._cache[ref] = (ok, time.monotonic())
        return ok

    def _verify(self, name: str, version: int) -> bool:
        from inferq.models import registry
        from inferq.models.artifacts import verify_artifact

        try:
            mv = registry.get_version(self.rt.engine, name, version)
            verify_artifact(self.rt.settings.model_store_dir / mv.artifact, mv.sha256,
                            mv.sklearn_version)  # fmt: skip
        except Exception:
            return False
        return True


class ParkClaimer(RedisTimerStep):
    """Worker bootstep: claim parked messages this worker can serve, every few seconds."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

    def start(self, worker: Any) -> None:
        """Schedule the rounds (Redis brokers only; INFERQ_PARK_CLAIM_INTERVAL=0 turns off)."""
        settings = worker.app.inferq_settings
        if not redisconn.is_redis(settings.broker_url) or settings.park_claim_interval <= 0:
            return
        self.check = ServeCheck(runtime.get())
        self.queue = node_queue(worker.hostname)
        self.schedule(worker.timer, settings, settings.park_claim_interval,
                      self._round, (worker.app, settings))  # fmt: skip

    def _round(self, app: Any, settings: Any) -> None:
        try:
            if not self.client.hlen(META):
                return
            with app.producer_or_acquire() as producer:

                def send(batch_id: str, payload: dict[str, Any], ref: str) -> None:
                    send_score(app, producer, self.queue, payload,
                               f"parked batch {batch_id} ({ref}) claimed", time.time())  # fmt: skip
                    if settings.inflight_ledger:  # just sent: not stale for the reconciler
                        pipe = self.client.pipeline(transaction=False)
                        inflight.touch(pipe, batch_id)
                        pipe.execute()

                taken = claim(self.client, self.check, send)
            if taken:
                log.warning(
                    "claimed %d parked message(s) this worker can serve: %s", len(taken),
                    ", ".join(sorted({p.ref for p in taken})),
                )  # fmt: skip
        except Exception as exc:  # Redis or the registry away: the next round tries again
            log.warning("parked-message claim round failed: %s", exc)
