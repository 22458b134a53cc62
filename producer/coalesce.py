"""Client-side coalescing: merge concurrent small submits of one process into few messages.

Like Kafka's ``linger.ms``: the first piece waiting for a (model, version, queue) opens a
bucket; the bucket is published when ``linger`` has passed since then, or at once when the
next piece would push it over ``batch_size`` rows (a message never exceeds it). Callers
validate and encode their rows in their own thread (bad input raises there, as without
coalescing); this module only merges already-encoded :class:`~common.contract.Batch` pieces
and publishes them from one daemon thread per client, through the client's ``publish`` (the
in-flight ledger and :class:`EnqueueError` work exactly as for a direct publish).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from inferq.common.contract import Batch
from inferq.common.errors import EnqueueError
from inferq.common.rows import merge as rows_merge

log = logging.getLogger("inferq.coalesce")

#: Seconds close() waits for the flush thread to publish what is pending.
CLOSE_TIMEOUT = 30.0

Publish = Callable[[Sequence[Batch], str], list[str]]
_Key = tuple[str, int, str]  # (model, version, queue)


class _Submission:
    """One submit_async call: its future resolves once every piece has an outcome."""

    __slots__ = ("cause", "future", "job_ids", "left", "sent")

    def __init__(self, job_ids: list[str], n_pieces: int) -> None:
        self.future: Future[list[str]] = Future()
        # A future handed out is a promise to send: it cannot be cancelled (RUNNING).
        self.future.set_running_or_notify_cancel()
        self.job_ids = job_ids
        self.left = n_pieces
        self.sent: set[str] = set()
        self.cause: BaseException | None = None

    def outcome(self) -> list[str] | EnqueueError:
        """The job ids, or an EnqueueError naming this caller's own jobs."""
        if self.cause is None:
            return self.job_ids
        sent = [j for j in self.job_ids if j in self.sent]
        error = EnqueueError(len(self.job_ids) - len(sent), self.cause, sent)
        error.__cause__ = self.cause
        return error


@dataclass(slots=True)
class _Piece:
    batch: Batch
    owner: _Submission
    settled: bool = False


@dataclass(slots=True)
class _Bucket:
    queue: str
    deadline: float
    pieces: list[_Piece] = field(default_factory=list)
    rows: int = 0


def merge(pieces: Sequence[Batch]) -> Batch:
    """One message carrying every piece's rows in order (a lone piece is returned as is).

    The one merge of common/rows/merge.py: each row keeps the number its caller knows it
    by, on the wire, so pieces of any callers share a message.
    """
    return rows_merge.merge(pieces)


