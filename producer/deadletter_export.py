"""Dead letters out as a file (`inferq dead-letters export`) and purged (`... purge`).

Export writes one row per job of each dead-lettered batch: its batch, reason, job id, key,
row number, and its features as the message carried them, named after the model version's
input schema, so a person can look at the rows, fix them and submit them again. A payload is
decoded with the message contract's own checks (common/contract.py: msgpack, never pickle,
every field validated) because it came from the broker and is untrusted; a batch that does
not decode still gets one row, with the reason in ``payload_error``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from inferq.common import contract
from inferq.common.errors import ContractError, InvalidInput
from inferq.common.schema import dead_letters, prediction_batches
from sqlalchemy import ColumnElement, Engine, delete, select

#: Columns before the features; a feature with one of these names gets a "feature:" prefix.
META_COLUMNS = ("batch_id", "run_id", "model", "version", "dead_lettered_at", "deliveries",
                "reason", "row", "job_id", "key", "row_error", "payload_error")  # fmt: skip
#: Text cells a spreadsheet would run as a formula start with one of these (CSV only).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(slots=True)
class ExportReport:
    """What `export` wrote."""

    path: str
    format: str
    batches: int = 0
    rows: int = 0
    unreadable: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"path": self.path, "format": self.format, "batches": self.batches,
                "rows": self.rows, "unreadable": self.unreadable,
                "not_found": self.not_found}  # fmt: skip


def file_format(path: Path) -> str:
    """'csv' or 'parquet' from the file name, else a clear error."""
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise InvalidInput(f"cannot tell the format of {str(path)!r}: name it .csv or .parquet")
    return found


def _feature_names(engine: Engine, model: str, version: int, width: int) -> list[str]:
    """The version's feature names when its schema has ``width`` features, else f0, f1..."""
    from inferq.models import registry

    try:
        names = registry.get_version(engine, model, version).schema.names
    except Exception:  # unregistered or unreadable: the numbers still tell the columns
        names = []
    if len(names) != width:
        names = [f"f{i}" for i in range(width)]
    return [f"feature:{n}" if n in META_COLUMNS else n for n in names]


def letter_frame(engine: Engine, letter: Any) -> tuple[Any, bool]:
    """One dead letter as (DataFrame, readable): a row per job, or one row whose
    ``payload_error`` says why the payload could not be decoded."""
    import pandas as pd

    meta = {"batch_id": letter.batch_id, "run_id": letter.run_id, "model": letter.model_name,
            "version": letter.model_version, "dead_lettered_at": letter.created_at,
            "deliveries": letter.deliveries, "reason": letter.reason}  # fmt: skip
    try:
        batch = contract.decode_batch(msgpack.unpackb(letter.payload, raw=False))
    except (ContractError, ValueError, TypeError) as exc:  # msgpack raises ValueError kinds
        unreadable = {**meta, "payload_error": f"{type(exc).__name__}: {exc}"}
        return pd.DataFrame([{c: unreadable.get(c) for c in META_COLUMNS}]), False
    n, width = batch.n_rows, batch.n_features
    columns: dict[str, Any] = {key: [value] * n for key, value in meta.items()}
    columns["model"], columns["version"] = [batch.model] * n, [batch.version] * n
    columns["row"] = [batch.row_number(i) for i in range(n)]
    columns["job_id"] = batch.job_ids
    columns["key"] = batch.keys if batch.keys is not None else [None] * n
    columns["row_error"] = [
        str(batch.row_errors[i]) if i in batch.row_errors else None for i in range(n)
    ]
    columns["payload_error"] = [None] * n
    names = _feature_names(engine, batch.model, batch.version, width)
    text_at = dict(zip(batch.text_positions, batch.text or [], strict=True))
    numeric = [j for j in range(width) if j not in text_at]
    for k, j in enumerate(numeric):
        columns[names[j]] = batch.x[:, k]
    for j, values in text_at.items():
        columns[names[j]] = values
    ordered = list(META_COLUMNS) + names
    return pd.DataFrame({c: columns.get(c, [None] * n) for c in ordered}), True


def _selection(batch_ids: list[str] | None) -> list[ColumnElement[bool]]:
    return [] if batch_ids is None else [dead_letters.c.batch_id.in_(batch_ids)]


