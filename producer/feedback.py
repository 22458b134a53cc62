"""Ground truth ("feedback"): true labels or values, loaded whenever they arrive.

A label refers to a prediction by its job id (``by="job"``: job ids are global, so it is stored
for model ``'*'`` unless a model is named) or by your own row key (``by="key"``: keys are only
unique within one model, so a model is required). It is stored as text in ``feedback.label``
and, when it reads as a finite number, also in ``feedback.value`` (regressors). The views of
migration 0008 (``prediction_feedback``, ``model_accuracy_daily``) join it to `predictions`.

Loading is an upsert keyed by (model, kind, ref): loading the same labels again changes
nothing (not even ``loaded_at``, which is when the label first had its current value); a
changed label replaces the old one. Within one load the last row of a ref wins.

Rows are staged in a temporary table chunk by chunk (COPY on Postgres, executemany on SQLite),
then compared with `feedback` and merged with a few set-based statements in the same
transaction (only new and changed labels are written): a load is all or nothing, and memory
stays bounded by one chunk whatever the input size.

Never imports scikit-learn (the producer side never does); pandas only for files.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inferq.common.contract import check_name
from inferq.common.errors import InvalidInput, ModelNotFound
from sqlalchemy import Connection, DateTime, Engine, bindparam, text

BY = ("job", "key")
ANY_MODEL = "*"
CHUNK_ROWS = 100_000
_STAGE = "inferq_stage_feedback"  # every row read (seq keeps the input order)
_INPUT = "inferq_feedback_in"  # one row per ref: the last one of the input
_HINT_SAMPLE = 1000


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """What one load did. ``rows_read = skipped + duplicates + new + changed + unchanged``,
    and ``matched + unmatched = new + changed + unchanged`` (the distinct refs loaded)."""

    source: str  # the file ("csv:/path", "parquet:/path") or "client"
    by: str  # 'job' | 'key'
    model: str  # the model the labels are for, '*' = any (job ids)
    rows_read: int
    skipped: int  # rows without a ref or without a label: not loaded
    duplicates: int  # rows whose ref appears again later in the input (the last one wins)
    new: int  # refs that had no label yet
    changed: int  # refs whose label or value changed
    unchanged: int  # refs that already had this very label
    matched: int  # refs that match a prediction now
    unmatched: int  # refs that match none (yet, or a wrong --by / --model: see hint)
    seconds: float
    hint: str | None = None  # set when no ref matches and they look like another kind

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for people."""
        model = "" if self.model == ANY_MODEL else f" of {self.model}"
        parts = [
            f"{self.rows_read:,} rows read from {self.source} (by {self.by}{model}): "
            f"{self.new:,} new, {self.changed:,} changed, {self.unchanged:,} unchanged",
        ]
        if self.skipped:
            parts.append(f"{self.skipped:,} skipped (no ref or no label)")
        if self.duplicates:
            parts.append(f"{self.duplicates:,} repeated refs (last row kept)")
        parts.append(f"{self.matched:,} match a prediction, {self.unmatched:,} do not")
        return "; ".join(parts) + f" ({self.seconds:.2f}s)"


# ----- public API ------------------------------------------------------------------------
def load_feedback(
    engine: Engine,
    rows: Iterable[tuple[Any, Any]],
    *,
    by: str,
    model: str | None,
    source: str,
) -> FeedbackReport:
    """Load (ref, label) pairs; refs are job ids (``by="job"``) or keys (``by="key"``, with
    ``model``). A missing ref or label (None, NaN, empty text) skips the row (counted)."""
    return _load(engine, _chunked(rows), by=by, model=model, source=source)


def load_pairs(
    engine: Engine,
    refs: Sequence[Any],
    labels: Sequence[Any],
    *,
    by: str = "job",
    model: str | None = None,
    source: str = "client",
) -> FeedbackReport:
    """``load_feedback`` for two parallel sequences (``InferenceClient.feedback``)."""
    refs, labels = _as_list(refs, "ids_or_keys"), _as_list(labels, "labels")
    if len(refs) != len(labels):
        raise InvalidInput(f"got {len(refs)} ids or keys for {len(labels)} labels")
    return load_feedback(engine, zip(refs, labels, strict=True), by=by, model=model,
                         source=source)  # fmt: skip


