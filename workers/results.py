"""Bulk, idempotent writes of result rows to the results database.

Postgres, one transaction per batch:
1. claim the batch in the `prediction_batches` ledger (INSERT ... ON CONFLICT DO NOTHING).
   A redelivered message finds its batch already there and the write is a no-op; a
   concurrent duplicate blocks on the ledger row until the first commits, then no-ops.
2. COPY the rows straight into `predictions` inside a savepoint (fast path, ~COPY speed).
3. Only if a job_id already exists (a re-submitted job id), roll back to the savepoint and
   COPY into a temp table, then INSERT ... ON CONFLICT (job_id) DO NOTHING: first result wins.
4. record the write time and rows written in the ledger row; commit.

SQLite (the embedded default): the same ledger + INSERT OR IGNORE, no COPY.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, update

from common.schema import prediction_batches, predictions
from workers.inference import ScoredBatch

COLUMNS = (
    "job_id",
    "run_id",
    "key",
    "model_name",
    "model_version",
    "status",
    "label",
    "score",
    "probabilities",
    "error",
    "submitted_at",
    "scored_at",
    "worker",
    "batch_id",
)
_COPY_SQL = f"COPY {{table}} ({', '.join(COLUMNS)}) FROM STDIN"
_STAGE = "inferq_stage_predictions"


@dataclass(frozen=True, slots=True)
class WriteReport:
    """What one write did."""

    n_written: int  # rows new in `predictions`
    duplicate_batch: bool  # the batch was already committed (redelivery): nothing written
    write_ms: float


def _rows(scored: ScoredBatch, worker: str, now: dt.datetime) -> list[tuple[Any, ...]]:
    b = scored.batch
    submitted = dt.datetime.fromtimestamp(b.submitted_at, dt.UTC)
    keys = b.keys or [None] * b.n_rows
    # NOTE: json.dumps writes floats with repr(), so probabilities round-trip exactly.
    probs = [None if p is None else json.dumps(p) for p in scored.probabilities]
    return [
        (
            b.job_ids[i],
            b.run_id,
            keys[i],
            scored.model_name,
            scored.model_version,
            scored.status[i],
            scored.label[i],
            scored.score[i],
            probs[i],
            scored.error[i],
            submitted,
            now,
            worker,
            b.batch_id,
        )
        for i in range(b.n_rows)
    ]


def _ledger_values(scored: ScoredBatch, worker: str, received_at: float, decode_ms: float) -> dict:
    b = scored.batch
    return {
        "batch_id": b.batch_id,
        "run_id": b.run_id,
        "model_name": scored.model_name,
        "model_version": scored.model_version,
        "worker": worker,
        "n_rows": b.n_rows,
        "n_ok": scored.n_ok,
        "n_error": scored.n_error,
        "n_written": 0,
        "submitted_at": dt.datetime.fromtimestamp(b.submitted_at, dt.UTC),
        "received_at": dt.datetime.fromtimestamp(received_at, dt.UTC),
        "committed_at": dt.datetime.now(dt.UTC),
        "decode_ms": decode_ms,
        "predict_ms": scored.predict_ms,
        "write_ms": 0.0,
    }


def _claim(conn: Connection, values: dict) -> bool:
    """Insert the ledger row; False when the batch was committed before (redelivery)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg_stmt = pg_insert(prediction_batches).values(values).on_conflict_do_nothing()
        return bool(conn.execute(pg_stmt.returning(prediction_batches.c.batch_id)).first())
    stmt = insert(prediction_batches).values(values).prefix_with("OR IGNORE")
    return conn.execute(stmt).rowcount == 1


def _copy(cursor: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    with cursor.copy(_COPY_SQL.format(table=table)) as copy:
        for row in rows:
            copy.write_row(row)


def _write_postgres(conn: Connection, rows: list[tuple[Any, ...]]) -> int:
    """COPY rows into predictions, skipping job ids that already have a result."""
    import psycopg

    raw = conn.connection.driver_connection
    assert raw is not None
    cur = raw.cursor()
    try:
        with raw.transaction():  # savepoint: a duplicate job id only undoes this COPY
            _copy(cur, "predictions", rows)
        return len(rows)
    except psycopg.errors.UniqueViolation:
        pass
    cur.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
        "(LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    _copy(cur, _STAGE, rows)
    cur.execute(
        f"INSERT INTO predictions ({', '.join(COLUMNS)}) "
        f"SELECT {', '.join(COLUMNS)} FROM {_STAGE} ON CONFLICT (job_id) DO NOTHING"
    )
    return cur.rowcount


def _write_sqlite(conn: Connection, rows: list[tuple[Any, ...]]) -> int:
    params = [dict(zip(COLUMNS, r, strict=True)) for r in rows]
    for p in params:  # SQLAlchemy's JSON type encodes objects itself
        if p["probabilities"] is not None:
            p["probabilities"] = json.loads(p["probabilities"])
    result = conn.execute(insert(predictions).prefix_with("OR IGNORE"), params)
    return result.rowcount


def write_results(
    engine: Engine,
    scored: ScoredBatch,
    worker: str,
    *,
    received_at: float,
    decode_ms: float = 0.0,
) -> WriteReport:
    """Write one scored batch exactly once (idempotent under redelivery and re-submission)."""
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        if not _claim(conn, _ledger_values(scored, worker, received_at, decode_ms)):
            return WriteReport(0, True, (time.perf_counter() - started) * 1000)
        rows = _rows(scored, worker, now)
        if conn.dialect.name == "postgresql":
            written = _write_postgres(conn, rows)
        else:
            written = _write_sqlite(conn, rows)
        write_ms = (time.perf_counter() - started) * 1000
        conn.execute(
            update(prediction_batches)
            .where(prediction_batches.c.batch_id == scored.batch.batch_id)
            .values(n_written=written, write_ms=write_ms, committed_at=dt.datetime.now(dt.UTC))
        )
    return WriteReport(written, False, write_ms)
