"""Retention: drop whole days of results, optionally archived to Parquet first.

A day goes when every row of it is older than the cutoff. On Postgres each of its partitions
(common/partitions.py) is written to Parquet (optional), checked against its exact row count,
detached CONCURRENTLY and dropped, so writers of today's rows never wait. The small per-hour
and per-run tables lose their old rows with a DELETE. SQLite: the same archive layout from
``WHERE day = ?``, then a DELETE.

Resumable: a rerun after a crash finds what is left (a partition still attached, one whose
detach was interrupted, a detached table not yet dropped) and finishes it; an archive file
whose partition still exists is written again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from inferq.common import partitions, schema
from inferq.common.errors import DatabaseError, InvalidInput
from inferq.ops.archive import BATCH_ROWS, TABLES, archive_one, count_rows, source
from sqlalchemy import Connection, Engine, Table, delete, func, select, text
from sqlalchemy.exc import OperationalError

#: A never-analyzed partition (reltuples = -1) smaller than this is counted exactly.
EXACT_BELOW = 8 * 1024 * 1024
#: How long DROP waits for a session still using a detached partition before giving up.
LOCK_TIMEOUT = "10s"
#: Small tables trimmed by time: (table, column). Runs go only once done or failed.
TRIMMED = (("drift_counts", "bucket"), ("accuracy_estimates", "bucket"),
           ("scoring_runs", "started_at"))  # fmt: skip
_DONE_RUNS = ("done", "failed")
_CATALOG = """
SELECT c.relname AS name, c.reltuples::bigint AS reltuples,
       pg_total_relation_size(c.oid) AS size, p.relname AS parent,
       coalesce(i.inhdetachpending, false) AS pending
FROM pg_class c
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
LEFT JOIN pg_class p ON p.oid = i.inhparent
WHERE c.relkind = 'r' AND pg_table_is_visible(c.oid) AND c.relname ~ '_p[0-9]{8}$'
"""


@dataclass
class PartitionItem:
    """One day of one table: a partition on Postgres, that day's rows on SQLite."""

    table: str
    name: str
    day: dt.date
    rows: int | None  # None: unknown (never analyzed and too big to count in a dry run)
    exact: bool  # False: pg_class.reltuples estimate
    state: str  # attached | detach-pending | detached (Postgres), rows (SQLite)
    size_bytes: int | None = None
    archive: str | None = None
    dropped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**dataclasses.asdict(self), "day": self.day.isoformat()}


@dataclass
class TableTrim:
    """The old rows of one small table (per hour or per run), deleted after the days."""

    table: str
    column: str
    rows: int
    deleted: bool = False


@dataclass
class PrunePlan:
    """What a prune removes: whole days of partitions, then old rows of small tables."""

    cutoff: dt.datetime
    older_than: dt.timedelta
    backend: str
    partitions: list[PartitionItem]
    tables: list[TableTrim]

    @property
    def days(self) -> list[dt.date]:
        """The days that go, oldest first."""
        return sorted({p.day for p in self.partitions})

    def to_dict(self) -> dict[str, Any]:
        """The JSON document `inferq db prune --json` prints."""
        parts = self.partitions
        return {
            "backend": self.backend, "dry_run": not isinstance(self, PruneReport),
            "older_than_seconds": self.older_than.total_seconds(),
            "cutoff": self.cutoff.isoformat(), "archive": getattr(self, "archive", None),
            "days": [{"day": d.isoformat(),
                      "partitions": [p.to_dict() for p in parts if p.day == d]}
                     for d in self.days],
            "tables": [dataclasses.asdict(t) for t in self.tables],
            "totals": {"days": len(self.days), "partitions": len(parts),
                       "rows": sum(p.rows or 0 for p in parts),
                       "rows_exact": all(p.exact for p in parts)},
        }  # fmt: skip


@dataclass
class PruneReport(PrunePlan):
    """What a prune did: the plan's items with exact rows, archive files and dropped flags."""

    archive: str | None = field(default=None)