def load_file(
    engine: Engine,
    path: str | Path,
    key_column: str,
    label_column: str,
    *,
    by: str = "job",
    model: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> FeedbackReport:
    """Load the labels of a CSV (also .csv.gz) or Parquet file, streamed in chunks.

    ``key_column`` holds the job ids (``by="job"``) or your row keys (``by="key"``);
    ``label_column`` the true class (classifiers) or value (regressors). Read as text from a
    CSV (so ``00123`` keeps its zeros); Parquet values are turned into text the way
    `inferq score` turns ids into keys (``str(v)``).
    """
    from inferq.producer.sources import open_source

    _check_by(by, model)  # before reading anything
    if key_column == label_column:
        raise InvalidInput(f"the key column and the label column are both {key_column!r}")
    source = open_source(str(path), None, None, "")
    columns = source.columns()
    for what, name in (("key", key_column), ("label", label_column)):
        if name not in columns:
            shown = ", ".join(columns[:30]) + (" ..." if len(columns) > 30 else "")
            raise InvalidInput(
                f"{what} column {name!r} is not in {path} (its columns: {shown or 'none'})"
            )

    def chunks() -> Iterator[list[tuple[Any, Any]]]:
        frames = source.chunks(chunk_rows, [key_column, label_column], key_column,
                               text=[label_column])  # fmt: skip
        for frame in frames:
            yield list(zip(frame[key_column].tolist(), frame[label_column].tolist(),
                           strict=True))  # fmt: skip

    report = _load(engine, chunks(), by=by, model=model, source=source.description)
    if report.rows_read == 0:
        raise InvalidInput(f"{path} has no rows: nothing to load")
    return report


# ----- values ----------------------------------------------------------------------------
def _as_list(values: Any, what: str) -> list[Any]:
    if isinstance(values, str | bytes):
        raise InvalidInput(f"{what} must be a sequence of values, not one string")
    try:
        return list(values)
    except TypeError:
        raise InvalidInput(f"{what} must be a sequence, got {type(values).__name__}") from None


def _text(value: Any) -> str | None:
    """A ref or label as stored: text, None when missing (None, NaN, NA, empty)."""
    if value is None:
        return None
    if isinstance(value, str):
        out = value
    elif isinstance(value, float):  # also numpy floats (repr(np.float64) is not the number)
        if value != value:
            return None
        out = repr(float(value))
    elif isinstance(value, bytes):
        out = value.decode("utf-8", "replace")
    elif type(value).__name__ in {"NAType", "NaTType"}:  # pandas' missing markers
        return None
    else:  # int, bool, numpy scalars (str(np.int64(1)) == "1", str(np.True_) == "True")
        out = str(value)
    if not out.strip():
        return None
    # NOTE: Postgres text cannot hold NUL (same replacement as the workers' COPY).
    return out.replace("\x00", "\ufffd") if "\x00" in out else out


def _number(label: str) -> float | None:
    """The label as a finite float (a regressor's true value), else None."""
    try:
        value = float(label)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _chunked(rows: Iterable[tuple[Any, Any]]) -> Iterator[list[tuple[Any, Any]]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, CHUNK_ROWS)):
        yield chunk


@dataclass(slots=True)
class _Reading:
    """Turns raw (ref, label) pairs into staged rows, counting what it reads and skips."""

    rows_read: int = 0
    skipped: int = 0

    def staged(self, chunk: list[tuple[Any, Any]]) -> list[tuple[int, str, str, float | None]]:
        out = []
        seq = self.rows_read
        for pair in chunk:
            try:
                raw_ref, raw_label = pair
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"row {seq}: expected a (ref, label) pair, got {pair!r:.80}"
                ) from None
            ref, label = _text(raw_ref), _text(raw_label)
            if ref is None or label is None:
                self.skipped += 1
            else:
                out.append((seq, ref, label, _number(label)))
            seq += 1
        self.rows_read = seq
        return out


