"""Monitoring counts: per batch, exact bin counts per feature and for the output, and the
confidence-based accuracy estimate, written in the results' own transaction.

No feature value is stored: only how many rows of the batch fell in each of the baseline's
frozen bins (common/drift.py). Drift for any window is then a SUM over `drift_counts`,
exact and mergeable across hours, workers and versions, without reading `predictions`.
Each worker process adds to its own row per hour (``worker`` = node:pid is in the key), a
flat vector laid out by the baseline: one small statement per batch, and two transactions
never wait for the same row.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from inferq.common import drift
from inferq.common.rows.schema import InputSchema
from sqlalchemy import Connection

log = logging.getLogger("inferq.worker")


@dataclass(slots=True)
class Counts:
    """One batch's monitoring counts (or several batches', added up)."""

    model_name: str
    model_version: int
    baseline: str  # common.drift.baseline_id: the layout of ``vector``
    vector: np.ndarray  # int64, Baseline.layout() order
    n_estimated: int = 0
    expected_correct: float = 0.0


def batch_counts(
    baseline: drift.Baseline, baseline_id: str, schema: InputSchema, scored: Any
) -> Counts:
    """The counts of one scored batch: every row's inputs, the scored rows' outputs."""
    vector = np.zeros(baseline.width, dtype=np.int64)
    columns = drift.feature_values(schema, scored.batch)
    for fb, offset in baseline.layout():
        if fb is baseline.output:
            values = drift.output_values(scored, fb.kind)
        else:
            values = columns.get(fb.name, (None, None))[1]
        if values is not None:
            vector[offset : offset + fb.n_bins] += drift.bin_counts(fb, values)
    ok = scored.ok
    counts = Counts(scored.model_name, scored.model_version, baseline_id, vector)
    if baseline.calibration is not None and scored.proba is not None and ok.any():
        expected = drift.calibrate(baseline.calibration, drift.confidence(scored.proba[ok]))
        if expected is not None:
            counts.n_estimated = int(ok.sum())
            counts.expected_correct = float(expected.sum())
    return counts


def attach(scored: Any, loaded: Any) -> Any:
    """Compute ``scored``'s counts when its version has a baseline; never fails scoring."""
    if loaded.baseline is None or scored.runtime is None:
        return scored
    try:
        scored.monitor = batch_counts(
            loaded.baseline, loaded.baseline_id, loaded.info.schema, scored
        )
    except Exception as exc:  # a bug here must not cost a result row
        log.warning("monitoring counts skipped for batch %s: %s", scored.batch.batch_id, exc)
    return scored


def write_counts(conn: Connection, parts: list[Any], worker: str) -> None:
    """Add the parts' counts to `drift_counts` / `accuracy_estimates` in this transaction."""
    found = [p.monitor for p in parts if getattr(p, "monitor", None) is not None]
    if not found:
        return
    bucket = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    merged: dict[tuple[str, int, str], Counts] = {}
    for c in found:
        key = (c.model_name, c.model_version, c.baseline)
        into = merged.get(key)
        if into is None:
            merged[key] = Counts(*key, c.vector.copy(), c.n_estimated, c.expected_correct)
        else:
            into.vector += c.vector
            into.n_estimated += c.n_estimated
            into.expected_correct += c.expected_correct
    pg = conn.dialect.name == "postgresql"
    for (name, version, base), c in sorted(merged.items()):
        vec = c.vector.tolist()
        if pg:
            conn.exec_driver_sql(_PG_COUNTS, (name, version, base, bucket, worker, vec))
        else:
            _add_sqlite(conn, name, version, base, bucket, worker, vec)
        if c.n_estimated:
            conn.exec_driver_sql(
                _PG_ESTIMATE if pg else _LITE_ESTIMATE,
                (name, version, bucket if pg else bucket.isoformat(sep=" "), worker,
                 c.n_estimated, c.expected_correct),
            )  # fmt: skip


def _add_sqlite(
    conn: Connection, name: str, version: int, base: str, bucket: dt.datetime, worker: str,
    vec: list[int],
) -> None:  # fmt: skip
    """SQLite (the embedded default) has no arrays: read, add, write, in this transaction."""
    import json

    stamp = bucket.isoformat(sep=" ")  # the text SQLAlchemy's DateTime stores in SQLite
    key = (name, version, base, stamp, worker)
    row = conn.exec_driver_sql(
        "SELECT counts FROM drift_counts WHERE model_name = ? AND model_version = ? "
        "AND baseline = ? AND bucket = ? AND worker = ?",
        key,
    ).first()
    if row is None:
        conn.exec_driver_sql(
            "INSERT INTO drift_counts (model_name, model_version, baseline, bucket, worker, "
            "counts) VALUES (?, ?, ?, ?, ?, ?)",
            (*key, json.dumps(vec)),
        )
        return
    old = json.loads(row[0])
    conn.exec_driver_sql(
        "UPDATE drift_counts SET counts = ? WHERE model_name = ? AND model_version = ? "
        "AND baseline = ? AND bucket = ? AND worker = ?",
        (json.dumps([a + b for a, b in zip(old, vec, strict=True)]), *key),
    )


_KEY = "model_name, model_version, bucket, worker"
# NOTE: constant statements with array parameters: no per-batch SQL compilation (a 200-row
# multi-VALUES upsert built by SQLAlchemy cost 40-100 ms per batch; this costs ~1 ms).
_PG_COUNTS = (
    "INSERT INTO drift_counts (model_name, model_version, baseline, bucket, worker, counts) "
    "VALUES (%s, %s, %s, %s, %s, %s::bigint[]) "
    "ON CONFLICT (model_name, model_version, baseline, bucket, worker) DO UPDATE SET counts = "
    "(SELECT array_agg(a + b ORDER BY i) "
    "FROM unnest(drift_counts.counts, EXCLUDED.counts) WITH ORDINALITY AS t(a, b, i))"
)
_PG_ESTIMATE = (
    f"INSERT INTO accuracy_estimates ({_KEY}, n, expected_correct) "
    "VALUES (%s, %s, %s, %s, %s, %s) "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET n = accuracy_estimates.n + EXCLUDED.n, "
    "expected_correct = accuracy_estimates.expected_correct + EXCLUDED.expected_correct"
)
_LITE_ESTIMATE = (
    f"INSERT INTO accuracy_estimates ({_KEY}, n, expected_correct) VALUES (?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET n = n + excluded.n, "
    "expected_correct = expected_correct + excluded.expected_correct"
)
