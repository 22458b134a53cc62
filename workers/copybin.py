"""The result rows as a COPY ... (FORMAT BINARY) payload: what Postgres parses fastest.

Measured on this machine (ARCHITECTURE.md "Time partitions and the cost of a row"): the same
200k rows COPYed as text cost Postgres about twice the time of binary, because every
timestamp, float, integer and date in text must be parsed, and the worker's text escaping
goes too. Built column-wise like the text payload was: each column is turned into a list of
ready fields (4-byte length + value) once, fields constant over a batch are encoded once,
and every row is a join of those pieces.

Binary COPY (Postgres docs, "Binary Format"): a header, then per row a 16-bit field count and
per field a 32-bit length (-1 = NULL) and the value in the type's binary send format;
timestamps are microseconds and dates days since 2000-01-01, numbers big-endian.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from typing import Any

import numpy as np
from inferq.common.contract import code_of
from inferq.workers.inference import ScoredBatch

COLUMNS = (
    "job_id", "run_id", "key", "model_name", "model_version", "status", "label", "score",
    "probabilities", "error", "submitted_at", "scored_at", "worker", "batch_id", "error_code",
    "runtime", "day", "row_no",
)  # fmt: skip
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"
_ROW = struct.pack(">h", len(COLUMNS))  # each row starts with its number of fields
_LEN = [struct.pack(">i", i) for i in range(256)]
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_EPOCH_DAY = dt.date(2000, 1, 1)


def _sized(data: bytes) -> bytes:
    """One field: its length, then its bytes."""
    return (_LEN[len(data)] if len(data) < 256 else struct.pack(">i", len(data))) + data


def text_field(value: str | None) -> bytes:
    """A text field (NULL for None)."""
    if value is None:
        return NULL
    # NOTE: Postgres text cannot hold NUL: it becomes U+FFFD instead of failing the batch.
    return _sized(value.replace("\x00", "\ufffd").encode())


def text_fields(values: list[str | None]) -> list[bytes]:
    """A column of text fields; values repeated in the column (labels, codes) encoded once."""
    cache: dict[str | None, bytes] = {}
    out = []
    for v in values:
        field = cache.get(v)
        if field is None:
            field = cache[v] = text_field(v)
        out.append(field)
    return out


def unique_text_fields(values: list[str | None]) -> list[bytes]:
    """A column of mostly distinct text (job ids, keys): no cache."""
    if "\x00" in "".join(v for v in values if v is not None):
        return [text_field(v) for v in values]
    sized = _LEN
    return [
        NULL if v is None else (sized[len(b)] + b if len(b) < 256 else _sized(b))
        for v in values
        for b in (v.encode() if v is not None else b"",)
    ]


def _eight_byte_fields(values: Any, kind: str) -> list[bytes]:
    """8-byte fields (length 8, then the big-endian value ``kind`` ``>f8``/``>i8``), built
    as one numpy record array and sliced: no per-value struct.pack."""
    n = len(values)
    rec = np.empty(n, dtype=[("size", ">i4"), ("value", kind)])
    rec["size"] = 8
    rec["value"] = values
    raw = rec.tobytes()
    return [raw[i : i + 12] for i in range(0, 12 * n, 12)]


def float_fields(values: Any) -> list[bytes]:
    """float8 fields, bit-exact; NaN (no value) is NULL."""
    out = _eight_byte_fields(values, ">f8")
    for i in np.flatnonzero(np.isnan(values)).tolist():
        out[i] = NULL
    return out


def int8_fields(values: Any) -> list[bytes]:
    """int8 fields (no NULLs)."""
    return _eight_byte_fields(values, ">i8")


def int4(value: int) -> bytes:
    """An int4 field."""
    return struct.pack(">ii", 4, value)


def timestamptz(moment: dt.datetime) -> bytes:
    """A timestamptz field: microseconds since 2000-01-01 UTC."""
    return struct.pack(">iq", 8, (moment - _EPOCH) // dt.timedelta(microseconds=1))


def date_field(day: dt.date) -> bytes:
    """A date field: days since 2000-01-01."""
    return struct.pack(">ii", 4, (day - _EPOCH_DAY).days)


def proba_and_score_fields(scored: ScoredBatch) -> tuple[list[bytes], list[bytes]]:
    """(probabilities as jsonb, score) fields.

    A binary classifier whose score is P(classes_[1]) stores no probabilities: the other one
    is 1 - score (the `predictions_full` view and the client's Result fill it in), which
    saves Postgres a jsonb parse and ~60 bytes per row.
    """
    n = len(scored.ok)
    scores = float_fields(scored.scores) if scored.scores is not None else [NULL] * n
    if scored.proba is None or scored.classes is None:
        return [NULL] * n, scores
    if (
        len(scored.classes) == 2
        and scored.scores is not None
        and np.array_equal(scored.scores, scored.proba[:, 1], equal_nan=True)
    ):
        return [NULL] * n, scores  # error rows' NaN scores are NULL
    keys = [json.dumps(c) for c in scored.classes]
    # jsonb's binary send format: a version byte (1), then the document as text. repr() is
    # the shortest text that reads back as the same double: probabilities round-trip exactly.
    docs = [
        _sized(b"\x01" + ("{" + ", ".join(f"{k}: {v!r}" for k, v in zip(keys, row, strict=True))
                          + "}").encode())
        for row in scored.proba.tolist()
    ]  # fmt: skip
    if scored.n_ok < n:  # error rows carry NaN placeholders: NULL them
        for i in np.flatnonzero(~scored.ok).tolist():
            docs[i] = scores[i] = NULL
    return docs, scores


def copy_payload(
    scored: ScoredBatch, worker: str, now: dt.datetime, days: list[dt.date] | None = None
) -> bytes:
    """The batch's rows in COPY's binary format (no header: :func:`copy_rows` adds it, so
    several batches' rows join into one COPY), in COLUMNS order; ``days`` overrides the
    batch's partition day row by row (rows whose job id already lives on another day)."""
    b = scored.batch
    n = b.n_rows
    ids = unique_text_fields(list(b.job_ids))
    keys = unique_text_fields(b.keys) if b.keys is not None else [NULL] * n
    all_ok = scored.n_ok == n
    ok_field, error_field = text_field("ok"), text_field("error")
    status = [ok_field] * n if all_ok else [ok_field if v else error_field
                                            for v in scored.ok.tolist()]  # fmt: skip
    if scored.labels is None:
        labels = [NULL] * n
    else:
        labels = text_fields(scored.labels if all_ok else scored.label)
    probs, scores = proba_and_score_fields(scored)
    if scored.errors:
        messages = [scored.errors.get(i) for i in range(n)]
        errors = [text_field(m) for m in messages]
        codes = text_fields([None if m is None else str(code_of(m)) for m in messages])
    else:
        errors = codes = [NULL] * n
    submitted = dt.datetime.fromtimestamp(b.submitted_at, dt.UTC)
    run = text_field(b.run_id)
    middle = text_field(scored.model_name) + int4(scored.model_version)
    tail = (timestamptz(submitted) + timestamptz(now) + text_field(worker)
            + text_field(b.batch_id))  # fmt: skip
    end = text_field(scored.runtime)
    day_fields = (
        [date_field(b.partition_day)] * n if days is None else [date_field(d) for d in days]
    )
    numbers = int8_fields(row_numbers(b))
    parts: list[bytes] = []
    extend = parts.extend
    for i, k, st, lb, sc, pr, er, cd, d, no in zip(
        ids, keys, status, labels, scores, probs, errors, codes, day_fields, numbers, strict=True
    ):
        extend((_ROW, i, run, k, middle, st, lb, sc, pr, er, tail, cd, end, d, no))
    return b"".join(parts)


def row_numbers(batch: Any) -> Any:
    """Each row's number as its producer knows it (`predictions.row_no`): the input row of a
    bulk run, the position in a submit() call online (coalesced batches carry them)."""
    if batch.row_numbers is not None:
        return np.asarray(batch.row_numbers, dtype=np.int64)
    return np.arange(batch.row_offset, batch.row_offset + batch.n_rows, dtype=np.int64)


def row_start(n_fields: int) -> bytes:
    """What starts each row of a table with ``n_fields`` columns."""
    return struct.pack(">h", n_fields)


def copy_rows(cursor: Any, table: str, payload: bytes, columns: tuple[str, ...] = COLUMNS) -> None:
    """COPY rows made by :func:`copy_payload` (or the same format for ``columns``) into
    ``table``."""
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    with cursor.copy(sql) as copy:
        copy.write(HEADER)
        copy.write(payload)
        copy.write(TRAILER)