# ----- the load --------------------------------------------------------------------------
def _check_by(by: str, model: str | None) -> str:
    if by not in BY:
        raise InvalidInput(f"by (--by) must be 'job' or 'key', got {by!r}")
    if model is None:
        if by == "key":
            raise InvalidInput(
                "loading by key needs the model (--model NAME): keys are your own row ids "
                "and are only unique within one model"
            )
        return ANY_MODEL
    return check_name(model)


def _load(
    engine: Engine,
    chunks: Iterable[list[tuple[Any, Any]]],
    *,
    by: str,
    model: str | None,
    source: str,
) -> FeedbackReport:
    started = time.perf_counter()
    model_name = _check_by(by, model)
    postgres = engine.dialect.name == "postgresql"
    reading = _Reading()
    with engine.begin() as conn:
        if model_name != ANY_MODEL and not _registered(conn, model_name):
            raise ModelNotFound(model_name)
        _stage(conn, chunks, reading, postgres)
        counts = _classify(conn, by, model_name, postgres)
        _upsert(conn, by, model_name, source, postgres)
        distinct = counts["new"] + counts["changed"] + counts["same"]
        matched = _matched(conn, by, model_name)
        hint = _hint(conn, by, model_name) if matched == 0 and distinct else None
        _drop_temp(conn, postgres)
    return FeedbackReport(
        source=source,
        by=by,
        model=model_name,
        rows_read=reading.rows_read,
        skipped=reading.skipped,
        duplicates=reading.rows_read - reading.skipped - distinct,
        new=counts["new"],
        changed=counts["changed"],
        unchanged=counts["same"],
        matched=matched,
        unmatched=distinct - matched,
        seconds=round(time.perf_counter() - started, 3),
        hint=hint,
    )


def _registered(conn: Connection, name: str) -> bool:
    found = conn.execute(
        text("SELECT 1 FROM model_versions WHERE name = :name LIMIT 1"), {"name": name}
    ).first()
    return found is not None


def _stage(
    conn: Connection, chunks: Iterable[list[tuple[Any, Any]]], reading: _Reading, postgres: bool
) -> None:
    """Every readable row into the stage table, in input order."""
    columns = "seq bigint, ref text, label text, value double precision"
    if postgres:
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cur.execute(f"CREATE TEMP TABLE {_STAGE} ({columns}) ON COMMIT DROP")
        # NOTE: one COPY for the whole input, fed chunk by chunk as the file is read; an
        # unreadable chunk aborts the COPY and the transaction (nothing is loaded).
        with cur.copy(f"COPY {_STAGE} (seq, ref, label, value) FROM STDIN") as copy:
            for chunk in chunks:
                for row in reading.staged(chunk):
                    copy.write_row(row)
        cur.execute(f"ANALYZE {_STAGE}")  # temp tables are never auto-analyzed
        return
    _drop_temp(conn, postgres)  # a pooled SQLite connection keeps its temp tables
    conn.exec_driver_sql(f"CREATE TEMP TABLE {_STAGE} ({columns})")
    for chunk in chunks:
        staged = reading.staged(chunk)
        if staged:
            conn.exec_driver_sql(f"INSERT INTO {_STAGE} VALUES (?, ?, ?, ?)", staged)


def _classify(conn: Connection, by: str, model: str, postgres: bool) -> dict[str, int]:
    """One row per ref (the last one read) into _INPUT, with its state against `feedback`:
    'new', 'changed' or 'same'; returns how many of each."""
    differs = "IS DISTINCT FROM" if postgres else "IS NOT"
    if postgres:
        last = f"SELECT DISTINCT ON (ref) ref, label, value FROM {_STAGE} ORDER BY ref, seq DESC"
    else:
        last = (
            "SELECT ref, label, value FROM (SELECT ref, label, value, row_number() OVER "
            f"(PARTITION BY ref ORDER BY seq DESC) AS n FROM {_STAGE}) AS r WHERE n = 1"
        )
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE {_INPUT} (ref text, label text, value double precision, state text)"
        + (" ON COMMIT DROP" if postgres else "")
    )
    conn.execute(
        text(
            f"INSERT INTO {_INPUT} (ref, label, value, state) "
            "SELECT s.ref, s.label, s.value, CASE WHEN f.ref IS NULL THEN 'new' "
            f"WHEN f.label {differs} s.label OR f.value {differs} s.value THEN 'changed' "
            f"ELSE 'same' END FROM ({last}) AS s LEFT JOIN feedback f "
            "ON f.model_name = :model AND f.ref_kind = :kind AND f.ref = s.ref"
        ),
        {"model": model, "kind": by},
    )
    if postgres:
        conn.exec_driver_sql(f"ANALYZE {_INPUT}")
    counts = dict.fromkeys(("new", "changed", "same"), 0)
    for state, n in conn.execute(text(f"SELECT state, count(*) FROM {_INPUT} GROUP BY state")):
        counts[state] = int(n)
    return counts


