"""Bulk scoring runs (`inferq score`): stream a source into the bulk queue, resumably.

A run is recorded in `scoring_runs` before its first message is sent. The input is cut into
chunks of exactly ``chunk_size`` rows (chunk *k* always holds the same rows of the same
input), each sent as one message with the deterministic batch id ``<run_id>.<k>`` and job ids
``<run token>:<id value>``. `scoring_run_chunks` records what was enqueued; a chunk counts as
committed when its batch id is in `prediction_batches`, which the worker writes in the same
transaction as the result rows. So progress is exact, and re-running the same run id sends
only the chunks not yet committed; a chunk sent twice is a no-op on the worker.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from inferq.common import contract
from inferq.common.contract import RowError
from inferq.common.errors import InvalidInput, MissingColumns
from inferq.common.rows.coerce import to_columns
from inferq.common.schema import prediction_batches, scoring_run_chunks, scoring_runs
from inferq.models import registry
from inferq.models.lifecycle import check_servable
from inferq.producer.client import InferenceClient
from inferq.producer.preflight import check_input
from inferq.producer.runs import (
    FINAL,
    RunFailed,
    RunProgress,
    RunTracker,
    default_run_id,
    job_ids_for,
    run_day,
)
from inferq.producer.sources import Source, rechunk
from sqlalchemy import func, insert, select, update

#: A kombu publish batch (one Redis pipeline) ends at this many messages or rows; then the
#: chunk ledger is updated and backpressure is checked.
PUBLISH_GROUP = 50
PUBLISH_GROUP_ROWS = 100_000


@dataclass(slots=True)
class Run:
    """A prepared run: model version pinned, columns checked, chunks already committed."""

    run_id: str
    mv: registry.ModelVersion
    source: Source
    id_column: str
    feature_columns: list[str]
    chunk_size: int
    committed: set[int]
    resumed: bool
    complete: bool = False  # a re-run of a run whose chunks are all committed
    #: The UTC day the run started (ISO): every chunk's rows go to that day's partition, so
    #: a chunk sent again on resume meets its first delivery's rows (common/partitions.py).
    day: str | None = None


def text_columns(run: Run) -> list[str]:
    """Input columns of the run's model's category features (read as text, never numbers)."""
    schema = run.mv.schema
    return [run.feature_columns[j] for j in schema.text_positions]


class BulkScorer(RunTracker):
    """Runs `inferq score` over a Source through an InferenceClient."""

    def __init__(self, client: InferenceClient) -> None:
        super().__init__(client.engine)
        self.client = client

    # ----- prepare -----------------------------------------------------------------------
    def prepare(
        self,
        source: Source,
        model_ref: str,
        id_column: str,
        *,
        run_id: str | None = None,
        chunk_size: int | None = None,
        max_error_rate: float | None = None,
        check_ids: bool = True,
    ) -> Run:
        """Check everything that can be checked before enqueueing; create or resume the run.

        A new run's input is checked first (producer/preflight.py): a whole feature column of
        the wrong type, and, unless ``check_ids`` is False, ids repeated on several rows.
        """
        existing = self._load_run(run_id) if run_id else None
        if existing is not None:
            if existing.source != source.description or existing.id_column != id_column:
                raise InvalidInput(
                    f"run {run_id!r} exists with source {existing.source!r} and id column "
                    f"{existing.id_column!r}; use a new --run-id for a different input"
                )
            mv = registry.get_version(self.engine, existing.model_name, existing.model_version)
            chunk_size = existing.chunk_size  # chunk boundaries must not move on resume
        else:
            name, version, alias = registry.parse_ref(model_ref)
            mv = registry.resolve(self.engine, name, version, alias)  # pinned for the whole run
        check_servable(self.engine, mv)  # a retired version: refused before anything is sent
        chunk_size = chunk_size or self.client.settings.bulk_chunk_size
        columns = source.columns()
        features = self._feature_columns(mv, columns, id_column)
        run_id = run_id or default_run_id(mv.name)
        contract.check_job_id(run_id)
        now = dt.datetime.now(dt.UTC)
        if existing is None:
            check_input(source, mv, id_column, features, check_ids=check_ids)
            with self.engine.begin() as conn:
                conn.execute(
                    insert(scoring_runs).values(
                        run_id=run_id,
                        model_name=mv.name,
                        model_version=mv.version,
                        source=source.description,
                        id_column=id_column,
                        chunk_size=chunk_size,
                        total_rows=source.total_rows(),
                        n_chunks=None,
                        enqueued=0,
                        scored_ok=0,
                        scored_error=0,
                        status="enqueuing",
                        error=None,
                        max_error_rate=max_error_rate,
                        started_at=now,
                        updated_at=now,
                    )
                )
            committed: set[int] = set()
        else:
            committed = self._committed_chunks(run_id)
            if existing.n_chunks is not None and len(committed) >= existing.n_chunks:
                # Every chunk is committed: nothing to send, leave the record as it is.
                return Run(run_id, mv, source, id_column, features, chunk_size, committed,
                           resumed=True, complete=True,
                           day=run_day(existing.started_at))  # fmt: skip
            extra: dict[str, Any] = {}
            if max_error_rate is not None:
                extra["max_error_rate"] = max_error_rate
            self._set(run_id, status="enqueuing", error=None, finished_at=None, **extra)
        started = existing.started_at if existing is not None else now
        return Run(
            run_id, mv, source, id_column, features, chunk_size, committed, existing is not None,
            day=run_day(started),
        )  # fmt: skip

    @staticmethod
    def _feature_columns(
        mv: registry.ModelVersion, columns: list[str], id_column: str
    ) -> list[str]:
        if id_column not in columns:
            raise InvalidInput(
                f"id column {id_column!r} is not in the input (columns: {', '.join(columns[:20])})"
            )
        if mv.feature_names:
            missing = [f for f in mv.feature_names if f not in columns]
            if missing:
                raise MissingColumns(mv.ref, missing, columns)
            return list(mv.feature_names)
        rest = [c for c in columns if c != id_column]
        if len(rest) != mv.n_features:
            raise InvalidInput(
                f"{mv.ref} was fitted without feature names, so every column except "
                f"{id_column!r} is a feature, in order: it needs {mv.n_features}, "
                f"the input has {len(rest)}"
            )
        return rest

    # ----- enqueue -----------------------------------------------------------------------
    def build_chunk(
        self, run: Run, piece: pd.DataFrame, chunk_no: int, first_row: int
    ) -> contract.Batch:
        """The message for chunk ``chunk_no`` of a run (deterministic ids)."""
        ids = piece[run.id_column]
        missing_id = ids.isna().to_numpy()
        keys: list[str | None] = [
            None if m else str(v) for v, m in zip(ids.tolist(), missing_id, strict=True)
        ]
        job_ids = job_ids_for(run.run_id, keys, first_row)
        schema = run.mv.schema
        cols = to_columns(piece[run.feature_columns], schema, run.mv.ref, offset=first_row)
        x, errors = cols.x, cols.errors
        for i in np.flatnonzero(missing_id).tolist():
            errors.setdefault(
                i, RowError(f"row {first_row + i}: id column {run.id_column!r} is empty",
                            "missing_id")
            )  # fmt: skip
        return contract.Batch(
            model=run.mv.name,
            version=run.mv.version,
            job_ids=job_ids,
            x=x,
            keys=keys,
            row_errors=errors,
            batch_id=f"{run.run_id}.{chunk_no}",
            run_id=run.run_id,
            day=run.day,
            row_offset=first_row,
            text=cols.text,
            text_positions=schema.text_positions if cols.text is not None else (),
            width=schema.width if cols.text is not None else None,
        )

    @staticmethod
    def pieces(run: Run) -> Iterator[tuple[int, int, pd.DataFrame]]:
        """(chunk number, first input row, rows) of every chunk of the run's input, in order:
        chunk k is always the same rows (read in blocks of ~50,000 rows)."""
        read_rows = max(run.chunk_size, (50_000 // run.chunk_size) * run.chunk_size)
        frames = run.source.chunks(
            read_rows, [run.id_column, *run.feature_columns], run.id_column, text_columns(run)
        )
        first_row = 0
        for chunk_no, piece in enumerate(rechunk(frames, run.chunk_size)):
            yield chunk_no, first_row, piece
            first_row += len(piece)

    def enqueue(self, run: Run, on_progress: Callable[[RunProgress], None] | None = None) -> int:
        """Send every chunk not yet committed; returns rows sent. Marks the run failed on error."""
        pending: list[tuple[contract.Batch, int, int]] = []
        sent = chunk_no = first_row = 0  # after the loop: chunks and rows read
        last_report = 0.0
        limit = self.client.settings.bulk_max_queued_rows
        scored_at_start = self.progress(run.run_id).scored
        try:
            for no, first, piece in self.pieces(run):
                if no not in run.committed:
                    pending.append((self.build_chunk(run, piece, no, first), no, first))
                chunk_no, first_row = no + 1, first + len(piece)
                if (
                    len(pending) >= PUBLISH_GROUP
                    or len(pending) * run.chunk_size >= PUBLISH_GROUP_ROWS
                ):
                    sent += self._flush(run, pending)
                    pending = []
                    if limit:
                        self._throttle(run.run_id, sent, scored_at_start, limit, on_progress)
                    if on_progress and time.monotonic() - last_report > 0.5:
                        on_progress(self.progress(run.run_id))
                        last_report = time.monotonic()
            sent += self._flush(run, pending)
        except Exception as exc:
            self._set(
                run.run_id,
                status="failed",
                error=f"enqueue stopped: {exc}",
                finished_at=dt.datetime.now(dt.UTC),
            )
            raise
        if first_row == 0:
            self._set(
                run.run_id,
                status="failed",
                error="the input has no rows",
                finished_at=dt.datetime.now(dt.UTC),
            )
            raise InvalidInput(f"{run.source.description} has no rows to score")
        # Only from 'enqueuing': a resumed run may already have been finalised meanwhile.
        self._set(run.run_id, status="running", total_rows=first_row, n_chunks=chunk_no,
                  only_if_status="enqueuing")  # fmt: skip
        return sent

    def _throttle(
        self,
        run_id: str,
        sent: int,
        scored_at_start: int,
        limit: int,
        on_progress: Callable[[RunProgress], None] | None,
    ) -> None:
        """Wait while more than ``limit`` rows sent in this session are not yet committed."""
        stall = self.client.settings.bulk_stall_seconds
        last_scored, last_change = -1, time.monotonic()
        while True:
            current = self.progress(run_id)
            if sent - (current.scored - scored_at_start) <= limit:
                return
            if current.scored != last_scored:
                last_scored, last_change = current.scored, time.monotonic()
            elif time.monotonic() - last_change > stall:
                raise RunFailed(
                    f"no rows committed for {stall:g}s while {limit:,}+ rows wait in the "
                    f"queue: are workers consuming '{self.client.settings.bulk_queue}'? "
                    "Run the same command again to resume."
                )
            if on_progress:
                on_progress(current)
            time.sleep(0.2)

    def _flush(self, run: Run, pending: list[tuple[contract.Batch, int, int]]) -> int:
        if not pending:
            return 0
        self.client.publish(
            [b for b, _, _ in pending], queue=self.client.settings.bulk_queue, batched=True
        )
        now = dt.datetime.now(dt.UTC)
        rows = [
            {
                "run_id": run.run_id,
                "chunk_no": no,
                "batch_id": b.batch_id,
                "first_row": first,
                "n_rows": b.n_rows,
                "enqueued_at": now,
            }
            for b, no, first in pending
        ]
        with self.engine.begin() as conn:
            conn.execute(_upsert_chunks(conn.dialect.name, rows))
            total = conn.execute(
                select(func.coalesce(func.sum(scoring_run_chunks.c.n_rows), 0)).where(
                    scoring_run_chunks.c.run_id == run.run_id
                )
            ).scalar()
            conn.execute(
                update(scoring_runs)
                .where(scoring_runs.c.run_id == run.run_id)
                .values(enqueued=total, updated_at=now)
            )
        return sum(b.n_rows for b, _, _ in pending)

    def _committed_chunks(self, run_id: str) -> set[int]:
        query = (
            select(scoring_run_chunks.c.chunk_no)
            .join(
                prediction_batches, prediction_batches.c.batch_id == scoring_run_chunks.c.batch_id
            )
            .where(scoring_run_chunks.c.run_id == run_id)
        )
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())


def _upsert_chunks(dialect: str, rows: list[dict[str, Any]]) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    stmt = dialect_insert(scoring_run_chunks).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=["run_id", "chunk_no"], set_={"enqueued_at": stmt.excluded.enqueued_at}
    )


__all__ = ["FINAL", "BulkScorer", "Run", "RunFailed", "RunProgress"]
