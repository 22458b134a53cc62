"""The in-flight ledger: sent batches not answered yet, so a message Redis lost is sent again.

kombu's Redis transport pops a message (BRPOP) before it records it as unacked; a worker
main process SIGKILLed in between takes the message with it, and nothing in Redis knows it
existed. So the producer records every batch it sends (queue + payload) in a Redis hash
before publishing, the worker removes the record once the batch is answered (its rows
committed), and a reconciler in every worker sends again what is still recorded long after
it should have been answered and is provably not waiting in its queue. Writes are
idempotent per batch id, so a needless re-send costs a little work and never a second row.

Keys (in the broker's Redis db): ``inferq:inflight`` (sorted set: batch id -> time the batch
was last sent or started), ``inferq:inflight:queue`` (hash: batch id -> queue, so deciding
what is stale never reads a payload) and ``inferq:inflight:body`` (hash: batch id -> msgpack
record).
Only Redis brokers have it; the embedded filesystem broker has no such window to cover.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from inferq.common import compat

log = logging.getLogger("inferq.inflight")

INDEX = "inferq:inflight"
BODIES = "inferq:inflight:body"
QUEUES = "inferq:inflight:queue"
LOCK = "inferq:inflight:reconcile-lock"
SENT_HEADER = "inferq_sent"  # message header: epoch seconds when this copy was published
BATCH_HEADER = "inferq_batch"  # message header: the batch id (kept by Celery on retries)
#: Hash: kombu delivery tag -> batch id, for every unacked delivery (written by the workers'
#: kombu hook with kombu's own unacked entry, common/compat.py): which batches live workers
#: hold, so a batch held by nobody and queued nowhere is known lost in seconds.
UNACKED_BATCHES = "inferq:inflight:unacked"


@dataclass(frozen=True, slots=True)
class Record:
    """What is needed to send a batch again."""

    batch_id: str
    queue: str
    payload: dict[str, Any]
    describe: str


def pack(record: Record) -> bytes:
    """The stored form of a record (msgpack; float rows stay raw bytes)."""
    return msgpack.packb(
        {"q": record.queue, "p": record.payload, "d": record.describe}, use_bin_type=True
    )


def unpack(batch_id: str, raw: bytes) -> Record:
    """Inverse of :func:`pack`."""
    data = msgpack.unpackb(raw, raw=False)
    return Record(batch_id, data["q"], data["p"], data["d"])


def record(client: Any, records: Sequence[Record], sent_at: float) -> None:
    """Producer: note batches about to be sent (one round trip); raises if Redis refuses.

    ``sent_at`` must be the time the messages carry in their ``inferq_sent`` header: a
    record is only taken for lost when it is older than every message still queued.
    """
    if not records:
        return
    pipe = client.pipeline(transaction=False)
    pipe.hset(BODIES, mapping={r.batch_id: pack(r) for r in records})
    pipe.hset(QUEUES, mapping={r.batch_id: r.queue for r in records})
    pipe.zadd(INDEX, {r.batch_id: send_time(sent_at, i) for i, r in enumerate(records)})
    pipe.execute()


def send_time(sent_at: float, index: int) -> float:
    """Distinct, ordered send times for the messages of one publish (1 µs apart)."""
    return sent_at + index * 1e-6


def drop(pipe: Any, batch_ids: Sequence[str]) -> None:
    """Queue the removal of records on ``pipe`` (the batches were answered)."""
    if batch_ids:
        pipe.zrem(INDEX, *batch_ids)
        pipe.hdel(QUEUES, *batch_ids)
        pipe.hdel(BODIES, *batch_ids)


def forget(client: Any, batch_ids: Iterable[str]) -> None:
    """Drop records (the batch was answered, or its enqueue was reported as failed)."""
    ids = list(batch_ids)
    if ids:
        pipe = client.pipeline(transaction=False)
        drop(pipe, ids)
        pipe.execute()


def touch(pipe: Any, batch_id: str) -> None:
    """Worker: the batch was started or requeued now (only if it is recorded)."""
    pipe.zadd(INDEX, {batch_id: time.time()}, xx=True)


# The send time of the oldest message across a queue's priority sub-lists, read inside Redis
# (a bulk message's body can be MBs): 'empty', 'unknown' (a message without the header), or
# the time. The body is base64 inside kombu's JSON envelope, so only the header can match.
_OLDEST_LUA = f"""
local oldest = nil
for i = 1, #KEYS do
  local m = redis.call('LINDEX', KEYS[i], -1)
  if m then
    local t = string.match(m, '"{SENT_HEADER}": *([0-9.eE+-]+)')
    if not t then return 'unknown' end
    if oldest == nil or tonumber(t) < tonumber(oldest) then oldest = t end
  end
end
return oldest or 'empty'
"""


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of a kombu queue: the queue itself and its priority sub-lists."""
    return compat.redis_layout().queue_keys(queue)


def waiting(client: Any, queues: Sequence[str]) -> int:
    """Messages waiting in ``queues`` (priority sub-lists included), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for key in (k for q in queues for k in queue_keys(q)):
        pipe.llen(key)
    return sum(pipe.execute())


def oldest_waiting(client: Any, queue: str) -> float | None:
    """Send time of the oldest message waiting in ``queue``; +inf if empty; None if unknown.

    kombu LPUSHes and BRPOPs, so the oldest message of each priority sub-list is its last
    element. A message without the inferq header makes the answer unknown.
    """
    keys = queue_keys(queue)
    found = client.eval(_OLDEST_LUA, len(keys), *keys)
    found = found.decode() if isinstance(found, bytes) else str(found)
    if found == "empty":
        return float("inf")
    return None if found == "unknown" else float(found)


def held_batches(client: Any) -> set[str]:
    """Batch ids some worker holds unacked right now (see UNACKED_BATCHES)."""
    return {_text(b) for b in client.hvals(UNACKED_BATCHES)}


def stale(
    client: Any, older_than: float, limit: int = 500, skip: frozenset[str] | set[str] = frozenset()
) -> list[Record]:
    """Records last touched before ``older_than`` that are not waiting in their queue (nor
    in ``skip``).

    Only the queue names of the candidates are read to decide; payloads (a bulk chunk's can
    be MBs) are fetched for the records that are to be sent again.
    """
    ids = client.zrangebyscore(INDEX, "-inf", older_than, start=0, num=limit, withscores=True)
    if not ids:
        return []
    queues = client.hmget(QUEUES, [bid for bid, _ in ids])
    due: list[str] = []
    orphans: list[str] = []
    horizon: dict[str, float | None] = {}
    for (bid, touched), raw_queue in zip(ids, queues, strict=True):
        batch_id = _text(bid)
        if batch_id in skip:
            continue
        if raw_queue is None:  # answered between the two reads, or never fully recorded
            orphans.append(batch_id)
            continue
        queue = _text(raw_queue)
        if queue not in horizon:
            horizon[queue] = oldest_waiting(client, queue)
        oldest = horizon[queue]
        # Sent before everything still queued, so it is not queued: lost, or in a live
        # worker's hands for longer than the stale age (then a re-send is a harmless no-op).
        if oldest is not None and touched < oldest:
            due.append(batch_id)
    if orphans:
        client.zrem(INDEX, *orphans)
    if not due:
        return []
    bodies = client.hmget(BODIES, due)
    return [unpack(b, raw) for b, raw in zip(due, bodies, strict=True) if raw is not None]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def claim_round(client: Any, ttl: int) -> bool:
    """One reconciler per round across all workers (a short Redis lock)."""
    return bool(client.set(LOCK, "1", nx=True, ex=max(1, ttl)))
