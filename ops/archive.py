"""Parquet archive of one partition (or one day of a SQLite table): streamed, checked, atomic.

Used by ops/prune.py before a day is dropped. One file per partition, hive-style
(``ROOT/predictions/day=2026-11-01/predictions_p20261101.parquet``), with the lineage (the
model versions in it) in the file's metadata. Memory stays at one record batch whatever the
partition's size: rows come through a server-side cursor.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from inferq.common import partitions, schema
from inferq.common.errors import ArchiveMismatch
from sqlalchemy import Connection, Table, func, select

#: Rows per Arrow record batch (and per fetch from the server-side cursor): bounds memory.
BATCH_ROWS = 50_000
TABLES: dict[str, Table] = {name: schema.metadata.tables[name] for name in partitions.PARTITIONED}
# Order matters: BigInteger is an Integer.
_ARROW: tuple[tuple[Any, pa.DataType], ...] = (
    (sa.JSON, pa.string()), (sa.Text, pa.string()), (sa.BigInteger, pa.int64()),
    (sa.Integer, pa.int32()), (sa.Float, pa.float64()), (sa.Date, pa.date32()),
    (sa.DateTime, pa.timestamp("us", tz="UTC")), (sa.LargeBinary, pa.binary()),
)  # fmt: skip


class Item(Protocol):
    """What is archived: a partition (ops/prune.PartitionItem); its outcome is set on it."""

    table: str
    name: str
    day: dt.date
    rows: int | None
    exact: bool
    archive: str | None


def arrow_type(sql_type: Any) -> pa.DataType:
    """The Arrow type a column is archived as (JSON as its text)."""
    for kind, arrow in _ARROW:
        if isinstance(sql_type, kind):
            return arrow
    raise TypeError(f"no Arrow type for {sql_type!r}")


def archived_columns(name: str) -> list[sa.Column[Any]]:
    """The columns of ``name`` an archive file holds: all but ``day``.

    NOTE: the day is the hive folder (``day=2026-11-01``) and the file's ``inferq.day``; a
    ``day`` column in the file too would clash with it when DuckDB, Spark or pandas read the
    table's folder as one dataset (pyarrow: "Unable to merge: Field day has incompatible types").
    """
    return [c for c in TABLES[name].columns if c.name != "day"]


def arrow_schema(name: str) -> pa.Schema:
    """The Arrow schema of ``name``'s archive files, in `common/schema.py` column order."""
    return pa.schema(
        pa.field(c.name, arrow_type(c.type), nullable=bool(c.nullable),
                 metadata={"inferq.json": "true"} if isinstance(c.type, sa.JSON) else None)
        for c in archived_columns(name)
    )  # fmt: skip


def archive_path(root: Path, item: Item) -> Path:
    """``ROOT/predictions/day=2026-11-01/predictions_p20261101.parquet`` (hive-style)."""
    return root / item.table / f"day={item.day.isoformat()}" / f"{item.name}.parquet"


def source(name: str, relation: str) -> Any:
    """The rows of ``relation`` (a partition, or the table itself) with ``name``'s columns."""
    return sa.table(relation, *[sa.column(c.name, c.type) for c in TABLES[name].columns])


def count_rows(conn: Connection, src: Any, where: Any) -> int:
    """Rows of ``src`` (matching ``where``, when given)."""
    stmt = select(func.count()).select_from(src)
    return int(conn.execute(stmt if where is None else stmt.where(where)).scalar_one())


def _census(conn: Connection, item: Item, src: Any, where: Any) -> tuple[int, Any]:
    """Exact row count and the lineage (model versions from `model_versions`) in one scan."""
    vcols = [src.c[v] for v in ("model_version", "primary_version") if v in src.c]  # shadows
    stmt = select(src.c.model_name, *vcols, func.count()).group_by(src.c.model_name, *vcols)
    groups = conn.execute(stmt if where is None else stmt.where(where)).all()
    pairs = sorted({(g[0], v) for g in groups for v in g[1:-1]})
    mv = schema.model_versions
    known = {
        (r.name, r.version): r
        for r in conn.execute(select(mv).where(mv.c.name.in_(sorted({n for n, _ in pairs}))))
    }
    facts = ("sha256", "sklearn_version", "estimator", "created_at")
    lineage = [  # a version since deleted from the registry keeps only its name and number
        {"name": n, "version": v, **{f: getattr(known.get((n, v)), f, None) for f in facts}}
        for n, v in pairs
    ]
    return sum(g[-1] for g in groups), lineage


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def archive_one(conn: Connection, item: Item, root: Path, batch_rows: int = BATCH_ROWS) -> int:
    """Write ``item``'s rows to its Parquet file, checked; sets its exact rows and file.

    Run it in one transaction that sees a fixed set of rows (REPEATABLE READ, or a lock).
    """
    postgres = conn.dialect.name == "postgresql"
    src = source(item.table, item.name if postgres else item.table)
    where = None if postgres else src.c.day == item.day
    expected, lineage = _census(conn, item, src, where)
    path = archive_path(root, item)
    item.rows, item.exact, item.archive = expected, True, str(path) if expected else None
    if expected == 0:
        path.unlink(missing_ok=True)  # an empty day leaves no file
        return 0
    meta = {
        "inferq.table": item.table,
        "inferq.partition": item.name,
        "inferq.day": item.day.isoformat(),
        "inferq.rows": str(expected),
        "inferq.model_versions": json.dumps(lineage, default=dt.datetime.isoformat),
    }
    arrow = arrow_schema(item.table).with_metadata(meta)
    # JSON columns leave the database as their text: no parse + dump per row.
    cols = [
        sa.cast(src.c[c.name], sa.Text) if isinstance(c.type, sa.JSON) else src.c[c.name]
        for c in archived_columns(item.table)
    ]
    stmt = select(*cols) if where is None else select(*cols).where(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    # NOTE: yield_per = a server-side (named) cursor on psycopg: memory stays at one batch.
    result = conn.execute(stmt, execution_options={"yield_per": batch_rows})
    with pq.ParquetWriter(tmp, arrow) as writer:
        for rows in result.partitions():
            columns = list(zip(*rows, strict=True))
            arrays = [pa.array(col, type=f.type) for col, f in zip(columns, arrow, strict=True)]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=arrow))
            written += len(rows)
    _fsync(tmp)
    found = pq.ParquetFile(tmp).metadata.num_rows
    if found != expected or written != expected:
        tmp.unlink(missing_ok=True)
        raise ArchiveMismatch(item.name, path, expected, min(found, written))
    os.replace(tmp, path)
    _fsync(path.parent)  # the rename itself survives a crash
    return expected
