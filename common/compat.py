"""Every Celery, kombu, billiard and Flower internal inferq relies on, in one place.

inferq needs a few things these libraries do not offer as public API: where kombu's Redis
transport keeps queues and unacked messages, a hook where kombu records a delivery, the
default task strategy and the consumer attribute it calls, billiard's pool cache, how the
event loop treats an exception raised by a timer, and Flower's queue list. Each is reached
here and nowhere else, read from the library (kombu's transport settings, never a copied
constant), and pinned by ``tests/unit/test_compat.py`` (plus a real-Redis test for the
delivery hooks). :func:`check` runs when a worker or Flower starts and fails loudly, naming
the internal, when an upgrade moved one, instead of degrading silently in production.
pyproject caps kombu below the next minor release for the same reason.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger("inferq.compat")


class IncompatibleInternals(RuntimeError):
    """A Celery/kombu/billiard/Flower internal inferq needs is missing or changed."""

    def __init__(self, what: str, detail: str) -> None:
        import celery
        import kombu

        super().__init__(
            f"{what}: {detail} (celery {celery.__version__}, kombu {kombu.__version__}); "
            "install the versions pyproject.toml allows"
        )


# ----- kombu's Redis transport: where things live --------------------------------------
@dataclass(frozen=True)
class RedisLayout:
    """Key names of kombu's Redis transport, read from its Channel's settings."""

    unacked: str
    unacked_index: str
    #: A queue with priorities is several lists: ``name`` and ``name<sep><step>``.
    sep: str
    priority_steps: tuple[int, ...]

    def queue_keys(self, queue: str) -> list[str]:
        """The Redis lists of a kombu queue: the queue itself and its priority sub-lists."""
        return [queue if step == 0 else f"{queue}{self.sep}{step}" for step in self.priority_steps]


@cache
def redis_layout() -> RedisLayout:
    """kombu's layout (inferq sets no transport option that changes key names)."""
    from kombu.transport.redis import Channel

    try:
        steps = tuple(int(s) for s in Channel.priority_steps)
        layout = RedisLayout(
            str(Channel.unacked_key), str(Channel.unacked_index_key), str(Channel.sep), steps
        )
    except AttributeError as exc:
        raise IncompatibleInternals("kombu Redis key layout", str(exc)) from None
    if not steps or steps[0] != 0:
        raise IncompatibleInternals("kombu Redis priority steps", f"{steps!r} do not start at 0")
    return layout


# ----- kombu's Redis transport: where a delivery is recorded ---------------------------
# The key (a Redis set) of this worker process's held delivery tags; None = not recording.
_held_key: list[str | None] = [None]
# (message header, hash): each unacked delivery's tag -> that header's value (the batch id).
_batch_index: list[tuple[str, str] | None] = [None]


def record_deliveries_in(key: str | None) -> None:
    """From now on, record each delivery tag kombu marks unacked in the set ``key``.

    The tag is added in the same MULTI as kombu's own unacked entry and removed with it (ack,
    reject, restore), so the set never misses a message this process holds.
    """
    _held_key[0] = key


def install_redis_hooks(batch_header: str | None = None, batch_index: str | None = None) -> None:
    """Patch kombu's Redis QoS and Channel (idempotent). Called when a worker starts.

    With ``batch_header``/``batch_index``, every unacked delivery is also indexed as
    tag -> the message's ``batch_header`` value in the hash ``batch_index``, in the same
    transaction, and dropped from it with kombu's own entry.
    """
    if batch_header and batch_index:
        _batch_index[0] = (batch_header, batch_index)
    from kombu.transport import redis as kredis
    from kombu.transport import virtual
    from kombu.utils.json import dumps

    qos = kredis.QoS
    if getattr(qos.append, "_inferq", False):
        return
    remove = qos._remove_from_indices

    # kombu 5.7 QoS.append, plus one SADD in its transaction.
    def append(self: Any, message: Any, delivery_tag: Any) -> None:
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, raw)
            if _held_key[0]:
                pipe.sadd(_held_key[0], delivery_tag)
            index = _batch_index[0]
            batch = index and (message.headers or {}).get(index[0])
            if index and isinstance(batch, str):
                pipe.hset(index[1], delivery_tag, batch)
            pipe.execute()
            virtual.QoS.append(self, message, delivery_tag)

    def remove_from_indices(self: Any, delivery_tag: Any, pipe: Any = None) -> Any:
        pipe = remove(self, delivery_tag, pipe)
        if _batch_index[0]:
            pipe = pipe.hdel(_batch_index[0][1], delivery_tag)
        return pipe.srem(_held_key[0], delivery_tag) if _held_key[0] else pipe

    append._inferq = True  # type: ignore[attr-defined]
    qos.append = append  # type: ignore[method-assign]
    qos._remove_from_indices = remove_from_indices  # type: ignore[method-assign]
    _patch_channel_close(kredis)