# ----- plan ------------------------------------------------------------------------------
def cutoff_day(cutoff: dt.datetime, now: dt.datetime) -> dt.date:
    """Days before this one go: all their rows are older than ``cutoff``; never today's."""
    return min(cutoff.astimezone(dt.UTC).date(), now.astimezone(dt.UTC).date(), partitions.today())


def plan(engine: Engine, older_than: dt.timedelta, now: dt.datetime | None = None) -> PrunePlan:
    """What ``prune`` would remove for rows older than ``older_than`` (changes nothing)."""
    if older_than <= dt.timedelta(0):
        raise InvalidInput(f"--older-than must be more than 0, got {older_than}")
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    cutoff = now - older_than
    before = cutoff_day(cutoff, now)
    items = [p for p in partition_info(engine, before=before) if p.day < before]
    return PrunePlan(cutoff, older_than, engine.dialect.name, items, _trims(engine, cutoff))


def partition_info(engine: Engine, before: dt.date | None = None) -> list[PartitionItem]:
    """Existing partitions (Postgres) or days with rows (SQLite), oldest first."""
    if engine.dialect.name != "postgresql":
        return _sqlite_days(engine, before)
    items: list[PartitionItem] = []
    with engine.connect() as conn:
        for r in conn.execute(text(_CATALOG)):
            p = partitions.parse_name(r.name)
            if p is None or (r.parent is not None and r.parent != p.table):
                continue
            if before is not None and p.day >= before:
                continue
            state = _state_of(r)
            rows, exact = (int(r.reltuples), False) if r.reltuples >= 0 else (None, False)
            if rows is None and r.size < EXACT_BELOW:
                # NOTE: reltuples is -1 until the first ANALYZE: small tables are cheap to count.
                rows, exact = count_rows(conn, source(p.table, p.name), None), True
            items.append(PartitionItem(p.table, p.name, p.day, rows, exact, state, int(r.size)))
    return sorted(items, key=lambda p: (p.day, partitions.PARTITIONED.index(p.table)))


def _sqlite_days(engine: Engine, before: dt.date | None) -> list[PartitionItem]:
    items: list[PartitionItem] = []
    with engine.connect() as conn:
        for name, t in TABLES.items():
            stmt = select(t.c.day, func.count()).group_by(t.c.day)
            if before is not None:
                stmt = stmt.where(t.c.day < before)
            for day, n in conn.execute(stmt):
                name_of_day = partitions.partition_name(name, day)
                items.append(PartitionItem(name, name_of_day, day, n, True, "rows"))
    return sorted(items, key=lambda p: (p.day, partitions.PARTITIONED.index(p.table)))


def _trim_where(t: Table, col: str, cutoff: dt.datetime) -> Any:
    cond = t.c[col] < cutoff
    if t is schema.scoring_runs:
        cond = cond & t.c.status.in_(_DONE_RUNS)  # a running run keeps its rows
    return cond


def _trims(engine: Engine, cutoff: dt.datetime) -> list[TableTrim]:
    out = []
    with engine.connect() as conn:
        for name, col in TRIMMED:
            t = schema.metadata.tables[name]
            stmt = select(func.count()).select_from(t).where(_trim_where(t, col, cutoff))
            out.append(TableTrim(name, col, conn.execute(stmt).scalar_one()))
    return out


# ----- prune -----------------------------------------------------------------------------
def prune(
    engine: Engine,
    plan: PrunePlan,
    archive: Path | None = None,
    *,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[str], None] | None = None,
) -> PruneReport:
    """Archive (when ``archive`` is a folder) and drop the plan's days, oldest first, then
    delete the small tables' old rows. Safe to run again after a failure: it resumes."""
    say = progress or (lambda _msg: None)
    report = PruneReport(plan.cutoff, plan.older_than, plan.backend,
                         [dataclasses.replace(p) for p in plan.partitions],
                         [dataclasses.replace(t) for t in plan.tables],
                         archive=None if archive is None else str(archive))  # fmt: skip
    job = _Job(engine, archive, batch_rows, say)
    prune_day = _prune_pg_day if engine.dialect.name == "postgresql" else _prune_sqlite_day
    for day in report.days:
        prune_day(job, [p for p in report.partitions if p.day == day])
    with engine.begin() as conn:
        for trim in report.tables:
            t = schema.metadata.tables[trim.table]
            cond = _trim_where(t, trim.column, plan.cutoff)
            if t is schema.scoring_runs:
                # Postgres cascades; SQLite enforces no foreign keys, so delete explicitly.
                chunks = schema.scoring_run_chunks
                conn.execute(
                    delete(chunks).where(chunks.c.run_id.in_(select(t.c.run_id).where(cond)))
                )
            trim.rows = conn.execute(delete(t).where(cond)).rowcount
            trim.deleted = True
            say(f"deleted {trim.rows} rows of {trim.table} older than the cutoff")
    return report


