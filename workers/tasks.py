"""The Celery task: decode -> validate + predict (pure) -> bulk write -> ack. Kept thin."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
from celery import shared_task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from inferq.common import contract
from inferq.common.errors import ContractError, ModelRetired, ModelUnavailable, TransientError
from inferq.workers import monitor, runtime, shadow
from inferq.workers.inference import ScoredBatch, error_batch, score_batch
from inferq.workers.results import write_dead_letter, write_results
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

log = logging.getLogger("inferq.worker")


def _transient(exc: BaseException) -> bool:
    """Connection loss, shutdown, deadlock, cancelled query: worth retrying."""
    import psycopg

    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # NOTE: COPY runs on the raw psycopg cursor, so its errors arrive unwrapped.
    return isinstance(getattr(exc, "orig", exc), psycopg.OperationalError)


def _write(
    scored: ScoredBatch, worker: str, received_at: float, decode_ms: float, deadline: float
) -> Any:
    """Write; connection-type failures are retried in-task with backoff until `deadline`.

    `deadline` (time.monotonic) ends the retries before the soft time limit: past it the
    caller requeues the message instead, so an outage never turns into a killed process
    (which the delivery cap would count) nor into a dropped message.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_before_delay(max(0.0, deadline - time.monotonic())),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            try:
                return write_results(
                    runtime.get().engine,
                    scored,
                    worker,
                    received_at=received_at,
                    decode_ms=decode_ms,
                )
            except Exception as exc:
                if _transient(exc):
                    raise TransientError(f"results database unavailable: {exc}") from exc
                raise
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def score_message(batch: contract.Batch, soft_limit: int) -> ScoredBatch:
    """Score a decoded batch; what goes wrong with the model for these rows becomes error rows.

    Raises ModelUnavailable when this worker cannot load the model (its own environment):
    the caller requeues the message, since the rows are not the problem.
    """
    try:
        loaded = runtime.get().get_model(batch.model, batch.version)
    except ModelUnavailable:
        raise
    except ModelRetired as exc:
        return error_batch(batch, str(exc), code="retired")
    except Exception as exc:  # unknown model/version: no worker could ever serve it
        if _transient(exc):
            raise TransientError(f"registry unavailable: {exc}") from exc
        log.error("batch %s: cannot serve model: %s", batch.batch_id, exc)
        return error_batch(
            batch, f"model {batch.model}@{batch.version} unavailable: {exc}", code="unknown_model"
        )
    try:
        scored = score_batch(loaded.scorer(), loaded.info, batch, reraise=(SoftTimeLimitExceeded,))
        scored.runtime = loaded.runtime
        monitor.attach(scored, loaded)
        return shadow.attach(scored, batch, runtime.get())
    except SoftTimeLimitExceeded:
        # The hard limit kills the process shortly after: answer the jobs while there is time.
        log.error("batch %s: soft time limit reached while scoring", batch.batch_id)
        return error_batch(
            batch,
            f"scoring took longer than the time limit ({soft_limit} s); send smaller "
            "batches or raise INFERQ_TASK_TIME_LIMIT",
            code="time_limit",
        )
    except Exception as exc:  # a bug on our side: still answer every job
        log.exception("batch %s: unexpected error while scoring", batch.batch_id)
        return error_batch(
            batch, f"internal error while scoring: {type(exc).__name__}: {exc}", code="internal"
        )


def _malformed(payload: dict[str, Any], exc: ContractError) -> ScoredBatch:
    """Answer a message that breaks the contract with error rows (if its job ids are readable)."""
    job_ids = contract.decode_job_ids(payload)  # raises ContractError if even these are gone
    batch = contract.Batch(
        model=str(payload.get("model") or "unknown")[:128],
        version=payload["version"] if isinstance(payload.get("version"), int) else 0,
        job_ids=job_ids,
        x=np.zeros((len(job_ids), 0)),
        batch_id=str(payload.get("batch_id") or contract.new_id()),
    )
    # The day its rows are written under must not change if it is delivered again.
    if isinstance(payload.get("submitted_at"), int | float):
        stamped = float(payload["submitted_at"])
        batch.submitted_at = min(max(stamped, contract.MIN_TIME), contract.MAX_TIME)
    return error_batch(batch, f"message rejected: {exc}", code="message_rejected")