def _patch_channel_close(kredis: Any) -> None:
    """Keep a Redis reconnect from killing the worker (kombu 5.7 / Celery 5.7).

    On a lost connection Celery first ``collect()``s the connection (its transport's client
    becomes None), then ``close()``s it; closing the default channel restores unacked
    messages through that client and raises AttributeError, which Celery treats as
    unrecoverable: the worker exits (1 in 3 Redis-restart test runs). Those messages are
    restored by liveness or the visibility-timeout sweep anyway, so the close is finished
    without them.
    """
    original = kredis.Channel.close

    def close(self: Any) -> None:
        try:
            original(self)
        except AttributeError:
            if getattr(getattr(self, "connection", None), "client", True) is not None:
                raise
            log.warning("broker connection already torn down; its unacked messages return "
                        "when liveness or the visibility timeout restores them")  # fmt: skip
            self.closed = True

    kredis.Channel.close = close


def restore_delivery(channel: Any, tag: str) -> None:
    """Put an unacked delivery back at the head of its queue, to be consumed next.

    kombu's own restore (a WATCH transaction on the unacked hash): a tag already acked or
    restored is a no-op, safe against a concurrent ack. kombu pushes on the left and pops
    on the right, so the head is the right end (``leftmost=False``), as its visibility sweep
    does.
    """
    channel.qos.restore_by_tag(tag, leftmost=False)


# ----- Celery's prefork pool at warm shutdown -------------------------------------------
def install_pool_shutdown_fix() -> None:
    """Make a warm shutdown (SIGTERM) always finish (Celery 5.7 / billiard 4.3; idempotent).

    Celery closes the pool before the consumer's close calls ``AsynPool.flush()``, whose
    write-finishing loop only runs while the pool is in RUN state. So at shutdown it drops
    a job body half-written to a child's pipe (an inferq bulk job is ~280 KB against a
    64 KB pipe), the stop sentinel then lands inside that body, and the child waits for
    bytes that never come while the parent joins it forever (about 1 in 5 SIGTERMs while
    busy). It also forgets jobs a child already received, so their results are never read
    and the child waits 30 s to exit. In CLOSE state this flush finishes started writes and
    keeps written jobs; jobs never written are discarded (their messages are requeued).
    Reproduced and checked with ``scripts/shutdown_loop.py``.
    """
    from billiard.pool import CLOSE
    from celery.concurrency import asynpool

    original = asynpool.AsynPool.flush
    if getattr(original, "_inferq", False):
        return

    def flush(self: Any) -> Any:
        if self._state != CLOSE:  # a lost connection: the pool keeps running
            return original(self)
        self.outbound_buffer.clear()
        for job in tuple(self._cache.values()):
            writer = asynpool._get_job_writer(job)
            if job._write_to is None:  # never written to a child: its message is requeued
                if writer is not None:
                    self._active_writers.discard(writer)
                job.discard()
            elif writer is not None and not job._accepted:  # half written: finish it
                self._flush_writer(job._write_to, writer)
        self._active_writers.clear()
        self._active_writes.clear()
        return None

    flush._inferq = True  # type: ignore[attr-defined]
    flush._inferq_original = original  # type: ignore[attr-defined]
    asynpool.AsynPool.flush = flush


