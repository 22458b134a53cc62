"""The message contract between producers and workers: task names, queues, payload schema.

A score message is one Celery task call ``SCORE_BATCH(**payload)`` serialized with Celery's
``msgpack`` serializer. The number features travel as raw little-endian float64 bytes plus
their shape, never as JSON lists of floats and never as pickle; category features, when the
model has any, as msgpack arrays of text (common/rows/wire.py, contract version 2). Rows the
producer could not read travel as (index, message) pairs so the worker writes an error row
for each of them: every accepted job id gets exactly one result row.

Both sides import only this module (and numpy/msgpack), never each other.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from inferq.common.errors import ContractError, InvalidName
from inferq.common.rows import wire

#: Celery task name of the batch scoring task (workers register it; producers send by name).
SCORE_BATCH = "inferq.score_batch"
#: Version of the payload layout; bump on incompatible changes.
CONTRACT_VERSION = 1
#: Serializer for task messages; workers accept only these content types.
SERIALIZER = "msgpack"
ACCEPT_CONTENT = ("msgpack", "json")
#: Wire dtype of the feature matrix.
WIRE_DTYPE = np.dtype("<f8")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}$")
MAX_KEY_LEN = 512


#: Machine-readable codes of error rows (`predictions.error_code`), beside the message.
ERROR_CODES = {
    "invalid_value": "a value the feature cannot take (text in a number, a number or bool "
    "where a category is expected, another type)",
    "missing_value": "a missing value where the model accepts none",
    "non_finite": "+inf or -inf",
    "text_too_long": "a text longer than the limit",
    "wrong_shape": "the row or message has other columns than the model (count, kinds)",
    "bad_row": "the row is not a list or a dict, or a dict lacks features",
    "missing_id": "the bulk input row has no id",
    "model_failed": "the model raised on this row",
    "unknown_model": "the model version is not registered",
    "message_rejected": "the message breaks the contract",
    "time_limit": "scoring the message took longer than the time limit",
    "dead_lettered": "the message was dead-lettered (its worker died on it, or its rows "
    "could not be written)",
    "internal": "a bug in inferq while scoring",
    "retired": "the model version was retired (`inferq models retire`)",
}
#: Codes of errors that are not the data's fault: `--rescore-errors` scores them again.
RESCORABLE_CODES = ("time_limit", "dead_lettered", "internal")


class RowError(str):
    """A row's error: the message a person reads (it *is* the str) and a ``code``."""

    code: str

    def __new__(cls, message: str, code: str = "invalid_value") -> RowError:
        """``RowError("row 3: ...", "missing_value")``."""
        obj = super().__new__(cls, message)
        obj.code = code
        return obj

    def prefixed(self, prefix: str) -> RowError:
        """The same error with ``prefix`` in front of its message (e.g. "row 7: ")."""
        return RowError(prefix + self, self.code)


def code_of(message: str | None) -> str | None:
    """The code of an error message (a plain str counts as an invalid value)."""
    if message is None:
        return None
    return getattr(message, "code", "invalid_value")


#: Error rows that were not the data's fault: the worker's environment, a crash, a time limit
#: or a bug (SQL LIKE patterns on `predictions.error`; messages of earlier versions included).
#: `inferq score --rescore-errors` scores the chunks holding such rows again.
RESCORABLE_ERRORS = (
    "model % unavailable: %",  # before 0.2: a worker that could not load the model
    "dead-lettered: %",  # its worker process died on it, or its rows could not be written
    "scoring took longer than the time limit%",
    "internal error while scoring%",
)


def check_name(value: str, kind: str = "model name") -> str:
    """Validate a model name or alias: letters, digits, '.', '_', '-', at most 128 chars."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidName(
            kind,
            str(value),
            "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return value


def check_job_id(value: str) -> str:
    """Validate a caller-supplied job id (stored as the primary key of `predictions`)."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidName(
            "job id",
            str(value),
            "use 1-200 letters, digits or . _ : @ / + = -, starting with a letter or digit",
        )
    return value


