"""Bulk, idempotent writes of result rows to the results database.

Postgres, exactly one row per job. Rows go to the daily partition of their message's day
(``Batch.partition_day``, common/partitions.py), whose primary key is (job_id, day):
1. One transaction: COPY the rows straight into the day's partition of `predictions`, then
   INSERT the batch's ledger row into `prediction_batches` (lineage and timings). The common
   case is this one transaction, at COPY speed, with three round trips.
2. If any job id already has a row that day (a redelivered message carries the same day),
   the primary key makes the COPY fail; the transaction is rolled back and redone as:
   ledger INSERT ... ON CONFLICT DO NOTHING (already there: a redelivery, write nothing),
   COPY into a temp table + INSERT ... ON CONFLICT (job_id, day) DO NOTHING (first result
   wins). A concurrent duplicate blocks on the first writer's uncommitted keys, then takes
   this path too.
3. Job ids the caller chose (``ids_given``) and rescores may already have a row on another
   day: they take path 2 directly, holding advisory locks on their ids' hash buckets (so two
   days' writers of one id cannot both miss each other), and each row whose id exists in any
   partition is staged under that row's day, where ON CONFLICT finds it.
A missing partition is created and the write retried (never a failed write for want of one).

The COPY payload is in Postgres's binary format, built column-wise by workers/copybin.py:
Postgres parses it at about twice the speed of text.

SQLite (the embedded default): the same ledger + INSERT OR IGNORE, no COPY.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

from inferq.common import partitions
from inferq.common.contract import code_of
from inferq.common.schema import dead_letters, prediction_batches, predictions
from inferq.workers.copybin import COLUMNS, copy_payload, copy_rows, row_numbers
from inferq.workers.inference import ScoredBatch
from inferq.workers.monitor import write_counts
from sqlalchemy import Connection, Engine, insert, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

_STAGE = "inferq_stage_predictions"
# pg_advisory_xact_lock(class, bucket) for writers of caller-chosen job ids (path 3).
_ID_LOCK_CLASS = 0x69647100
_ID_BUCKETS = 64


@dataclass(frozen=True, slots=True)
class WriteReport:
    """What one write did."""

    n_written: int  # rows new in `predictions`
    duplicate_batch: bool  # the batch was already committed (redelivery): nothing written
    write_ms: float


# ----- writes ----------------------------------------------------------------------------
def _ledger_values(
    scored: ScoredBatch, worker: str, received_at: float, decode_ms: float, written: int,
    write_ms: float,
) -> dict[str, Any]:  # fmt: skip
    b = scored.batch
    return {
        "batch_id": b.batch_id,
        "day": b.partition_day,
        "run_id": b.run_id,
        "model_name": scored.model_name,
        "model_version": scored.model_version,
        "worker": worker,
        "n_rows": b.n_rows,
        "n_ok": scored.n_ok,
        "n_error": scored.n_error,
        "n_written": written,
        "submitted_at": dt.datetime.fromtimestamp(b.submitted_at, dt.UTC),
        "received_at": dt.datetime.fromtimestamp(received_at, dt.UTC),
        "committed_at": dt.datetime.now(dt.UTC),
        "decode_ms": decode_ms,
        "predict_ms": scored.predict_ms,
        "write_ms": write_ms,
    }


def _claim_ledger(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert the batch's ledger row unless it is there; False when the batch was already
    committed (a redelivery: write nothing)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(prediction_batches).values(values).on_conflict_do_nothing()
        return conn.execute(stmt.returning(prediction_batches.c.batch_id)).first() is not None
    sqlite_stmt = insert(prediction_batches).values(values).prefix_with("OR IGNORE")
    return conn.execute(sqlite_stmt).rowcount == 1


def _copy_in_one_transaction(
    engine: Engine, parts: list[ScoredBatch], worker: str, received_at: float, decode_ms: float,
    started: float,
) -> list[WriteReport] | None:  # fmt: skip
    """The common case: COPY every part's rows into its day's partition and insert one ledger
    row per part, in one transaction. None when a job id or batch already has rows that day
    (rolled back: nothing written)."""
    import psycopg

    now = dt.datetime.now(dt.UTC)
    by_day: dict[dt.date, list[bytes]] = {}
    for p in parts:
        by_day.setdefault(p.batch.partition_day, []).append(copy_payload(p, worker, now))
    try:
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            for day, payloads in by_day.items():
                # Straight into the partition: no per-row routing through the parent.
                copy_rows(cursor, partitions.partition_name("predictions", day), b"".join(payloads))
            _shadows(conn, parts, worker)
            write_counts(conn, parts, worker)
            ms = (time.perf_counter() - started) * 1000
            rows = [_ledger_values(p, worker, received_at, decode_ms, p.batch.n_rows, ms)
                    for p in parts]  # fmt: skip
            conn.execute(insert(prediction_batches), rows)
        return [WriteReport(p.batch.n_rows, False, ms) for p in parts]
    except Exception as exc:
        if not isinstance(getattr(exc, "orig", exc), psycopg.errors.UniqueViolation):
            raise
        return None


def _with_partitions(engine: Engine, parts: list[ScoredBatch], write: Any) -> Any:
    """``write()``, after creating its days' partitions if it failed for want of one."""
    try:
        return write()
    except Exception as exc:
        if not partitions.missing_partition(exc):
            raise
    partitions.ensure(engine, {p.batch.partition_day for p in parts})
    return write()