@shared_task(
    bind=True,
    name=contract.SCORE_BATCH,
    max_retries=None,
    # Online messages go through the dynamic batcher (workers/batching.py).
    Strategy="inferq.workers.batching:strategy",
    Request="inferq.workers.requests:SafeRequest",
)
def score_batch_task(self: Any, **payload: Any) -> dict[str, Any]:
    """Score one batch message and commit its result rows; acked only after the commit."""
    rt = runtime.get()
    raw_id = payload.get("batch_id")
    batch_id = raw_id if isinstance(raw_id, str) else None
    deliveries = rt.deliveries.start(batch_id) if batch_id else 0
    answered = False
    try:
        if deliveries > rt.settings.max_deliveries:
            summary = _dead_letter(self, payload, deliveries)
        else:
            summary = _run(self, payload)
        answered = True
        return summary
    except Retry:
        raise
    except Exception as exc:
        # Last line of defence: a database blip anywhere (dead letter, unreadable message)
        # requeues the message; only a finished answer may ack it.
        if isinstance(exc, TransientError) or _transient(exc):
            log.error("batch %s: %s; requeued", batch_id, exc)
            raise _requeue(self, exc) from exc
        raise
    finally:
        # Reached unless the process died: only deliveries that died keep counting.
        if batch_id:
            rt.deliveries.finish(batch_id, answered)


def _dead_letter(self: Any, payload: dict[str, Any], deliveries: int) -> dict[str, Any]:
    """Take a message out of circulation: dead_letters row + an error row for every job."""
    reason = (
        f"delivered {deliveries} times without finishing: its worker process died each time "
        "(crash, out of memory, or the hard time limit)"
    )
    log.error("batch %s dead-lettered: %s", payload.get("batch_id"), reason)
    engine = runtime.get().engine
    write_dead_letter(engine, payload, deliveries, reason)
    try:
        batch = contract.decode_batch(payload)
        scored = error_batch(
            batch, f"dead-lettered: {reason} (see table dead_letters)", code="dead_lettered"
        )
    except ContractError as exc:
        scored = _malformed(payload, exc)
    worker = worker_name(self.request.hostname)
    report = _write(scored, worker, time.time(), 0.0, time.monotonic() + 10)
    return summarize(scored, report, dead_lettered=True)