def new_id() -> str:
    """A fresh random id (job ids, batch ids)."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class Batch:
    """One score message: many rows for one model version."""

    model: str
    version: int
    job_ids: list[str]
    x: np.ndarray  # (n_rows, n_cols) float64
    keys: list[str | None] | None = None
    row_errors: dict[int, str] = field(default_factory=dict)  # RowError values on the wire
    batch_id: str = field(default_factory=new_id)
    run_id: str | None = None
    submitted_at: float = field(default_factory=time.time)
    #: Index of this batch's first row in the caller's submission (or input file), so error
    #: messages name the row the caller knows ("row 2017"), not its place in the message.
    row_offset: int = 0
    #: Each row's number in its caller's submission, for a batch merged from several
    #: submissions or messages (common/rows/merge.py); on the wire as "rows" only then.
    row_numbers: list[int] | None = field(default=None, repr=False, compare=False)
    #: Category features, one list of ``str | None`` per feature (typed rows, common/rows);
    #: None for numeric-only messages, whose ``x`` holds every feature.
    text: list[list[str | None]] | None = None
    #: Schema positions of the ``text`` columns, and the full feature count.
    text_positions: tuple[int, ...] = ()
    width: int | None = None
    #: Score again jobs that already have an *error* row: the new result replaces it (an ok
    #: row is never replaced; still one row per job). Sent by `--rescore-errors`,
    #: `submit(rescore_errors=True)` and dead-letter replays of answered batches.
    rescore: bool = False
    #: The UTC day (ISO date) whose partition the rows go to, when it is not the day of
    #: ``submitted_at``: a bulk run's chunks all carry the day the run started, so a resumed
    #: run's re-sent chunk meets its first delivery's rows (common/partitions.py).
    day: str | None = None
    #: The caller chose the job ids (``submit(job_ids=...)``): the same id may come again on
    #: another day, so the writer looks for it in every partition. Ids inferq makes are new
    #: (uuid4) or deterministic per run (same day), and skip that look-up.
    ids_given: bool = False

    @property
    def partition_day(self) -> dt.date:
        """The day whose partition this batch's rows and ledger row go to."""
        if self.day is not None:
            return dt.date.fromisoformat(self.day)
        return dt.datetime.fromtimestamp(self.submitted_at, dt.UTC).date()

    @property
    def n_rows(self) -> int:
        """Number of rows (= jobs) in the batch."""
        return len(self.job_ids)

    @property
    def n_features(self) -> int:
        """Features per row: the float block's width plus the text columns."""
        return self.width if self.width is not None else int(self.x.shape[1])

    def row_number(self, i: int) -> int:
        """The number the caller knows row ``i`` of this batch by (for error messages)."""
        return self.row_numbers[i] if self.row_numbers is not None else self.row_offset + i

    def describe(self) -> str:
        """Human summary for logs and Flower; never contains feature values."""
        return (
            f"model={self.model} version={self.version} rows={self.n_rows} "
            f"batch={self.batch_id}" + (f" run={self.run_id}" if self.run_id else "")
        )


def encode_batch(batch: Batch) -> dict[str, Any]:
    """Turn a Batch into the task kwargs (msgpack-friendly: str, int, float, bytes, lists)."""
    x = np.ascontiguousarray(batch.x, dtype=WIRE_DTYPE)
    if x.ndim != 2 or x.shape[0] != batch.n_rows:
        raise ContractError(f"matrix shape {x.shape} does not match {batch.n_rows} job ids")
    if batch.keys is not None and len(batch.keys) != batch.n_rows:
        raise ContractError(f"{len(batch.keys)} keys for {batch.n_rows} job ids")
    if batch.text is not None and any(len(col) != batch.n_rows for col in batch.text):
        raise ContractError(f"text columns do not hold {batch.n_rows} values each")
    err_rows = sorted(batch.row_errors)
    typed = wire.encode(batch.text, batch.text_positions, batch.n_features)
    return {
        "v": wire.TYPED_VERSION if typed else CONTRACT_VERSION,
        "batch_id": batch.batch_id,
        "run_id": batch.run_id,
        "model": batch.model,
        "version": int(batch.version),
        "job_ids": batch.job_ids,
        "keys": batch.keys,
        "shape": [int(x.shape[0]), int(x.shape[1])],
        "x": x.tobytes(),
        "err_rows": err_rows,
        "err_msgs": [batch.row_errors[i] for i in err_rows],
        "err_codes": [code_of(batch.row_errors[i]) for i in err_rows],
        "submitted_at": float(batch.submitted_at),
        "row_offset": int(batch.row_offset),
        **typed,
        **({"rescore": True} if batch.rescore else {}),
        **({"day": batch.day} if batch.day else {}),
        **({"ids": "given"} if batch.ids_given else {}),
        **_row_numbers(batch),
    }


#: The times a message may carry (2001-01-01 .. 2100-01-01 UTC): its rows' partition day
#: comes from them, and an untrusted payload must not make workers create arbitrary years.
MIN_TIME, MAX_TIME = 978307200.0, 4102444800.0


def _valid_day(text: str) -> bool:
    """True for an ISO date within the times a message may carry."""
    try:
        return dt.date(2001, 1, 1) <= dt.date.fromisoformat(text) < dt.date(2100, 1, 1)
    except ValueError:
        return False