def export(engine: Engine, path: Path, batch_ids: list[str] | None = None) -> ExportReport:
    """Write the dead letters (all, or ``batch_ids``) to ``path`` (.csv or .parquet)."""
    import pandas as pd

    fmt = file_format(path)
    t = dead_letters.c
    with engine.connect() as conn:
        ids = conn.scalars(
            select(t.batch_id).where(*_selection(batch_ids)).order_by(t.created_at, t.batch_id)
        ).all()
    report = ExportReport(str(path), fmt)
    report.not_found = [b for b in batch_ids or [] if b not in set(ids)]
    frames = []
    for batch_id in ids:  # one payload in memory at a time while decoding
        with engine.connect() as conn:
            letter = conn.execute(select(dead_letters).where(t.batch_id == batch_id)).first()
        if letter is None:  # replayed or purged meanwhile
            continue
        frame, readable = letter_frame(engine, letter)
        frames.append(frame)
        report.batches += 1
        if readable:
            report.rows += len(frame)
        else:
            report.unreadable.append(batch_id)
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=META_COLUMNS)
    for column in ("version", "deliveries", "row"):  # integers, null for unreadable letters
        data[column] = data[column].astype("Int64")
    for column in data.columns[len(META_COLUMNS) :]:
        data[column] = _one_kind(data[column])
    _write(data, path, fmt)
    return report


def _one_kind(column: Any) -> Any:
    """A feature that is a number in one model and text in another becomes text."""
    from pandas.api.types import is_object_dtype

    if not is_object_dtype(column):
        return column
    kinds = {type(v) for v in column.dropna()}
    return column if len(kinds) <= 1 else column.map(lambda v: None if v is None else str(v))


def _write(data: Any, path: Path, fmt: str) -> None:
    """Write next to ``path`` and rename: a failed export never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            data.to_parquet(tmp, index=False)
        else:
            from pandas.api.types import is_object_dtype, is_string_dtype

            guarded = data.copy()
            for column in guarded.columns:
                if is_object_dtype(guarded[column]) or is_string_dtype(guarded[column]):
                    guarded[column] = guarded[column].map(_csv_safe)
            guarded.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _csv_safe(value: Any) -> Any:
    """Untrusted text a spreadsheet would run as a formula gets a leading ' (OWASP)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


# ----- purge ---------------------------------------------------------------------------
@dataclass(slots=True)
class PurgePlan:
    """The dead letters a purge removes (or removed)."""

    batch_ids: list[str]
    rows: int
    #: Of those, the batches whose jobs have no result row: purging them loses those rows.
    unanswered: list[str]
    not_found: list[str] = field(default_factory=list)
    removed: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"batches": len(self.batch_ids), "rows": self.rows, "removed": self.removed,
                "batch_ids": self.batch_ids, "unanswered": self.unanswered,
                "not_found": self.not_found}  # fmt: skip


def plan_purge(
    engine: Engine, batch_ids: list[str] | None, older_than: dt.timedelta | None = None
) -> PurgePlan:
    """What a purge of ``batch_ids`` (None: all), or of letters older than ``older_than``,
    would remove."""
    t = dead_letters.c
    where = _selection(batch_ids)
    if older_than is not None:
        where.append(t.created_at < dt.datetime.now(dt.UTC) - older_than)
    with engine.connect() as conn:
        found = dict(conn.execute(select(t.batch_id, t.n_rows).where(*where)).all())
        answered = set(
            conn.scalars(
                select(prediction_batches.c.batch_id).where(
                    prediction_batches.c.batch_id.in_(list(found))
                )
            )
        )
    ids = sorted(found)
    return PurgePlan(
        batch_ids=ids,
        rows=sum(found.values()),
        unanswered=[b for b in ids if b not in answered],
        not_found=[b for b in batch_ids or [] if b not in found],
    )


def purge(engine: Engine, plan: PurgePlan) -> PurgePlan:
    """Remove the planned letters still there (one replayed meanwhile is not counted)."""
    t = dead_letters.c
    with engine.begin() as conn:
        gone = conn.execute(
            delete(dead_letters)
            .where(t.batch_id.in_(plan.batch_ids))
            .returning(t.batch_id, t.n_rows)
        ).all()
    plan.batch_ids = sorted(b for b, _ in gone)
    plan.rows = sum(n for _, n in gone)
    plan.unanswered = [b for b in plan.unanswered if b in set(plan.batch_ids)]
    plan.removed = True
    return plan
