"""Shadow scoring: a second version scores the same decoded rows in the same worker call.

Its outputs go to `shadow_predictions`, never to `predictions`, and nothing it does can
change, fail or (beyond a bound) delay a primary result:

- **Time.** A shadow may add ``INFERQ_SHADOW_MAX_MS`` (default 50 ms) plus the primary's own
  predict time to a batch. From its last calls the worker knows its cost per row, and scores
  as many of the batch's rows as fit (the first call, with no estimate yet, scores at most
  ``PROBE_ROWS`` rows). A shadow that hits the soft time limit is abandoned; the primary
  rows are still written.
- **Errors.** Any exception in the shadow is logged and dropped.
- **Writes.** Its rows are COPYed inside a savepoint of the primary's transaction: exactly
  once with the primary's rows (a redelivered message writes neither again), and a failing
  shadow write rolls back to the savepoint only.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from inferq.common.contract import Batch
from inferq.workers import copybin
from inferq.workers.inference import ScoredBatch, score_batch
from sqlalchemy import Connection

log = logging.getLogger("inferq.worker")

#: Rows the first call of a shadow scores (no cost estimate yet).
PROBE_ROWS = 32
#: (name, version) -> estimated ms per row, in this process.
_cost: dict[tuple[str, int], float] = {}

SHADOW_COLUMNS = (
    "job_id", "model_name", "model_version", "primary_version", "label", "score",
    "probabilities", "error", "scored_at", "worker", "batch_id", "day",
)  # fmt: skip


def head(batch: Batch, k: int) -> Batch:
    """The first ``k`` rows of ``batch`` as a batch of their own (same ids and row numbers)."""
    if k >= batch.n_rows:
        return batch
    return Batch(
        model=batch.model,
        version=batch.version,
        job_ids=batch.job_ids[:k],
        x=batch.x[:k],
        keys=None if batch.keys is None else batch.keys[:k],
        row_errors={i: e for i, e in batch.row_errors.items() if i < k},
        batch_id=batch.batch_id,
        run_id=batch.run_id,
        submitted_at=batch.submitted_at,
        row_offset=batch.row_offset,
        row_numbers=None if batch.row_numbers is None else batch.row_numbers[:k],
        text=None if batch.text is None else [col[:k] for col in batch.text],
        text_positions=batch.text_positions,
        day=batch.day,
        ids_given=batch.ids_given,
        width=batch.width,
    )


#: (name, version) -> rows of its last call that stayed within the budget, in this process.
_fitted: dict[tuple[str, int], int] = {}


def rows_within(key: tuple[str, int], n: int, budget_ms: float) -> int:
    """How many of ``n`` rows the shadow ``key`` can score within ``budget_ms``.

    The estimate (time per row of its last calls) includes each call's fixed cost, so it is
    pessimistic for small calls; a shadow whose last call fit its budget may also try twice
    as many rows as then, which reaches a fast shadow's full batch in a few calls.
    """
    per_row = _cost.get(key)
    if per_row is None:
        return min(n, PROBE_ROWS)
    estimate = int(budget_ms // per_row) if per_row > 0 else n
    return min(n, max(estimate, 2 * _fitted.get(key, 0)))


def score_shadow(loaded: Any, batch: Batch, primary_ms: float, max_ms: float) -> ScoredBatch | None:
    """The shadow ``loaded`` (a LoadedModel) on as many of ``batch``'s rows as fit its time
    budget; None when it scored nothing (no time, or it failed)."""
    key = (loaded.info.name, loaded.info.version)
    k = rows_within(key, batch.n_rows, max_ms + primary_ms)
    if k <= 0:
        return None
    started = time.perf_counter()
    try:
        scored = score_batch(loaded.scorer(), loaded.info, head(batch, k),
                             reraise=(SoftTimeLimitExceeded,))  # fmt: skip
    except SoftTimeLimitExceeded:
        log.error("shadow %s abandoned at the soft time limit", loaded.info.ref)
        _cost[key] = float("inf")  # too slow: not again in this process (until recycled)
        return None
    except Exception as exc:  # a shadow never fails the primary
        log.warning("shadow %s failed on batch %s: %s", loaded.info.ref, batch.batch_id, exc)
        return None
    ms = (time.perf_counter() - started) * 1000
    previous = _cost.get(key)
    per_row = ms / k
    _cost[key] = per_row if previous is None else 0.5 * previous + 0.5 * per_row
    _fitted[key] = k if ms <= max_ms + primary_ms else 0
    scored.runtime = loaded.runtime
    return scored


def shadow_payload(shadow: ScoredBatch, primary_version: int, worker: str, day: dt.date) -> bytes:
    """The shadow's rows in COPY's binary format (workers/copybin.py), in SHADOW_COLUMNS order
    (``day``: the primary rows' partition day)."""
    b = shadow.batch
    n = b.n_rows
    ids = copybin.unique_text_fields(list(b.job_ids))
    labels = [copybin.NULL] * n if shadow.labels is None else copybin.text_fields(shadow.label)
    probs, scores = copybin.proba_and_score_fields(shadow)
    errors = [copybin.text_field(e) for e in shadow.error] if shadow.errors else [copybin.NULL] * n
    start = copybin.row_start(len(SHADOW_COLUMNS))
    middle = (copybin.text_field(shadow.model_name) + copybin.int4(shadow.model_version)
              + copybin.int4(primary_version))  # fmt: skip
    tail = (copybin.timestamptz(dt.datetime.now(dt.UTC)) + copybin.text_field(worker)
            + copybin.text_field(b.batch_id) + copybin.date_field(day))  # fmt: skip
    return b"".join(
        piece
        for i, lb, sc, pr, er in zip(ids, labels, scores, probs, errors, strict=True)
        for piece in (start, i, middle, lb, sc, pr, er, tail)
    )


def write_shadows(conn: Connection, parts: list[ScoredBatch], worker: str) -> int:
    """COPY the shadow rows of ``parts`` inside a savepoint; a failure loses only them."""
    shadows = [
        (p.shadow, p.batch.version, p.batch.partition_day) for p in parts if p.shadow is not None
    ]
    if not shadows:
        return 0
    try:
        with conn.begin_nested():
            if conn.dialect.name != "postgresql":
                return _insert_rows(conn, shadows, worker)
            payload = b"".join(shadow_payload(s, v, worker, d) for s, v, d in shadows)
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            copybin.copy_rows(cursor, "shadow_predictions", payload, SHADOW_COLUMNS)
        return sum(s.batch.n_rows for s, _, _ in shadows)
    except Exception as exc:
        log.warning("shadow rows not written (the primary rows are): %s", exc)
        return 0


def _insert_rows(
    conn: Connection, shadows: list[tuple[ScoredBatch, int, dt.date]], worker: str
) -> int:
    """SQLite (the embedded default): plain inserts, first row per job wins."""
    from inferq.common.schema import shadow_predictions
    from sqlalchemy import insert

    now = dt.datetime.now(dt.UTC)
    params = [
        {"job_id": j, "model_name": s.model_name, "model_version": s.model_version,
         "primary_version": v, "label": lb, "score": sc, "probabilities": pr, "error": er,
         "scored_at": now, "worker": worker, "batch_id": s.batch.batch_id, "day": d}
        for s, v, d in shadows
        for j, lb, sc, pr, er in zip(s.batch.job_ids, s.label, s.score, s.probabilities,
                                     s.error, strict=True)
    ]  # fmt: skip
    conn.execute(insert(shadow_predictions).prefix_with("OR IGNORE"), params)
    return len(params)


def attach(scored: ScoredBatch, batch: Batch, rt: Any) -> ScoredBatch:
    """Score ``batch`` with its model's shadow too (if any) and keep it on ``scored``."""
    if scored.runtime is None:  # the primary never ran (unknown model, time limit...)
        return scored
    loaded = rt.shadow_model(batch.model, batch.version)
    if loaded is not None:
        scored.shadow = score_shadow(loaded, batch, scored.predict_ms, rt.settings.shadow_max_ms)
    return scored


__all__ = ["PROBE_ROWS", "attach", "head", "rows_within", "score_shadow", "write_shadows"]