def _state(conn: Connection, name: str) -> str | None:
    row = conn.execute(text(_CATALOG + " AND c.relname = :n"), {"n": name}).first()
    return None if row is None else _state_of(row)


def _state_of(row: Any) -> str:
    return "detached" if row.parent is None else "detach-pending" if row.pending else "attached"


class _Job(NamedTuple):
    engine: Engine
    archive: Path | None
    batch_rows: int
    say: Callable[[str], None]


def _prune_pg_day(job: _Job, items: list[PartitionItem]) -> None:
    engine = job.engine
    if job.archive is not None:
        # Every partition of the day is archived and checked before any is dropped.
        for item in items:
            with (
                engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
                conn.begin(),
            ):
                if _state(conn, item.name) is None:
                    continue  # gone since the plan (another prune finished it)
                archive_one(conn, item, job.archive, job.batch_rows)
            job.say(f"archived {item.name}: {item.rows} rows -> {item.archive or 'no file'}")
    for item in items:
        # NOTE: DETACH ... CONCURRENTLY takes SHARE UPDATE EXCLUSIVE, not ACCESS EXCLUSIVE, on
        # the parent, so inserts never queue behind it (nor behind a long reader it waits for).
        # It refuses to run in a transaction block: autocommit.
        detach = f"ALTER TABLE {item.table} DETACH PARTITION {item.name}"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            state = _state(conn, item.name)
            if state == "attached":
                conn.execute(text(f"{detach} CONCURRENTLY"))
            elif state == "detach-pending":  # an earlier detach was interrupted
                conn.execute(text(f"{detach} FINALIZE"))
        if state is not None:
            _drop(job, item)
        item.dropped = True
        job.say(f"dropped {item.name}")


def _drop(job: _Job, item: PartitionItem) -> None:
    """DROP a detached partition; rows written by name since its archive are archived first."""
    with job.engine.begin() as conn:
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        try:
            # The lock freezes the table: no late COPY by name can slip in after the count.
            conn.execute(text(f"LOCK TABLE {item.name} IN ACCESS EXCLUSIVE MODE"))
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03":
                raise
            raise DatabaseError(
                f"partition {item.name} is detached but a session still uses it (waited "
                f"{LOCK_TIMEOUT}): nothing lost; run `inferq db prune` again to drop it"
            ) from exc
        # Rows COPY'd by name into the partition since its archive: archive it again.
        src = source(item.table, item.name)
        if job.archive is not None and count_rows(conn, src, None) != item.rows:
            archive_one(conn, item, job.archive, job.batch_rows)
        conn.execute(text(f"DROP TABLE {item.name}"))


def _prune_sqlite_day(job: _Job, items: list[PartitionItem]) -> None:
    for item in items:
        t = TABLES[item.table]
        with job.engine.begin() as conn:
            if job.archive is not None:
                archive_one(conn, item, job.archive, job.batch_rows)
            deleted = conn.execute(delete(t).where(t.c.day == item.day)).rowcount
            if job.archive is not None and deleted != item.rows:  # rolls the DELETE back
                raise DatabaseError(
                    f"rows of {item.table} for {item.day} arrived while they were archived: "
                    "nothing of that day was deleted; run again"
                )
        item.rows, item.exact, item.dropped = deleted, True, True
        job.say(f"deleted the {deleted} rows of {item.table} for {item.day}")
