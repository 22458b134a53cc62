"""Monitoring counts: per batch, exact bin counts per feature and for the output, and the
confidence-based accuracy estimate, written in the results' own transaction.

No feature value is stored: only how many rows of the batch fell in each of the baseline's
frozen bins (common/drift.py). Drift for any window is then a SUM over `drift_counts`,
exact and mergeable across hours, workers and versions, without reading `predictions`.
Each worker process writes its own rows (``worker`` = node:pid is in the key), so two
transactions never wait for the same row.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from inferq.common import drift
from inferq.common.contract import Batch
from inferq.common.rows import model_input as mi
from inferq.common.rows.schema import InputSchema
from sqlalchemy import Connection

log = logging.getLogger("inferq.worker")


@dataclass(slots=True)
class Counts:
    """One batch's monitoring counts (or several batches', added up)."""

    model_name: str
    model_version: int
    bins: dict[tuple[str, int], int] = field(default_factory=dict)
    n_estimated: int = 0
    expected_correct: float = 0.0

    def add(self, feature: str, counts: np.ndarray) -> None:
        """Add one feature's counts per bin (zero bins are not stored)."""
        for b in np.flatnonzero(counts).tolist():
            key = (feature, b)
            self.bins[key] = self.bins.get(key, 0) + int(counts[b])


def _columns(schema: InputSchema, batch: Batch) -> dict[str, Any] | None:
    """Each feature's values in ``batch`` (numbers as float arrays, text as lists)."""
    width = int(batch.x.shape[1])
    if mi.layout_problem(schema, width, batch.text_positions, batch.n_features):
        return None  # rows answered "wrong_shape": nothing to count
    if batch.text is None:
        return {f.name: batch.x[:, j] for j, f in enumerate(schema.features)}
    out: dict[str, Any] = {}
    for k, j in enumerate(schema.numeric_positions):
        out[schema.features[j].name] = batch.x[:, k]
    for k, j in enumerate(schema.text_positions):
        out[schema.features[j].name] = batch.text[k]
    return out


def batch_counts(baseline: drift.Baseline, schema: InputSchema, scored: Any) -> Counts | None:
    """The counts of one scored batch: every row's inputs, the scored rows' outputs."""
    batch: Batch = scored.batch
    counts = Counts(scored.model_name, scored.model_version)
    columns = _columns(schema, batch)
    if columns is not None:
        for fb in baseline.features:
            values = columns.get(fb.name)
            if values is not None:
                counts.add(fb.name, drift.bin_counts(fb, values))
    ok = scored.ok
    if baseline.output is not None and ok.any():
        if baseline.output.kind == "numeric" and scored.scores is not None:
            counts.add(drift.OUTPUT, drift.bin_counts(baseline.output, scored.scores[ok]))
        elif baseline.output.kind == "categorical" and scored.labels is not None:
            labels = [lbl for lbl, good in zip(scored.labels, ok.tolist(), strict=True) if good]
            counts.add(drift.OUTPUT, drift.bin_counts(baseline.output, labels))
    if baseline.calibration is not None and scored.proba is not None and ok.any():
        expected = drift.calibrate(baseline.calibration, drift.confidence(scored.proba[ok]))
        if expected is not None:
            counts.n_estimated = int(ok.sum())
            counts.expected_correct = float(expected.sum())
    return counts


def attach(scored: Any, baseline: drift.Baseline | None, schema: InputSchema) -> Any:
    """Compute ``scored``'s counts when its version has a baseline; never fails scoring."""
    if baseline is None or scored.runtime is None:
        return scored
    try:
        scored.monitor = batch_counts(baseline, schema, scored)
    except Exception as exc:  # a bug here must not cost a result row
        log.warning("monitoring counts skipped for batch %s: %s", scored.batch.batch_id, exc)
    return scored


def write_counts(conn: Connection, parts: list[Any], worker: str) -> None:
    """Add the parts' counts to `drift_counts` / `accuracy_estimates` in this transaction."""
    found = [p.monitor for p in parts if getattr(p, "monitor", None) is not None]
    if not found:
        return
    bucket = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    merged: dict[tuple[str, int], Counts] = {}
    for c in found:
        into = merged.setdefault(
            (c.model_name, c.model_version), Counts(c.model_name, c.model_version)
        )
        for bin_key, n in c.bins.items():
            into.bins[bin_key] = into.bins.get(bin_key, 0) + n
        into.n_estimated += c.n_estimated
        into.expected_correct += c.expected_correct
    # NOTE: sorted rows, so concurrent writers of one row (the same process's retries) lock
    # in one order; rows of other processes never collide (worker is in the key).
    bins = sorted(
        (name, version, feature, b, n)
        for (name, version), c in merged.items()
        for (feature, b), n in c.bins.items()
    )
    estimates = [(k, c) for k, c in sorted(merged.items()) if c.n_estimated]
    from inferq.common.schema import accuracy_estimates, drift_counts

    if bins:
        rows = [{"model_name": m, "model_version": v, "bucket": bucket, "worker": worker,
                 "feature": f, "bin": b, "n": n} for m, v, f, b, n in bins]  # fmt: skip
        _upsert(conn, drift_counts, rows, {"n": "n"})
    if estimates:
        rows = [{"model_name": m, "model_version": v, "bucket": bucket, "worker": worker,
                 "n": c.n_estimated, "expected_correct": c.expected_correct}
                for (m, v), c in estimates]  # fmt: skip
        _upsert(conn, accuracy_estimates, rows, {"n": "n", "expected_correct": "expected_correct"})


def _upsert(conn: Connection, table: Any, rows: list[dict[str, Any]], adds: dict[str, str]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE SET col = col + excluded.col, as one statement."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    stmt = insert(table).values(rows)
    keys = [c.name for c in table.primary_key.columns]
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={col: table.c[col] + getattr(stmt.excluded, src) for col, src in adds.items()},
    )
    conn.execute(stmt)