def _row_numbers(batch: Batch) -> dict[str, Any]:
    """Each row's number for its caller, when a merge made them other than offset + i."""
    numbers = batch.row_numbers
    if numbers is None or numbers == list(range(batch.row_offset, batch.row_offset + len(numbers))):
        return {}
    return {"rows": [int(v) for v in numbers]}


def _require(payload: dict[str, Any], name: str, kinds: type | tuple[type, ...]) -> Any:
    value = payload.get(name)
    if not isinstance(value, kinds):
        raise ContractError(f"field {name!r} is missing or has the wrong type")
    return value


def decode_job_ids(payload: dict[str, Any]) -> list[str]:
    """Just the job ids of a payload (used to answer even a malformed message)."""
    ids = payload.get("job_ids") if isinstance(payload, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ContractError("message has no readable job_ids")
    return ids


def decode_batch(payload: dict[str, Any]) -> Batch:
    """Validate task kwargs against the contract and rebuild the Batch (zero-copy matrix)."""
    if not isinstance(payload, dict):
        raise ContractError(f"payload must be a mapping, got {type(payload).__name__}")
    if payload.get("v") not in (CONTRACT_VERSION, wire.TYPED_VERSION):
        raise ContractError(
            f"message contract version {payload.get('v')!r} is not supported "
            f"(this worker speaks versions {CONTRACT_VERSION} and {wire.TYPED_VERSION})"
        )
    job_ids = decode_job_ids(payload)
    shape = _require(payload, "shape", list)
    raw = _require(payload, "x", bytes)
    if len(shape) != 2 or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ContractError(f"bad shape {shape!r}")
    n, w = shape
    if n != len(job_ids):
        raise ContractError(f"shape says {n} rows but there are {len(job_ids)} job ids")
    if len(raw) != n * w * WIRE_DTYPE.itemsize:
        raise ContractError(f"matrix has {len(raw)} bytes, expected {n * w * 8} for {n}x{w}")
    keys = payload.get("keys")
    if keys is not None and (
        not isinstance(keys, list)
        or len(keys) != n
        or not all(k is None or isinstance(k, str) for k in keys)
    ):
        raise ContractError("keys must be a list with one text (or null) entry per job id")
    err_rows = payload.get("err_rows") or []
    err_msgs = payload.get("err_msgs") or []
    err_codes = payload.get("err_codes") or ["invalid_value"] * len(err_msgs)  # before codes
    if (
        not isinstance(err_codes, list)
        or len(err_rows) != len(err_msgs)
        or len(err_codes) != len(err_msgs)
        or not all(isinstance(i, int) and 0 <= i < n for i in err_rows)
    ):
        raise ContractError("err_rows/err_msgs/err_codes are inconsistent")
    version = _require(payload, "version", int)
    run_id = payload.get("run_id")
    submitted_at = payload.get("submitted_at") or time.time()
    row_offset = payload.get("row_offset") or 0
    if not isinstance(submitted_at, int | float) or not isinstance(row_offset, int):
        raise ContractError("submitted_at must be a number and row_offset an integer")
    if not MIN_TIME <= submitted_at <= MAX_TIME:
        raise ContractError(f"submitted_at {submitted_at!r} is not a time between 2001 and 2100")
    day = payload.get("day")
    if day is not None and not (isinstance(day, str) and _valid_day(day)):
        raise ContractError(f"day {day!r} is not a date (YYYY-MM-DD) between 2001 and 2100")
    text, positions, width = wire.decode(payload, n, w)
    numbers = payload.get("rows")
    if numbers is not None and (
        not isinstance(numbers, list)
        or len(numbers) != n
        or not all(type(v) is int and v >= 0 for v in numbers)
    ):
        raise ContractError("rows must hold one non-negative row number per job id")
    return Batch(
        model=_require(payload, "model", str),
        version=version,
        job_ids=job_ids,
        x=np.frombuffer(raw, dtype=WIRE_DTYPE).reshape(n, w),
        keys=keys,
        row_errors={
            i: RowError(str(m), c if c in ERROR_CODES else "invalid_value")
            for i, m, c in zip(err_rows, err_msgs, err_codes, strict=True)
        },
        batch_id=_require(payload, "batch_id", str),
        run_id=run_id if isinstance(run_id, str) else None,
        submitted_at=float(submitted_at),
        row_offset=row_offset,
        rescore=payload.get("rescore") is True,
        day=day,
        ids_given=payload.get("ids") == "given",
        text=text,
        text_positions=positions,
        width=width if text is not None else None,
        row_numbers=numbers,
    )
