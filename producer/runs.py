"""Where bulk runs stand: progress, finalising, waiting and listing (`inferq runs`).

Read side of :mod:`producer.bulk`: everything here is computed from the database
(`scoring_runs`, `prediction_batches`, `predictions`), so any process can follow a run. The
names of a run and of its rows (run token, job ids, partition day) are made here too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from inferq.common.errors import InferqError, InvalidInput
from inferq.common.schema import (
    prediction_batches,
    predictions,
    scoring_run_chunks,
    scoring_runs,
)
from sqlalchemy import ColumnElement, Engine, and_, func, select, update

FINAL = ("done", "failed")
#: Every status a run can be in (`inferq runs --status`).
RUN_STATUSES = ("enqueuing", "running", "done", "failed")


def check_status(status: str) -> str:
    """``status`` if it is a run status, else a clear error."""
    if status not in RUN_STATUSES:
        raise InvalidInput(f"unknown run status {status!r}: use one of {', '.join(RUN_STATUSES)}")
    return status


def parse_model_filter(text: str) -> tuple[str, int | None]:
    """``"churn"`` or ``"churn@3"`` as (name, version or None), else a clear error."""
    name, at, version = text.partition("@")
    if not name or (at and not version.isdigit()):
        raise InvalidInput(
            f"--model {text!r}: give a model name or NAME@VERSION (e.g. churn or churn@3)"
        )
    return name, int(version) if at else None


def run_token(run_id: str) -> str:
    """16 hex characters standing for a run id inside its job ids."""
    return hashlib.blake2b(run_id.encode(), digest_size=8).hexdigest()


def job_ids_for(run_id: str, row_ids: list[str | None], first_row: int = 0) -> list[str]:
    """Deterministic job ids of a run's rows: ``<run token>:<row id>``.

    Readable and one string concatenation per row (uuid5 cost 5 µs/row, 60% of the producer's
    CPU). Ids longer than 200 characters are hashed; a missing id uses the row number behind a
    different separator, so it can never equal a real id.
    """
    token = run_token(run_id)
    prefix = token + ":"
    out = []
    for i, row_id in enumerate(row_ids):
        if row_id is None:
            out.append(f"{token}#{first_row + i}")
        elif len(row_id) <= 200 and "\x00" not in row_id:
            out.append(prefix + row_id)
        else:
            out.append(token + "~" + hashlib.blake2b(row_id.encode(), digest_size=16).hexdigest())
    return out


def job_id_for(run_id: str, row_id: str) -> str:
    """Deterministic job id of one input row of a run (see job_ids_for)."""
    return job_ids_for(run_id, [row_id])[0]


def run_day(started_at: dt.datetime) -> str:
    """The partition day of a run's rows: the UTC day it started on (ISO date)."""
    if started_at.tzinfo is None:  # SQLite hands timestamps back without their zone
        started_at = started_at.replace(tzinfo=dt.UTC)
    return started_at.astimezone(dt.UTC).date().isoformat()


def default_run_id(model: str) -> str:
    """A fresh run id: model name, UTC time and a short random suffix."""
    return f"{model}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_rows(run_id: str) -> ColumnElement[bool]:
    """`predictions` rows of a bulk run, found through the primary key.

    A run's job ids all start with its token (``<token>:``, ``#`` or ``~``: producer/bulk.py),
    so they are one byte-wise range of (job_id, day) in each partition: no index on run_id
    to keep up on every write. ``run_id`` is checked too, for exactness.
    """
    token = run_token(run_id)
    return and_(
        predictions.c.job_id >= token,
        predictions.c.job_id < token + "\x7f",  # after '#', ':' and '~'
        predictions.c.run_id == run_id,
    )


class RunFailed(InferqError):
    """A bulk run ended without every row answered, or with too many error rows."""


