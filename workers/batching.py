"""Dynamic batching of online messages across producers: many messages, one model call.

Upstream services send online jobs a row or a few at a time; scored alone, most of each
message's time is per-call overhead (a 100-tree forest: ~10 ms for 1 row, ~20 µs/row at
1000). So the worker's main process holds online messages for the same model version for
``max_delay_ms`` (longer while every pool process is busy, up to 25x the delay, since the
group could not start anyway), or until ``max_batch_size`` rows, and hands them to one
prefork child as a group: one model call, one transaction with one ledger row per message.

Why always wait the delay, even when a process is free: with prefetch 1 the consumer only
fetches another message once a process has taken the last one, so a worker that dispatched
at once whenever a process was free would never see two messages together; waiting is what
lets the window (and the group) grow. Other requests that arrive while online messages wait
are dispatched after them, so the online queue keeps its priority over bulk chunks.

Why not celery-batches: it pins Celery < 5.7, acks a batch even when it fails (the messages
are gone) and its buffered tasks never show in Flower. Here:

- Every message is a normal Celery request: the default strategy builds it and sends
  `task-received`; the group's acceptance sends `task-started` for each, and each message is
  acked, with its own `task-succeeded` (result: its rows and errors), only after the group's
  transaction committed. Flower sees every message.
- Anything that goes wrong with a group — a message that doesn't decode, a database error,
  the child dying (SIGKILL, OOM, time limit) — sends the affected messages down the normal
  one-message path, with its retries, delivery cap and dead letters. Nothing is acked
  without its rows; a worker killed mid-group leaves every message unacked in Redis.
- Bulk messages, retries and messages already big enough skip the batcher.
- Buffered messages raise the consumer's prefetch window (as Celery does for ETA tasks),
  bounded by ``max_batch_size`` messages, so buffering never stalls consumption.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.utils.saferepr import saferepr
from inferq.common import compat, contract
from inferq.common.errors import ContractError
from inferq.common.rows.merge import layout
from inferq.common.settings import Settings
from inferq.workers import runtime
from inferq.workers.merge import merge_batches, split_scored
from inferq.workers.results import write_group
from inferq.workers.tasks import score_message, summarize, worker_name

log = logging.getLogger("inferq.worker")


# ----- in the prefork child ---------------------------------------------------------------
def run_group(hostname: str, payloads: list[dict[str, Any]]) -> list[Any]:
    """Score several messages of one model version with one call; per message, its summary
    (committed) or None (send it down the one-message path). Runs in a pool child."""
    rt = runtime.get()
    received_at, started = time.time(), time.perf_counter()
    out: list[Any] = [None] * len(payloads)
    ids = {i: p["batch_id"] for i, p in enumerate(payloads) if isinstance(p.get("batch_id"), str)}
    starts = rt.deliveries.start_many(list(ids.values()))
    # A message past the delivery cap is dead-lettered by the one-message path.
    fresh = [i for i, n in zip(ids, starts, strict=True) if n <= rt.settings.max_deliveries]
    try:
        pieces: list[contract.Batch] = []
        where: list[int] = []
        for i in fresh:
            try:
                batch = contract.decode_batch(payloads[i])
            except ContractError:
                continue  # the one-message path answers (or dead-letters) it
            if pieces and layout(batch) != layout(pieces[0]):
                continue  # other columns are answered per message, with their own row numbers
            pieces.append(batch)
            where.append(i)
        if not pieces:
            return out
        merged = merge_batches(pieces)
        decode_ms = (time.perf_counter() - started) * 1000
        scored = score_message(merged, rt.settings.soft_time_limit)
        parts = split_scored(scored, pieces)
        worker = worker_name(hostname)
        try:
            reports = write_group(rt.engine, parts, worker, received_at=received_at,
                                  decode_ms=decode_ms)  # fmt: skip
        except Exception as exc:  # retried, requeued or dead-lettered one by one
            log.warning("group of %d messages not written (%s); one by one", len(parts), exc)
            return out
        for i, part, report in zip(where, parts, reports, strict=True):
            out[i] = summarize(part, report, merged=len(parts))
            log.info("batch %s: %s", part.batch.batch_id, out[i])  # as the one-message path
        log.info(
            "group of %d messages, %d rows, %s@%d: one model call, %.1f ms",
            len(parts), merged.n_rows, merged.model, merged.version, scored.predict_ms,
        )  # fmt: skip
        return out
    except Exception as exc:  # registry down, a bug: the one-message path decides
        log.warning("group of %d messages failed (%s); one by one", len(payloads), exc)
        return out
    finally:
        rt.deliveries.finish_many({ids[i]: out[i] is not None for i in fresh})


# ----- in the worker's main process -------------------------------------------------------
@dataclass
class _Pending:
    requests: list[Any] = field(default_factory=list)
    rows: int = 0
    credits: int = 0  # prefetch increments to give back
    qos: Any = None  # ...to this QoS object (a reconnect makes a new one)
    timer: Any = None
    since: float = field(default_factory=time.monotonic)


#: While every pool process is busy, a due group keeps growing, checked this often, for up to
#: MAX_HOLD_FACTOR x its delay (at least MIN_HOLD s): dispatched then, it would only wait in
#: the pool's queue, where no later message can join it.
BUSY_POLL = 0.001
#: How often held bulk requests are checked for a free process.
RELEASE_POLL = 0.005
MAX_HOLD_FACTOR = 25
MIN_HOLD = 0.05


class Batcher:
    """Holds online requests per model version and dispatches them as groups."""

    def __init__(self, consumer: Any, settings: Settings, process: Callable[[Any], Any]):
        self.consumer = consumer
        self.settings = settings
        self.process = process  # Celery's own one-request path
        self.pending: dict[tuple[str, int], _Pending] = {}
        # Other requests that arrived while online messages wait: they go to the pool after
        # those, so a bulk chunk fetched thanks to a held message's prefetch credit never
        # jumps ahead of the online group (the online queue keeps its priority).
        self.deferred: deque[Any] = deque()
        self.limits: dict[str, tuple[int, float]] = {}
        self.release_timer: Any = None
        self.credits = 0  # prefetch increments outstanding, bounded
        self.max_credits = max(1, settings.online_max_batch_size)

    def _spec(self, req: Any) -> tuple[tuple[str, int], int, int, float] | None:
        """(key, rows, max rows, delay s) when ``req`` may be merged, else None."""
        if (req.delivery_info or {}).get("routing_key") != self.settings.online_queue:
            return None
        if req.request_dict.get("retries"):
            return None  # it failed before: give it the careful path
        kw = req.kwargs if isinstance(req.kwargs, dict) else {}
        if kw.get("rescore"):
            return None  # replaces error rows: written on its own
        model, version, job_ids = kw.get("model"), kw.get("version"), kw.get("job_ids")
        if not (isinstance(model, str) and isinstance(version, int) and isinstance(job_ids, list)):
            return None
        if model not in self.limits:  # parsed once per model, not per message
            self.limits[model] = self.settings.batching_for(model)
        size, delay = self.limits[model]
        if size <= 1 or len(job_ids) >= size:
            return None
        return (model, version), len(job_ids), size, delay

    def handle(self, req: Any) -> None:
        """Celery's on_task_request for this task: buffer online messages, pass the rest."""
        spec = self._spec(req)
        if spec is None:
            if self.pending or self.deferred or not self._free_process():
                self._defer(req)
            else:
                self.process(req)
            return
        key, rows, size, delay = spec
        pend = self.pending.get(key)
        if pend is None:
            pend = self.pending[key] = _Pending()
            pend.timer = self.consumer.timer.call_after(delay, self._due, (key, delay), priority=5)
        pend.requests.append(req)
        pend.rows += rows
        if self.credits < self.max_credits and not self.deferred:
            # NOTE: like Celery's ETA tasks: a held message must not use up the prefetch
            # window, or the batcher would wait for messages the consumer cannot fetch.
            pend.qos = self.consumer.qos
            pend.qos.increment_eventually()
            self.credits += 1
            pend.credits += 1
        if pend.rows >= size:
            self.flush(key)

    def _free_process(self) -> bool:
        """True when a pool process could start a job now (unknown pools: always)."""
        return compat.free_process(self.consumer.pool) is not False

    def _due(self, key: tuple[str, int], delay: float) -> None:
        """The first message's delay is over: dispatch, unless every process is busy."""
        pend = self.pending.get(key)
        if pend is None:
            return
        held = time.monotonic() - pend.since
        if not self._free_process() and held < max(MIN_HOLD, MAX_HOLD_FACTOR * delay):
            pend.timer = self.consumer.timer.call_after(BUSY_POLL, self._due, (key, delay),
                                                        priority=5)  # fmt: skip
            return
        self.flush(key)

    def flush(self, key: tuple[str, int]) -> None:
        """Dispatch what waits for ``key``: alone if it's one message, else as a group."""
        pend = self.pending.pop(key, None)
        if pend is None:
            return
        if pend.timer is not None:
            pend.timer.cancel()
        if len(pend.requests) == 1:
            self._give_back(pend)
            self.process(pend.requests[0])
        else:
            self._dispatch(pend)
        self._release()

    def _defer(self, req: Any) -> None:
        """Hold a bulk (or retried) request until a process is free and no online waits.

        NOTE: dispatched into a busy pool it would wait in the pool's own FIFO, ahead of
        any online group that arrives after it; held here, online groups go first.
        """
        self.deferred.append(req)
        if self.release_timer is None:
            self.release_timer = self.consumer.timer.call_repeatedly(
                RELEASE_POLL, self._release, (), priority=5
            )

    def _release(self) -> None:
        """Dispatch held requests, oldest first, while processes are free and no online waits."""
        while self.deferred and not self.pending and self._free_process():
            self.process(self.deferred.popleft())
        if not self.deferred and self.release_timer is not None:
            self.release_timer.cancel()
            self.release_timer = None

    def _dispatch(self, pend: _Pending) -> None:
        """One pool job for a group; its callbacks settle each message."""
        reqs = pend.requests
        time_limit, soft_limit = reqs[0].time_limits
        task = reqs[0].task
        self.consumer.pool.apply_async(
            run_group,
            args=(self.consumer.hostname, [r.kwargs for r in reqs]),
            accept_callback=lambda pid, accepted: [r.on_accepted(pid, accepted) for r in reqs],
            callback=lambda outcome: self._done(reqs, pend, outcome),
            error_callback=lambda exc: self._failed(reqs, pend, exc),
            soft_timeout=soft_limit or task.soft_time_limit,
            timeout=time_limit or task.time_limit,
        )

    def _done(self, reqs: list[Any], pend: _Pending, outcome: Any) -> None:
        self._give_back(pend)
        if not isinstance(outcome, list) or len(outcome) != len(reqs):
            outcome = [None] * len(reqs)
        for req, summary in zip(reqs, outcome, strict=True):
            if compat.channel_gone(req):
                continue  # its connection was lost: kombu already put the message back
            if summary is None:
                self.process(req)  # the one-message path: retries, delivery cap, dead letters
                continue
            took = time.time() - req.time_start if req.time_start else 0.0
            req.on_success((False, saferepr(summary), took))  # acks, then task-succeeded

    def _failed(self, reqs: list[Any], pend: _Pending, exc: Any) -> None:
        """The group's child died or timed out: nothing was acked; take them one by one."""
        self._give_back(pend)
        why = exc.exception if isinstance(exc, ExceptionInfo) else exc
        log.warning("group of %d messages lost its process (%r); one by one", len(reqs), why)
        for req in reqs:
            if not compat.channel_gone(req):
                self.process(req)

    def _give_back(self, pend: _Pending) -> None:
        if pend.qos is not None and pend.qos is self.consumer.qos:  # else: a new connection's
            for _ in range(pend.credits):
                pend.qos.decrement_eventually()
        self.credits -= pend.credits
        pend.credits = 0


class _ConsumerView:
    """The consumer as the default strategy sees it, with our request handler."""

    def __init__(self, consumer: Any, on_task_request: Callable[[Any], Any]) -> None:
        self._consumer = consumer
        self.on_task_request = on_task_request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Task.Strategy of the score task: Celery's default, with online messages batched."""
    settings: Settings = app.inferq_settings
    sizes = [
        settings.online_max_batch_size,
        *(s for s, _ in settings.batching_overrides().values()),
    ]
    if max(sizes) <= 1:
        return compat.default_strategy()(task, app, consumer, **kwargs)
    batcher = Batcher(consumer, settings, consumer.on_task_request)
    return compat.default_strategy()(task, app, _ConsumerView(consumer, batcher.handle), **kwargs)