def _run(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
    received_at, started = time.time(), time.monotonic()
    settings = runtime.get().settings
    try:
        batch = contract.decode_batch(payload)
        decode_ms = (time.monotonic() - started) * 1000
        scored = score_message(batch, settings.soft_time_limit)
    except ContractError as exc:
        log.error("malformed message: %s", exc)
        try:
            scored, decode_ms = _malformed(payload, exc), 0.0
        except ContractError:
            return _unanswerable(payload, exc)
    except TransientError as exc:
        raise _requeue(self, exc) from exc
    except ModelUnavailable as exc:
        return _hold(self, payload, exc)
    worker = worker_name(self.request.hostname)
    soft = settings.soft_time_limit
    deadline = started + soft - min(5.0, soft * 0.2)
    try:
        report = _write(scored, worker, received_at, decode_ms, deadline)
    except (TransientError, SoftTimeLimitExceeded) as exc:
        # No retry budget: a batch waits (requeued with backoff) as long as the database
        # is away.
        log.error("batch %s: %s; requeued", scored.batch.batch_id, exc)
        raise _requeue(self, exc) from exc
    except Exception as exc:  # not a connectivity problem: a few retries, then dead letter
        return _unwritable(self, payload, scored, worker, exc)
    summary = summarize(scored, report)
    log.info("batch %s: %s", scored.batch.batch_id, summary)
    return summary


def _unwritable(
    self: Any, payload: dict[str, Any], scored: ScoredBatch, worker: str, exc: Exception
) -> dict[str, Any]:
    """Results that fail to write for a non-transient reason: retry, then dead-letter.

    The message is acked only once something durable holds it: its result rows, or a
    `dead_letters` row with the payload (rows recoverable). If even that fails, it is
    requeued again rather than dropped.
    """
    settings = runtime.get().settings
    attempts = self.request.retries + 1
    problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if attempts < settings.max_deliveries:
        log.error("batch %s: results not written (%s); retrying", scored.batch.batch_id, problem)
        raise _requeue(self, exc) from exc
    reason = f"results could not be written after {attempts} attempts: {problem}"
    engine = runtime.get().engine
    try:
        write_dead_letter(engine, payload, attempts, reason)
    except Exception as dl_exc:
        log.error("batch %s: dead letter failed too (%s); requeued", scored.batch.batch_id, dl_exc)
        raise _requeue(self, exc) from exc
    log.error("batch %s dead-lettered: %s", scored.batch.batch_id, reason)
    answer = error_batch(
        scored.batch, f"dead-lettered: {reason} (see table dead_letters)", code="dead_lettered"
    )
    try:  # the same cause may refuse these too; the dead letter already holds the rows
        report = write_results(engine, answer, worker, received_at=time.time(), decode_ms=0.0)
    except Exception as write_exc:
        log.error("batch %s: error rows not written either: %s", scored.batch.batch_id, write_exc)
        return {**summarize(answer, None), "dead_lettered": True}
    return summarize(answer, report, dead_lettered=True)


def _unanswerable(payload: dict[str, Any], exc: ContractError) -> dict[str, Any]:
    """A message whose job ids cannot be read: nothing to answer, so keep it as a dead letter."""
    reason = f"message rejected, job ids unreadable: {exc}"
    write_dead_letter(runtime.get().engine, payload, 1, reason)
    log.error("message dead-lettered: %s", reason)
    return {"rows": 0, "dead_lettered": True, "reason": reason}


def summarize(scored: ScoredBatch, report: Any, **extra: Any) -> dict[str, Any]:
    """The task result Flower shows: rows, ok/error counts, never feature values."""
    return {
        "model": f"{scored.model_name}@{scored.model_version}",
        "rows": scored.batch.n_rows,
        "ok": scored.n_ok,
        "errors": scored.n_error,
        "written": report.n_written if report is not None else 0,
        "duplicate": report.duplicate_batch if report is not None else False,
        **({"shadow_rows": scored.shadow.batch.n_rows} if scored.shadow is not None else {}),
        **extra,
    }


def worker_name(hostname: str | None) -> str:
    """Lineage for `predictions.worker`: node name and the pid of the process that scored."""
    return f"{hostname or 'local'}:{os.getpid()}"


def _requeue(self: Any, exc: BaseException) -> BaseException:
    """Celery's retry: a copy of the message is published (with backoff) before this one is
    acked, so it survives even if this process dies right after. Raise what it returns."""
    return self.retry(exc=exc, countdown=_backoff(self.request.retries))


def _hold(self: Any, payload: dict[str, Any], problem: ModelUnavailable) -> dict[str, Any]:
    """A message this worker cannot serve: park it for a worker that can (workers/parking.py),
    never answer it. Without Redis to park in (the embedded broker), requeue it with backoff."""
    from inferq.workers.parking import park_message

    batch_id = payload.get("batch_id")
    try:
        if park_message(runtime.get(), self.request.hostname, payload, problem):
            log.warning("batch %s parked until a worker can serve it: %s", batch_id, problem)
            return {"parked": True, "model": problem.ref, "reason": problem.reason}
    except Exception as exc:  # Redis refused: keep it in circulation instead
        log.error("batch %s could not be parked (%s); requeued", batch_id, exc)
    log.warning("batch %s requeued: %s", batch_id, problem)
    raise self.retry(exc=problem, countdown=_backoff(self.request.retries))


def _backoff(retries: int) -> float:
    return float(min(60, 2 ** min(retries, 6)))