@dataclass(slots=True)
class RunProgress:
    """Where a run stands, read from the database."""

    run_id: str
    model: str
    status: str
    source: str
    total_rows: int | None
    enqueued: int
    scored_ok: int
    scored_error: int
    n_chunks: int | None
    chunks_done: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    error: str | None

    @property
    def scored(self) -> int:
        """Rows answered so far (ok + error)."""
        return self.scored_ok + self.scored_error

    @property
    def complete(self) -> bool:
        """Every chunk enqueued and committed."""
        return self.n_chunks is not None and self.chunks_done >= self.n_chunks

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        end = self.finished_at or dt.datetime.now(dt.UTC)
        seconds = max(1e-9, (end - _aware(self.started_at)).total_seconds())
        data["seconds"] = round(seconds, 3)
        data["rows_per_second"] = round(self.scored / seconds, 1)
        return data


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class RunTracker:
    """Reads and finalises run records; :class:`producer.bulk.BulkScorer` adds the writing."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The results database (where runs and their ledger live)."""
        return self._engine

    # ----- progress ----------------------------------------------------------------------
    def _load_run(self, run_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(scoring_runs).where(scoring_runs.c.run_id == run_id)).first()

    def _set(self, run_id: str, only_if_status: str | None = None, **values: Any) -> None:
        """Update the run record (only while it has ``only_if_status``, when given)."""
        values["updated_at"] = dt.datetime.now(dt.UTC)
        stmt = update(scoring_runs).where(scoring_runs.c.run_id == run_id)
        if only_if_status is not None:
            stmt = stmt.where(scoring_runs.c.status == only_if_status)
        with self.engine.begin() as conn:
            conn.execute(stmt.values(**values))

    def progress(self, run_id: str) -> RunProgress:
        """The run's counts from the database; finalises the run when its last chunk committed."""
        row = self._load_run(run_id)
        if row is None:
            raise InvalidInput(f"no run {run_id!r} (see `inferq runs`)")
        with self.engine.connect() as conn:
            # Only the run's own chunks count (not rescore messages, producer/rescore.py).
            done, ok, err = conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(prediction_batches.c.n_ok), 0),
                    func.coalesce(func.sum(prediction_batches.c.n_error), 0),
                )
                .select_from(
                    scoring_run_chunks.join(
                        prediction_batches,
                        prediction_batches.c.batch_id == scoring_run_chunks.c.batch_id,
                    )
                )
                .where(scoring_run_chunks.c.run_id == run_id)
            ).one()
        status, error, finished = row.status, row.error, row.finished_at
        if row.status not in FINAL and row.n_chunks is not None and done >= row.n_chunks:
            status, error, ok, err, finished = self._finalise(row)
        elif row.status in FINAL:
            ok, err = row.scored_ok or ok, row.scored_error or err
        return RunProgress(
            run_id=run_id,
            model=f"{row.model_name}@{row.model_version}",
            status=status,
            source=row.source,
            total_rows=row.total_rows,
            enqueued=row.enqueued,
            scored_ok=ok,
            scored_error=err,
            n_chunks=row.n_chunks,
            chunks_done=done,
            started_at=row.started_at,
            finished_at=finished,
            error=error,
        )

    def refinalise(self, run_id: str) -> RunProgress:
        """Recount a finished run from `predictions` (after some of its rows were rescored)."""
        row = self._load_run(run_id)
        if row is None:
            raise InvalidInput(f"no run {run_id!r} (see `inferq runs`)")
        self._finalise(row)
        return self.progress(run_id)

    def _finalise(self, row: Any) -> tuple[str, str | None, int, int, dt.datetime]:
        """Exact final counts from `predictions`; decide done or failed."""
        with self.engine.connect() as conn:
            # The run finished when its last batch committed, not when someone looked.
            last_commit = conn.execute(
                select(func.max(prediction_batches.c.committed_at)).where(
                    prediction_batches.c.run_id == row.run_id
                )
            ).scalar()
            counts: dict[str, int] = dict(
                conn.execute(
                    select(predictions.c.status, func.count())
                    .where(run_rows(row.run_id))
                    .group_by(predictions.c.status)
                ).all()
            )
        ok, err = counts.get("ok", 0), counts.get("error", 0)
        status, error = "done", None
        if ok + err < row.total_rows:
            status = "failed"
            error = (
                f"{row.total_rows - ok - err} input rows share an id with another row; "
                f"values of id column {row.id_column!r} must be unique"
            )
        elif ok + err > row.total_rows:
            status = "failed"
            error = (
                f"{ok + err - row.total_rows} more result rows than input rows: the input "
                "changed between runs of this run id"
            )
        elif row.max_error_rate is not None and err > row.max_error_rate * row.total_rows:
            status = "failed"
            error = (
                f"error rate {err / row.total_rows:.2%} exceeds --max-error-rate "
                f"{row.max_error_rate:.2%} ({err} of {row.total_rows} rows invalid)"
            )
        self._set(
            row.run_id,
            status=status,
            error=error,
            scored_ok=ok,
            scored_error=err,
            finished_at=last_commit or dt.datetime.now(dt.UTC),
        )
        return status, error, ok, err, last_commit or dt.datetime.now(dt.UTC)

    def wait(
        self,
        run_id: str,
        on_progress: Callable[[RunProgress], None] | None = None,
        timeout: float | None = None,
        poll: float = 0.5,
        stall: float | None = None,
        on_stall: Callable[[float], None] | None = None,
    ) -> RunProgress:
        """Poll until the run is done or failed (or ``timeout`` seconds pass).

        ``stall``: give up after this many seconds without a single row scored (no worker
        consumes the queue, or every one is stuck); ``on_stall(seconds)`` is called once
        when half of that (at most a minute) has passed without progress.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        warn_after = None if stall is None else min(60.0, stall / 2)
        last_scored, last_change, warned = -1, time.monotonic(), False
        while True:
            current = self.progress(run_id)
            if on_progress:
                on_progress(current)
            if current.status in FINAL:
                return current
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise RunFailed(
                    f"run {run_id} not finished after {timeout:g}s ({current.scored} of "
                    f"{current.total_rows} rows scored); it keeps running on the workers — "
                    f"`inferq runs {run_id}` shows progress, the same command resumes it"
                )
            if current.scored != last_scored:
                last_scored, last_change, warned = current.scored, now, False
            elif stall is not None and warn_after is not None:
                idle = now - last_change
                if idle > stall:
                    raise RunFailed(
                        f"no row of run {run_id} scored for {stall:g}s ({current.scored:,} of "
                        f"{current.total_rows or 0:,} rows scored): is a worker consuming the "
                        "bulk queue? (`inferq workers`). Nothing is lost: the rows wait in "
                        "the queue; the same command with --run-id "
                        f"{run_id} resumes the run"
                    )
                if idle > warn_after and not warned and on_stall is not None:
                    on_stall(idle)
                    warned = True
            time.sleep(poll)

    # ----- listing -----------------------------------------------------------------------
    def list_runs(
        self,
        limit: int = 20,
        *,
        model: str | None = None,
        status: str | None = None,
        since: dt.datetime | None = None,
    ) -> list[RunProgress]:
        """The most recent runs, newest first: of ``model`` (NAME or NAME@VERSION), in
        ``status`` (one of RUN_STATUSES, as `inferq runs` shows it), started at or after
        ``since``."""
        t = scoring_runs.c
        where: list[ColumnElement[bool]] = []
        if model is not None:
            name, version = parse_model_filter(model)
            where.append(t.model_name == name)
            if version is not None:
                where.append(t.model_version == version)
        if since is not None:
            where.append(t.started_at >= since)
        if status is not None:
            check_status(status)
            # The stored status lags for a run whose last chunk committed while nobody
            # looked: progress() finalises such runs, then the stored status is exact.
            with self.engine.connect() as conn:
                pending = conn.scalars(select(t.run_id).where(*where, t.status.not_in(FINAL))).all()
            for run_id in pending:
                self.progress(run_id)
            where.append(t.status == status)
        with self.engine.connect() as conn:
            ids = conn.scalars(
                select(t.run_id).where(*where).order_by(t.started_at.desc()).limit(limit)
            ).all()
        return [self.progress(r) for r in ids]

    def error_breakdown(self, run_id: str, limit: int = 10) -> list[tuple[str, int]]:
        """Most common error messages of a run, with the row number taken out."""
        stmt = select(predictions.c.error).where(run_rows(run_id), predictions.c.status == "error")
        counts: dict[str, int] = {}
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                kind = func.regexp_replace(predictions.c.error, r"^row [0-9]+: ", "")
                grouped = conn.execute(
                    select(kind, func.count())
                    .where(run_rows(run_id), predictions.c.status == "error")
                    .group_by(kind)
                    .order_by(func.count().desc())
                    .limit(limit)
                )
                return [(k, n) for k, n in grouped]
            for (message,) in conn.execute(stmt):
                key = re.sub(r"^row [0-9]+: ", "", message or "")
                counts[key] = counts.get(key, 0) + 1
        return sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