def _lock_ids(cursor: Any, job_ids: list[str]) -> None:
    """Hold the advisory locks of these ids' hash buckets until commit, in bucket order (no
    deadlock between two such writers)."""
    buckets = sorted({zlib.crc32(j.encode()) % _ID_BUCKETS for j in job_ids})
    cursor.execute(
        "SELECT count(pg_advisory_xact_lock(%s, b)) "
        "FROM (SELECT unnest(%s::int[]) AS b ORDER BY 1 OFFSET 0) s",
        (_ID_LOCK_CLASS, buckets),
    )


def _existing_days(cursor: Any, scored: ScoredBatch) -> list[dt.date] | None:
    """Each row's day: that of its job id's existing row in any partition, else the batch's.
    None when no id has a row yet."""
    ids = list(scored.batch.job_ids)
    found = dict(
        cursor.execute(
            "SELECT job_id, day FROM predictions WHERE job_id = ANY(%s)", (ids,)
        ).fetchall()
    )
    if not found:
        return None
    day = scored.batch.partition_day
    return [found.get(j, day) for j in ids]


def _write_postgres(
    engine: Engine, scored: ScoredBatch, worker: str, received_at: float, decode_ms: float,
    started: float,
) -> WriteReport:  # fmt: skip
    b = scored.batch
    if not b.rescore and not b.ids_given:  # path 1 (a rescore's jobs have rows already)
        done = _copy_in_one_transaction(engine, [scored], worker, received_at, decode_ms, started)
        if done is not None:
            return done[0]
    with engine.begin() as conn:
        # Claim the batch first: a redelivered batch writes nothing, even if its job ids
        # differ from the first delivery's.
        ms = (time.perf_counter() - started) * 1000
        values = _ledger_values(scored, worker, received_at, decode_ms, 0, ms)
        if not _claim_ledger(conn, values):
            return WriteReport(0, True, ms)
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        days = None
        if b.rescore or b.ids_given:  # path 3: the ids may live on other days
            _lock_ids(cur, b.job_ids)
            days = _existing_days(cur, scored)
        payload = copy_payload(scored, worker, dt.datetime.now(dt.UTC), days)
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
            "(LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        copy_rows(cur, _STAGE, payload)
        cur.execute(
            f"INSERT INTO predictions ({', '.join(COLUMNS)}) "
            f"SELECT {', '.join(COLUMNS)} FROM {_STAGE} {_on_conflict(b.rescore)}"
        )
        written = cur.rowcount
        _shadows(conn, [scored], worker)
        write_counts(conn, [scored], worker)
        ms = (time.perf_counter() - started) * 1000
        conn.execute(
            update(prediction_batches)
            .where(prediction_batches.c.batch_id == b.batch_id)
            .where(prediction_batches.c.day == b.partition_day)
            .values(n_written=written, write_ms=ms)
        )
    return WriteReport(written, False, ms)


def _shadows(conn: Connection, parts: list[ScoredBatch], worker: str) -> None:
    """The parts' shadow rows, in a savepoint of this transaction (workers/shadow.py)."""
    if any(p.shadow is not None for p in parts):
        from inferq.workers.shadow import write_shadows  # it imports this module

        write_shadows(conn, parts, worker)


def _on_conflict(rescore: bool) -> str:
    """First result wins; a rescore replaces error rows only (never an ok row)."""
    if not rescore:
        return "ON CONFLICT (job_id, day) DO NOTHING"
    assignments = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c not in ("job_id", "day"))
    return (
        f"ON CONFLICT (job_id, day) DO UPDATE SET {assignments} WHERE predictions.status = 'error'"
    )


