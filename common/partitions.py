"""Daily time partitions of the per-row and per-batch tables (Postgres).

`predictions`, `prediction_batches` and `shadow_predictions` are partitioned by RANGE on a
``day`` column (a UTC date). Every message carries its day: the day its producer stamped
(``submitted_at``), or for a bulk run the day the run started, so a redelivered message, or a
resumed run's re-sent chunk, lands in the partition its first delivery used and meets its own
rows there (primary keys include ``day``; see ARCHITECTURE.md "Time partitions").

One partition per table and day, named ``<table>_pYYYYMMDD``. Workers create today's and the
next ``INFERQ_PARTITIONS_AHEAD`` days' partitions at start and once an hour, and the writer
creates a missing one on demand, so a write never fails for want of a partition. Creation
goes through the ``inferq_create_partition`` function of migration 0009: ``CREATE TABLE`` +
``ATTACH PARTITION`` (SHARE UPDATE EXCLUSIVE on the parent: writers and readers go on) under
a short ``lock_timeout``; removal through ``DETACH PARTITION ... CONCURRENTLY`` then ``DROP
TABLE`` (ops/prune.py), so neither blocks a running write.

SQLite (the embedded default) has no partitions: the same tables with a ``day`` column.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

#: Tables partitioned by day, parent first: their partitions are created and dropped together.
PARTITIONED = ("predictions", "prediction_batches", "shadow_predictions")
#: Days created ahead of today by workers and `inferq db partitions`.
DEFAULT_AHEAD = 7
_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")
_MISSING = re.compile(r'relation "[a-z_]+_p\d{8}" does not exist')


@dataclass(frozen=True, slots=True)
class Partition:
    """One existing partition: its table, its name and the day it holds."""

    table: str
    name: str
    day: dt.date


def day_of(timestamp: float) -> dt.date:
    """The UTC day of a Unix timestamp: the partition a message's rows go to."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date()


def today() -> dt.date:
    """The current UTC day (a function so tests can move the clock)."""
    return day_of(time.time())


def partition_name(table: str, day: dt.date) -> str:
    """``predictions_p20261130`` for the predictions of 2026-11-30."""
    return f"{table}_p{day:%Y%m%d}"


def parse_name(name: str) -> Partition | None:
    """The Partition a table name stands for, or None when it is not one of ours."""
    m = _NAME.match(name)
    if m is None or m["table"] not in PARTITIONED:
        return None
    try:
        day = dt.datetime.strptime(m["day"], "%Y%m%d").date()
    except ValueError:
        return None
    return Partition(m["table"], name, day)


def is_partition_name(name: str) -> bool:
    """True for a partition table's name (Alembic's autogenerate ignores those)."""
    return parse_name(name) is not None


def list_partitions(conn: Connection, table: str | None = None) -> list[Partition]:
    """Existing partitions (of ``table``, or of every partitioned table), oldest first."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = ANY(:parents) AND pg_table_is_visible(p.oid)"
        ),
        {"parents": [table] if table else list(PARTITIONED)},
    ).scalars()
    found = [p for p in map(parse_name, rows) if p is not None]
    return sorted(found, key=lambda p: (p.day, PARTITIONED.index(p.table)))


def ensure(
    engine: Engine, days: Iterable[dt.date], tables: Iterable[str] = PARTITIONED
) -> list[str]:
    """Create the missing partitions of ``tables`` for ``days``; returns the names created.

    Through the migration's ``inferq_create_partition`` function, which runs as the schema's
    owner (ATTACH needs ownership of the parent; workers may run as a least-privilege role),
    one creator at a time, with the parent's grants copied to the new partition. Safe to call
    from many processes at once. Raises (SQLAlchemy-wrapped) LockNotAvailable when a lock
    could not be had within 2 s: callers retry later.
    """
    if engine.dialect.name != "postgresql":
        return []
    wanted = [(t, d) for d in sorted(set(days)) for t in tables]
    with engine.connect() as conn:
        have = {p.name for p in list_partitions(conn)}
    created: list[str] = []
    for table, day in wanted:
        if partition_name(table, day) in have:
            continue
        with engine.begin() as conn:
            made = conn.execute(
                text("SELECT inferq_create_partition(:t, :d)"), {"t": table, "d": day}
            ).scalar()
        if made:
            created.append(partition_name(table, day))
    return created


def ensure_ahead(
    engine: Engine, ahead: int = DEFAULT_AHEAD, now: dt.date | None = None
) -> list[str]:
    """Partitions for yesterday (late writes), today and ``ahead`` days after it."""
    start = (now or today()) - dt.timedelta(days=1)
    return ensure(engine, (start + dt.timedelta(days=i) for i in range(ahead + 2)))


def missing_partition(exc: BaseException) -> bool:
    """True when a write failed because a partition for its day does not exist yet."""
    orig: Any = getattr(exc, "orig", exc)
    message = str(orig)
    # 23514 "no partition of relation ... found for row" (through the parent);
    # 42P01 "relation ... does not exist" (COPY straight into a day's partition).
    return getattr(orig, "sqlstate", None) in ("23514", "42P01") and (
        "no partition of relation" in message
        or ("does not exist" in message and _MISSING.search(message) is not None)
    )