# ----- Celery's consumer, request and pool ---------------------------------------------
def channel_gone(req: Any) -> bool:
    """True when ``req``'s channel was closed (connection lost): it can't be acked any more,
    and kombu has already restored its message to the queue."""
    channel = getattr(req.message, "channel", None)
    if channel is None or getattr(channel, "closed", False):
        return True
    transport = getattr(channel, "connection", None)
    return transport is None or getattr(transport, "client", True) is None


def free_process(pool: Any) -> bool | None:
    """Whether a prefork pool process could start a job now; None for pools we can't see into.

    Jobs handed to the pool and not finished sit in billiard's result cache, so a cache
    smaller than the process count means a process is idle.
    """
    try:
        return len(pool._pool._cache) < pool.num_processes
    except Exception:
        return None


def default_strategy() -> Callable[..., Any]:
    """Celery's default task strategy; it hands each request to ``consumer.on_task_request``
    (the attribute the batching strategy replaces through a view of the consumer)."""
    from celery.worker.strategy import default

    return default


class ConsumerStalled(ConnectionResetError):
    """Raised by a consumer timer so Celery restarts the consumer: the event loop re-raises
    the transport's connection errors from timers (``hub.propagate_errors``), and Celery
    answers them as a lost connection."""


# ----- Flower ---------------------------------------------------------------------------
def flower_handler() -> Any:
    """Flower's BaseHandler, whose ``get_active_queue_names`` lists the queues it measures."""
    from flower.views import BaseHandler

    if not callable(getattr(BaseHandler, "get_active_queue_names", None)):
        raise IncompatibleInternals("Flower", "BaseHandler.get_active_queue_names is gone")
    return BaseHandler


# ----- the start-up check ---------------------------------------------------------------
def check() -> None:
    """Raise IncompatibleInternals naming the first internal that is not as inferq expects."""
    from celery.worker import loops, request
    from kombu.transport import redis as kredis

    redis_layout()
    for name in ("append", "_remove_from_indices", "restore_by_tag", "pipe_or_acquire"):
        if not callable(getattr(kredis.QoS, name, None)):
            raise IncompatibleInternals("kombu Redis QoS", f"QoS.{name} is gone")
    if list(inspect.signature(kredis.QoS.restore_by_tag).parameters)[:4] != [
        "self", "tag", "client", "leftmost",
    ]:  # fmt: skip
        raise IncompatibleInternals("kombu Redis QoS", "restore_by_tag() changed its signature")
    if "on_task_request" not in inspect.getsource(default_strategy()):
        raise IncompatibleInternals("Celery strategy", "default() no longer calls on_task_request")
    if "propagate_errors" not in inspect.getsource(loops.asynloop):
        raise IncompatibleInternals("Celery event loop", "timers' errors no longer propagate")
    if not callable(getattr(request.Request, "acknowledge", None)):
        raise IncompatibleInternals("Celery Request", "acknowledge() is gone")
    from celery.concurrency import asynpool

    for name in ("flush", "_flush_writer"):
        if not hasattr(asynpool.AsynPool, name):
            raise IncompatibleInternals("Celery AsynPool", f"AsynPool.{name} is gone")
    flush = asynpool.AsynPool.flush
    flush_src = inspect.getsource(getattr(flush, "_inferq_original", flush))
    for needle in ("_state == RUN", "_write_to", "_accepted"):
        if needle not in flush_src:
            raise IncompatibleInternals("Celery AsynPool", f"flush() no longer uses {needle}")
    if not callable(getattr(asynpool, "_get_job_writer", None)):
        raise IncompatibleInternals("Celery AsynPool", "_get_job_writer() is gone")
    from billiard.pool import Pool

    if "_cache" not in inspect.getsource(Pool.__init__):
        raise IncompatibleInternals("billiard pool", "Pool no longer keeps a _cache of jobs")
