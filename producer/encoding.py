"""Turn caller rows (ndarray, DataFrame, lists, dicts) into the float64 wire matrix.

Whole-submission problems (wrong dimensionality, missing DataFrame columns) raise before
anything is enqueued. Per-row problems (a string, a None, a short row) do not stop the
submission: the row gets a NaN placeholder and a message, and the worker writes that message
as the job's error row, so every accepted job id is answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from inferq.common.contract import feature_label
from inferq.common.errors import InvalidInput, MissingColumns

_NUMERIC_TYPES = frozenset(
    {int, float, bool, np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
     np.int8, np.uint64, np.uint32, np.uint16, np.uint8, np.bool_}
)  # fmt: skip


def _value_problem(value: Any) -> str | None:
    """Why ``value`` is not a number, or None if it is one."""
    if type(value) in _NUMERIC_TYPES:
        return None
    if value is None:
        return "is missing (None)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"has a non-numeric value {shown!r} (text)"
    if isinstance(value, int | float) and not isinstance(value, complex):
        return None
    return f"has a value of type {type(value).__name__}, not a number"


def _fill_row(
    x: np.ndarray, i: int, row: Any, names: Sequence[str] | None, width: int, offset: int
) -> str | None:
    """Write one list/dict row into x[i]; return an error message (naming row offset+i)."""
    n = offset + i
    if isinstance(row, dict):
        if not names:
            return (
                f"row {n}: dict rows need a model fitted with feature names; "
                "send a list of numbers in training column order"
            )
        missing = [n for n in names if n not in row]
        if missing:
            return f"row {n}: missing feature(s) {', '.join(map(repr, missing[:5]))}"
        values: Sequence[Any] = [row[n] for n in names]
    elif isinstance(row, list | tuple | np.ndarray):
        values = row.tolist() if isinstance(row, np.ndarray) else row
        if len(values) != width:
            return f"row {n}: expected {width} features, got {len(values)}"
    else:
        return f"row {n}: expected a list of numbers or a dict, got {type(row).__name__}"
    if not all(type(v) in _NUMERIC_TYPES for v in values):
        for j, v in enumerate(values):
            problem = _value_problem(v)
            if problem:
                return f"row {n}: {feature_label(j, names)} {problem}"
    x[i] = values
    return None


def _from_rows(
    rows: Sequence[Any] | np.ndarray, width: int, names: Sequence[str] | None, offset: int = 0
) -> tuple[np.ndarray, dict[int, str]]:
    x = np.full((len(rows), width), np.nan, dtype=np.float64)
    errors: dict[int, str] = {}
    for i, row in enumerate(rows):
        try:
            problem = _fill_row(x, i, row, names, width, offset)
        except (TypeError, ValueError, OverflowError) as exc:
            problem = f"row {offset + i}: cannot be read as numbers ({exc})"
        if problem:
            x[i] = np.nan
            errors[i] = problem
    return x, errors


def _check_width(width: int, n_features: int, model: str) -> None:
    # A matrix has one width for every row: a mismatch is the caller's schema, not a bad row.
    if width != n_features:
        raise InvalidInput(f"rows have {width} columns but {model} expects {n_features} features")


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and hasattr(obj, "columns")


def to_matrix(
    rows: Any,
    n_features: int,
    feature_names: Sequence[str] | None,
    model: str = "model",
    offset: int = 0,
) -> tuple[np.ndarray, dict[int, str]]:
    """(float64 matrix, {index: message} for bad rows); messages count rows from ``offset``."""
    if _is_dataframe(rows):
        df = rows
        if feature_names:
            columns = [str(c) for c in df.columns]
            missing = [n for n in feature_names if n not in columns]
            if missing:
                raise MissingColumns(model, missing, columns)
            df = df.loc[:, list(feature_names)]  # match by name, not position
        _check_width(df.shape[1], n_features, model)
        if all(dt.kind in "biuf" for dt in df.dtypes):
            return df.to_numpy(dtype=np.float64, na_value=np.nan), {}
        return _from_rows(df.to_numpy(dtype=object), n_features, feature_names, offset)
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2:
            raise InvalidInput(
                f"rows must be 2-D (n_rows, n_features); got an array of shape {rows.shape}"
                + (" — use x.reshape(1, -1) for a single row" if rows.ndim == 1 else "")
            )
        _check_width(rows.shape[1], n_features, model)
        if rows.dtype.kind in "biuf":
            return np.ascontiguousarray(rows, dtype=np.float64), {}
        return _from_rows(rows, n_features, feature_names, offset)
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise InvalidInput(
            "rows must be a 2-D numpy array, a pandas DataFrame, or a list of rows "
            f"(lists or dicts); got {type(rows).__name__}"
        )
    return _from_rows(rows, n_features, feature_names, offset)