class Coalescer:
    """Merges pieces per (model, version, queue) and publishes them from one daemon thread."""

    def __init__(self, publish: Publish, batch_size: int, linger_ms: float) -> None:
        """``publish(batches, queue)`` returns the sent job ids or raises EnqueueError."""
        self._publish = publish
        self._batch_size = batch_size
        self._linger = linger_ms / 1000.0
        self._cond = threading.Condition()
        self._open: dict[_Key, _Bucket] = {}
        self._ready: list[_Bucket] = []
        self._thread: threading.Thread | None = None
        self._closing = False

    def put(self, batches: Sequence[Batch], queue: str) -> Future[list[str]]:
        """Queue validated pieces (each at most ``batch_size`` rows) for one caller."""
        owner = _Submission([j for b in batches for j in b.job_ids], len(batches))
        now = time.monotonic()
        with self._cond:
            if self._closing:
                raise RuntimeError("this coalescer is closed")
            for batch in batches:
                self._add(_Piece(batch, owner), queue, now)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="inferq-coalescer", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return owner.future

    def idle(self) -> bool:
        """True when nothing waits to be merged or sent."""
        with self._cond:
            return not (self._open or self._ready)

    def _add(self, piece: _Piece, queue: str, now: float) -> None:
        """Put a piece into its bucket (caller holds the lock)."""
        n = piece.batch.n_rows
        if n >= self._batch_size:
            self._ready.append(_Bucket(queue, now, [piece], n))
            return
        key = (piece.batch.model, piece.batch.version, queue)
        bucket = self._open.get(key)
        if bucket is not None and bucket.rows + n > self._batch_size:
            self._ready.append(self._open.pop(key))
            bucket = None
        if bucket is None:
            bucket = self._open[key] = _Bucket(queue, now + self._linger)
        bucket.pieces.append(piece)
        bucket.rows += n
        if bucket.rows == self._batch_size:
            self._ready.append(self._open.pop(key))

    def _take(self) -> list[_Bucket] | None:
        """Block until buckets are due; None when closed and nothing is left."""
        with self._cond:
            while True:
                now = time.monotonic()
                for key, bucket in list(self._open.items()):
                    if bucket.deadline <= now or self._closing:
                        self._ready.append(self._open.pop(key))
                if self._ready:
                    due, self._ready = self._ready, []
                    return due
                if self._closing:
                    return None
                first = min((b.deadline for b in self._open.values()), default=None)
                self._cond.wait(None if first is None else max(first - now, 0.0))

    def _run(self) -> None:
        """The flush thread: publish due buckets until closed; never dies silently."""
        due: list[_Bucket] = []
        try:
            while (taken := self._take()) is not None:
                due = taken
                self._send(due)
                due = []
        except BaseException as exc:
            log.exception("coalescer flush thread failed; failing every pending submit")
            with self._cond:
                due += self._ready + list(self._open.values())
                self._ready, self._open = [], {}
            self._settle([(p, exc) for b in due for p in b.pieces])

    def _send(self, buckets: list[_Bucket]) -> None:
        """Publish due buckets, one publish call (one connection) per queue."""
        by_queue: dict[str, list[_Bucket]] = {}
        for bucket in buckets:
            by_queue.setdefault(bucket.queue, []).append(bucket)
        for queue, group in by_queue.items():
            messages = [merge([p.batch for p in b.pieces]) for b in group]
            cause: BaseException | None = None
            sent: set[str] = set()
            try:
                self._publish(messages, queue)
            except EnqueueError as exc:
                cause, sent = exc.__cause__ or exc, set(exc.enqueued_job_ids)
            except Exception as exc:  # not sent: each caller still gets an EnqueueError
                cause = exc
            outcomes = []
            for bucket, message in zip(group, messages, strict=True):
                # A message is all or nothing: sent iff its first job id got through.
                failed = None if cause is None or message.job_ids[0] in sent else cause
                outcomes += [(p, failed) for p in bucket.pieces]
            self._settle(outcomes)

    def _settle(self, outcomes: list[tuple[_Piece, BaseException | None]]) -> None:
        """Record piece outcomes; resolve the futures of completed submissions."""
        done: list[_Submission] = []
        with self._cond:
            for piece, cause in outcomes:
                if piece.settled:
                    continue  # the failure path may see pieces whose outcome is known
                piece.settled = True
                owner = piece.owner
                if cause is None:
                    owner.sent.update(piece.batch.job_ids)
                elif owner.cause is None:
                    owner.cause = cause
                owner.left -= 1
                if owner.left == 0:
                    done.append(owner)
        # Outside the lock: a done-callback may submit again.
        for owner in done:
            result = owner.outcome()
            if isinstance(result, EnqueueError):
                owner.future.set_exception(result)
            else:
                owner.future.set_result(result)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Publish everything pending, then stop the thread (waits at most ``timeout`` s)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                # Stuck in a publish: it still settles everything it holds when that returns.
                log.warning("coalescer still publishing after %.0fs; not waiting", timeout)
                return
        with self._cond:  # the thread has gone: whatever it did not take is failed, not lost
            left = self._ready + list(self._open.values())
            self._ready, self._open = [], {}
        if left:
            stopped = RuntimeError("the client was closed before these jobs were published")
            self._settle([(p, stopped) for b in left for p in b.pieces])