def _write_sqlite(
    engine: Engine, scored: ScoredBatch, worker: str, received_at: float, decode_ms: float,
    started: float,
) -> WriteReport:  # fmt: skip
    b = scored.batch
    now = dt.datetime.now(dt.UTC)
    submitted = dt.datetime.fromtimestamp(b.submitted_at, dt.UTC)
    keys = b.keys or [None] * b.n_rows
    numbers = row_numbers(b).tolist()
    day = b.partition_day
    params = [
        {"job_id": j, "run_id": b.run_id, "key": k, "model_name": scored.model_name,
         "model_version": scored.model_version, "status": st, "label": lb, "score": sc,
         "probabilities": pr, "error": er, "submitted_at": submitted, "scored_at": now,
         "worker": worker, "batch_id": b.batch_id, "error_code": code_of(er),
         "runtime": scored.runtime, "day": day, "row_no": no}
        for j, k, st, lb, sc, pr, er, no in zip(b.job_ids, keys, scored.status, scored.label,
                                                scored.score, scored.probabilities, scored.error,
                                                numbers, strict=True)
    ]  # fmt: skip
    with engine.begin() as conn:
        values = _ledger_values(scored, worker, received_at, decode_ms, 0, 0.0)
        if not _claim_ledger(conn, values):  # redelivered batch: no-op
            return WriteReport(0, True, (time.perf_counter() - started) * 1000)
        if b.rescore:
            stmt = sqlite_insert(predictions)
            stmt = stmt.on_conflict_do_update(
                index_elements=["job_id"],
                set_={c: stmt.excluded[c] for c in COLUMNS if c not in ("job_id", "day")},
                where=predictions.c.status == "error",
            )
            written = conn.execute(stmt, params).rowcount
        else:
            written = conn.execute(insert(predictions).prefix_with("OR IGNORE"), params).rowcount
        _shadows(conn, [scored], worker)
        write_counts(conn, [scored], worker)
        ms = (time.perf_counter() - started) * 1000
        conn.execute(
            update(prediction_batches)
            .where(prediction_batches.c.batch_id == b.batch_id)
            .where(prediction_batches.c.day == day)
            .values(n_written=written, write_ms=ms)
        )
    return WriteReport(written, False, ms)


def write_results(
    engine: Engine, scored: ScoredBatch, worker: str, *, received_at: float, decode_ms: float = 0.0
) -> WriteReport:
    """Write one scored batch exactly once (idempotent under redelivery and re-submission)."""
    started = time.perf_counter()
    if engine.dialect.name == "postgresql":
        return _with_partitions(
            engine,
            [scored],
            lambda: _write_postgres(engine, scored, worker, received_at, decode_ms, started),
        )
    return _write_sqlite(engine, scored, worker, received_at, decode_ms, started)


def write_group(
    engine: Engine, parts: list[ScoredBatch], worker: str, *, received_at: float,
    decode_ms: float = 0.0,
) -> list[WriteReport]:  # fmt: skip
    """Write several scored messages (a dynamic batch) in one transaction, one ledger row each.

    Same guarantees as :func:`write_results`: if any job id or batch already has rows (a
    redelivery), the group is rolled back and each message is written on its own, through
    the duplicate-safe path.
    """
    if engine.dialect.name == "postgresql" and not any(
        p.batch.rescore or p.batch.ids_given for p in parts
    ):
        started = time.perf_counter()
        done = _with_partitions(
            engine,
            parts,
            lambda: _copy_in_one_transaction(
                engine, parts, worker, received_at, decode_ms, started
            ),
        )
        if done is not None:
            return done
    return [
        write_results(engine, p, worker, received_at=received_at, decode_ms=decode_ms)
        for p in parts
    ]


def write_dead_letter(
    engine: Engine, payload: dict[str, Any], deliveries: int, reason: str
) -> None:
    """Keep a message out of circulation with its full payload (idempotent per batch id)."""
    import msgpack

    def text_or_none(key: str) -> Any:
        value = payload.get(key)
        return value if isinstance(value, str) else None

    job_ids = payload.get("job_ids")
    values = {
        "batch_id": text_or_none("batch_id") or f"unreadable-{uuid.uuid4().hex}",
        "run_id": text_or_none("run_id"),
        "model_name": text_or_none("model"),
        "model_version": payload["version"] if isinstance(payload.get("version"), int) else None,
        "n_rows": len(job_ids) if isinstance(job_ids, list) else 0,
        "deliveries": deliveries,
        "reason": reason,
        "payload": msgpack.packb(payload, use_bin_type=True),
        "created_at": dt.datetime.now(dt.UTC),
    }
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(dead_letters).values(values).on_conflict_do_nothing())
        else:
            conn.execute(insert(dead_letters).values(values).prefix_with("OR IGNORE"))