def _drop_temp(conn: Connection, postgres: bool) -> None:
    if not postgres:  # Postgres: ON COMMIT DROP
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{_INPUT}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{_STAGE}")


def _upsert(conn: Connection, by: str, model: str, source: str, postgres: bool) -> None:
    """New and changed labels into `feedback`; the same labels are not even touched (a
    reload of a big file is a read, and loaded_at stays when the label got its value)."""
    differs = "IS DISTINCT FROM" if postgres else "IS NOT"
    # NOTE: the ON CONFLICT branch is for a concurrent load of the same refs. "AND true"
    # keeps SQLite from reading ON CONFLICT as part of a join in INSERT ... SELECT.
    upsert = text(
        "INSERT INTO feedback (model_name, ref_kind, ref, label, value, loaded_at, source) "
        f"SELECT :model, :kind, ref, label, value, :now, :source FROM {_INPUT} "
        "WHERE state <> 'same' AND true "
        "ON CONFLICT (model_name, ref_kind, ref) DO UPDATE SET label = excluded.label, "
        "value = excluded.value, loaded_at = excluded.loaded_at, source = excluded.source "
        f"WHERE feedback.label {differs} excluded.label "
        f"OR feedback.value {differs} excluded.value"
    ).bindparams(bindparam("now", type_=DateTime(timezone=True)))
    conn.execute(upsert, {"model": model, "kind": by, "now": dt.datetime.now(dt.UTC),
                          "source": source})  # fmt: skip


def _matched(conn: Connection, by: str, model: str) -> int:
    """How many loaded refs match a prediction now."""
    if by == "job":
        same = "" if model == ANY_MODEL else " AND p.model_name = :model"
        where = f"p.job_id = s.ref{same}"
    else:
        where = "p.key = s.ref AND p.model_name = :model"
    query = (
        f"SELECT count(*) FROM {_INPUT} s WHERE EXISTS (SELECT 1 FROM predictions p WHERE {where})"
    )
    return int(conn.execute(text(query), {"model": model}).scalar_one())


def _hint(conn: Connection, by: str, model: str) -> str | None:
    """No ref matched: are the first refs job ids or keys of some model (a wrong --by or
    --model)? The kind and model most of them match, as a fix to try."""
    sample = f"(SELECT ref FROM {_INPUT} ORDER BY ref LIMIT {_HINT_SAMPLE}) AS s"
    found = []  # (hits, kind, model)
    for kind, column in (("job", "job_id"), ("key", "key")):
        row = conn.execute(
            text(
                f"SELECT count(DISTINCT s.ref) AS n, p.model_name FROM {sample} "
                f"JOIN predictions p ON p.{column} = s.ref "
                "GROUP BY p.model_name ORDER BY n DESC, p.model_name LIMIT 1"
            )
        ).first()
        if row is not None:
            found.append((int(row[0]), kind, str(row[1])))
    if not found:
        return None
    hits, kind, other = max(found)
    total = conn.execute(text(f"SELECT count(*) FROM {sample}")).scalar_one()
    if kind == "job":
        what, fix = "job ids", "--by job" + ("" if model == ANY_MODEL else f" --model {other}")
    else:
        what, fix = "keys", f"--by key --model {other}"
    return (
        f"no ref matches a prediction (by {by}), but {hits} of the first {total} are {what} "
        f"of model {other}: load them with {fix}"
    )
