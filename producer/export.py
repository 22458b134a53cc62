"""Results out as files: one bulk run, or one model's jobs over a time window.

`inferq results RUN_ID -o preds.parquet`, `inferq results --model churn --since 1h -o x.csv`
and `inferq score ... --output FILE` all come here. Rows leave the database through a
server-side cursor (psycopg: a named cursor; SQLite: a plain cursor read in blocks), and each
block becomes one Arrow record batch written at once: memory stays at one block whatever the
run's size. A file is written under a temporary name and renamed when complete, so a file
with the final name is never half written.

Columns (README "Results as files"): the row's number in its input, its id (named after the
run's id column), the outcome (status, label, score, one ``proba_<class>`` column per class,
error, error_code) and the lineage (model, version, runtime, run, batch, worker, times).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from inferq.common.errors import InvalidInput
from inferq.common.failures import translated
from inferq.common.schema import model_versions, predictions, scoring_runs
from inferq.producer.runs import run_rows
from sqlalchemy import Engine, and_, case, cast, select

#: Rows per fetch and per Arrow record batch: what bounds memory.
BLOCK_ROWS = 50_000
#: Up to this many classes get one ``proba_<class>`` column each; beyond, one JSON column.
MAX_PROBA_COLUMNS = 50
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".gz": "csv.gz"}
STATUSES = ("ok", "error")

_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which rows: a run's, or a model's scored in [since, until)."""

    run_id: str | None = None
    model: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    status: str | None = None  # 'ok' | 'error' | None (both)

    def describe(self) -> str:
        """How messages name the selection."""
        if self.run_id:
            what = f"run {self.run_id}"
        else:
            what = f"model {self.model}"
            if self.since:
                what += f" since {self.since:%Y-%m-%d %H:%M:%S} UTC"
            if self.until:
                what += f" until {self.until:%Y-%m-%d %H:%M:%S} UTC"
        return what + (f" ({self.status} rows)" if self.status else "")


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What one export wrote."""

    rows: int
    path: str  # "-" for stdout
    format: str
    columns: list[str]
    seconds: float
    bytes: int | None
    #: The run's status when it was exported (None for a time window).
    run_status: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def output_format(path: str | None) -> str:
    """'parquet', 'csv' or 'csv.gz' from the output's name (stdout: csv); a clear error for
    a name it cannot write."""
    if path in (None, "-"):
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix == ".gz" and not str(path).lower().endswith(".csv.gz"):
        suffix = ""
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise InvalidInput(
            f"cannot tell the format of {path!r}: name it .parquet, .csv or .csv.gz "
            "(or - for CSV on stdout)"
        )
    final = Path(path)
    if final.is_dir():
        raise InvalidInput(f"{path} is a directory: give a file name (.parquet, .csv)")
    if not final.parent.is_dir():
        raise InvalidInput(f"cannot write {path}: folder {final.parent} does not exist")
    return fmt


def _run_facts(conn: Any, run_id: str) -> Any:
    row = conn.execute(
        select(scoring_runs.c.model_name, scoring_runs.c.model_version, scoring_runs.c.id_column,
               scoring_runs.c.status, scoring_runs.c.total_rows, scoring_runs.c.started_at)
        .where(scoring_runs.c.run_id == run_id)
    ).first()  # fmt: skip
    if row is None:
        raise InvalidInput(f"no run {run_id!r} (`inferq runs` lists them)")
    return row


def _classes(conn: Any, model: str, version: int | None) -> list[str] | None:
    """The union of the classes of the model's versions that give probabilities ([] for a
    regressor or a model without them; None when too many for one column each)."""
    # Only versions with probabilities: an outlier detector's -1/1 or KMeans' cluster ids
    # are labels, not columns that would stay empty.
    stmt = select(model_versions.c.classes).where(
        model_versions.c.name == model, model_versions.c.has_proba == 1
    )
    if version is not None:
        stmt = stmt.where(model_versions.c.version == version)
    seen: dict[str, None] = {}
    for (classes,) in conn.execute(stmt):
        if isinstance(classes, str):  # some drivers hand JSON back as text
            classes = json.loads(classes)
        for c in classes or ():
            seen[str(c)] = None
    return None if len(seen) > MAX_PROBA_COLUMNS else list(seen)


def _proba_column(cls: str) -> Any:
    """P(cls) for a row: from its stored probabilities, or for a binary classifier's ok row
    (which stores only the score, P(classes[1])) from the score."""
    p, mv = predictions.c, model_versions.c
    binary = and_(p.probabilities.is_(None), p.status == "ok", p.score.is_not(None),
                  mv.has_proba == 1)  # fmt: skip
    return case(
        (p.probabilities.is_not(None), p.probabilities[cls].as_float()),
        (and_(binary, mv.classes[1].as_string() == cls), p.score),
        (and_(binary, mv.classes[0].as_string() == cls), 1 - p.score),
        else_=None,
    )


def _columns(key_name: str, classes: list[str] | None) -> list[tuple[str, Any, pa.DataType]]:
    """(output name, SQL expression, Arrow type) of every exported column, in order."""
    p = predictions.c
    cols: list[tuple[str, Any, pa.DataType]] = [
        ("row_no", p.row_no, pa.int64()),
        (key_name, p.key, pa.string()),
        ("job_id", p.job_id, pa.string()),
        ("status", p.status, pa.string()),
        ("label", p.label, pa.string()),
        ("score", p.score, pa.float64()),
    ]
    if classes is not None:
        cols += [(f"proba_{c}", _proba_column(c), pa.float64()) for c in classes]
    else:
        cols.append(("probabilities", cast(p.probabilities, sa.Text), pa.string()))
    cols += [
        ("error", p.error, pa.string()),
        ("error_code", p.error_code, pa.string()),
        ("model_name", p.model_name, pa.string()),
        ("model_version", p.model_version, pa.int32()),
        ("runtime", p.runtime, pa.string()),
        ("run_id", p.run_id, pa.string()),
        ("batch_id", p.batch_id, pa.string()),
        ("worker", p.worker, pa.string()),
        ("submitted_at", p.submitted_at, _TS),
        ("scored_at", p.scored_at, _TS),
    ]
    names = [n for n, _, _ in cols]
    if len(set(names)) != len(names):  # an id column called e.g. "score": keep it "key"
        return _columns("key", classes) if key_name != "key" else cols
    return cols


def _query(conn: Any, sel: Selection) -> tuple[Any, list[tuple[str, Any, pa.DataType]], Any]:
    """(SELECT, columns, the run's facts or None) for a selection."""
    p = predictions.c
    facts = None
    if sel.run_id:
        facts = _run_facts(conn, sel.run_id)
        cols = _columns(facts.id_column or "key", _classes(conn, facts.model_name,
                                                           facts.model_version))  # fmt: skip
        where: list[Any] = [run_rows(sel.run_id)]
        order = [p.row_no.asc().nulls_last(), p.job_id]
    else:
        if not sel.model:
            raise InvalidInput("give a run id, or --model NAME with --since (a time window)")
        cols = _columns("key", _classes(conn, sel.model, None))
        where = [p.model_name == sel.model]
        if sel.since:
            where.append(p.scored_at >= sel.since)
        if sel.until:
            where.append(p.scored_at < sel.until)
        order = [p.submitted_at, p.row_no.asc().nulls_last(), p.job_id]
    if sel.status:
        where.append(p.status == sel.status)
    mv = model_versions.c
    stmt = (
        select(*(expr.label(f"c{i}") for i, (_, expr, _) in enumerate(cols)))
        .select_from(
            predictions.outerjoin(
                model_versions, and_(mv.name == p.model_name, mv.version == p.model_version)
            )
        )
        .where(*where)
        .order_by(*order)
    )
    return stmt, cols, facts


def _sink(path: str | None, fmt: str) -> tuple[BinaryIO | Any, Path | None]:
    """(stream to write to, temporary file to rename when complete or None for stdout)."""
    if path in (None, "-"):
        return sys.stdout.buffer, None
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    if fmt == "csv.gz":
        return pa.CompressedOutputStream(str(tmp), "gzip"), tmp
    return pa.OSFile(str(tmp), "wb"), tmp


def export_results(
    engine: Engine,
    sel: Selection,
    path: str | None,
    *,
    block_rows: int = BLOCK_ROWS,
    on_rows: Any = None,
) -> ExportReport:
    """Write the selected rows to ``path`` (.parquet, .csv, .csv.gz; None or "-": CSV on
    stdout), in input order for a run, submission order for a window."""
    fmt = output_format(path)
    if sel.status is not None and sel.status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not {sel.status!r}")
    started = time.monotonic()
    with translated(database_url=str(engine.url)), engine.connect() as conn:
        stmt, cols, facts = _query(conn, sel)
        schema = pa.schema([pa.field(name, kind) for name, _, kind in cols])
        meta = {"inferq.selection": sel.describe()}
        if facts is not None:
            meta["inferq.model"] = f"{facts.model_name}@{facts.model_version}"
        stream, tmp = _sink(path, fmt)
        rows = 0
        try:
            if fmt == "parquet":
                writer: Any = pq.ParquetWriter(stream, schema.with_metadata(meta))
            else:
                writer = pacsv.CSVWriter(stream, schema)
            with writer:
                # NOTE: yield_per = a server-side (named) cursor on psycopg: one block held.
                result = conn.execution_options(yield_per=block_rows).execute(stmt)
                for block in result.partitions():
                    columns = list(zip(*block, strict=True))
                    arrays = [_array(col, kind) for col, kind in
                              zip(columns, schema.types, strict=True)]  # fmt: skip
                    writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                    rows += len(block)
                    if on_rows is not None:
                        on_rows(rows)
            if tmp is not None:
                stream.close()
                os.replace(tmp, path)  # type: ignore[arg-type]
        except BaseException:
            if tmp is not None:
                stream.close()
                tmp.unlink(missing_ok=True)
            raise
    size = os.path.getsize(path) if tmp is not None else None  # type: ignore[arg-type]
    return ExportReport(
        rows=rows, path=str(path or "-"), format=fmt, columns=schema.names,
        seconds=round(time.monotonic() - started, 3), bytes=size,
        run_status=facts.status if facts is not None else None,
    )  # fmt: skip


def _array(values: tuple[Any, ...], kind: pa.DataType) -> pa.Array:
    if kind == _TS:  # SQLite hands timestamps back naive (they are UTC)
        values = tuple(
            v.replace(tzinfo=dt.UTC) if v is not None and v.tzinfo is None else v for v in values
        )
    return pa.array(values, type=kind)


__all__ = ["BLOCK_ROWS", "ExportReport", "Selection", "export_results", "output_format"]
