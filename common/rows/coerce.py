"""Caller rows -> typed columns, following a model's input schema (producer side).

Rows may be a pandas DataFrame (numeric, object/str, `category` and bool columns; matched to
the schema by name when the model has names), a 2-D numpy array (numeric or object), a list
of lists (schema order) or a list of dicts (by name). The result is one float64 block for
the number/integer/boolean features and one list of ``str | None`` per category feature.

Coercion rules (README "Input rows"):
- number, integer, boolean features take ints, floats, bools and numpy numbers; ``None``,
  ``NaN``, ``pd.NA`` and ``NaT`` are *missing* (NaN on the wire). Text in such a feature is
  that row's error; the worker decides whether the model accepts missing values.
- category features take text; an integer (or a float with an integral value, e.g. a CSV
  column read as numbers) becomes its decimal text (``7`` -> ``"7"``), since that is how it
  reads as a category; any other number, a bool or another type is that row's error;
  missing values become ``None`` (never ``pd.NA``, which breaks scikit-learn's encoders).
- text longer than ``MAX_TEXT_CHARS`` is that row's error.
Whole-submission problems (no rows, a missing DataFrame column, a matrix of the wrong width)
raise before anything is enqueued.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from inferq.common.contract import RowError
from inferq.common.errors import InvalidInput, MissingColumns
from inferq.common.rows.schema import InputSchema

#: Longest text value a category feature takes (characters); longer is that row's error.
MAX_TEXT_CHARS = 10_000

_NUMBER_TYPES = frozenset(
    {int, float, bool, np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
     np.int8, np.uint64, np.uint32, np.uint16, np.uint8, np.bool_}
)  # fmt: skip


@dataclass(slots=True)
class Columns:
    """Rows as typed columns: what one message carries."""

    x: np.ndarray  # (rows, numeric features) float64, NaN = missing
    text: list[list[str | None]] | None  # one list per category feature, or None
    errors: dict[int, str]  # row index -> RowError (rows the worker answers with an error)

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(self.x.shape[0])


def label(schema: InputSchema, j: int) -> str:
    """How messages name feature ``j``: "feature 'age' (column 3)" or "column 3"."""
    return f"feature {schema.features[j].name!r} (column {j})" if schema.named else f"column {j}"


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return type(value).__name__ in {"NAType", "NaTType"}


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def number_problem(value: Any) -> RowError | None:
    """Why ``value`` cannot be a number feature's value (None: it can, missing included)."""
    if type(value) in _NUMBER_TYPES or _missing(value):
        return None
    if isinstance(value, str):
        return RowError(f"has a non-numeric value {_shown(value)} (text)")
    if isinstance(value, int | float) and not isinstance(value, complex):
        return None
    return RowError(f"has a value of type {type(value).__name__}, not a number")


def as_text(value: Any) -> tuple[str | None, RowError | None]:
    """(text or None for missing, problem) for a category feature's value."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            return None, RowError(
                f"has a text of {len(value):,} characters (limit {MAX_TEXT_CHARS:,})",
                "text_too_long",
            )
        return value, None
    if _missing(value):
        return None, None
    if isinstance(value, bool | np.bool_):
        return None, RowError(f"has a boolean {value!r} where a category (text) is expected")
    if isinstance(value, int | np.integer):
        return str(int(value)), None
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return str(int(value)), None
    if isinstance(value, float | np.floating):
        return None, RowError(f"has a number {float(value)!r} where a category (text) is expected")
    return None, RowError(
        f"has a value of type {type(value).__name__} where a category (text) is expected"
    )


def whole_column_problem(values: Any, kind: str) -> str | None:
    """Why *no* value of a column (a pandas Series) can be a ``kind`` feature's value, e.g.
    "holds text, not numbers (e.g. 'abc', 'n.a.')"; None when at least one value can be, or
    the column is empty/all missing (a single bad value is that row's error, not this)."""
    present = values[values.notna()]
    if present.empty:
        return None
    if kind == "category":
        if present.dtype.kind == "b":
            return "holds booleans, not categories (text)"
        if present.dtype.kind == "f":
            floats = present.to_numpy(dtype=float)
            if not np.any(np.isfinite(floats) & (floats == np.round(floats))):
                shown = ", ".join(repr(float(v)) for v in floats[:3])
                return f"holds fractional numbers, not categories (text) (e.g. {shown})"
        return None
    if present.dtype.kind in "biuf":
        return None
    numbers = _to_numeric(present)
    if numbers.notna().any():
        return None
    shown = ", ".join(_shown(str(v)) for v in present.iloc[:3].tolist())
    article = "an" if kind[0] in "aeiou" else "a"
    return f"holds text, not numbers (e.g. {shown}): its feature is {article} {kind}"


def _to_numeric(values: Any) -> Any:
    """``pd.to_numeric(values, errors="coerce")`` (pandas imported only when needed)."""
    import pandas as pd

    return pd.to_numeric(values, errors="coerce")


def _row_values(row: Any, schema: InputSchema) -> tuple[Sequence[Any] | None, RowError | None]:
    """The row's values in schema order, or a problem (message without the row prefix)."""
    if isinstance(row, dict):
        if not schema.named:
            return None, RowError(
                "dict rows need a model fitted with feature names; send a list in training "
                "column order",
                "bad_row",
            )
        missing = [name for name in schema.names if name not in row]
        if missing:
            return None, RowError(
                f"missing feature(s) {', '.join(map(repr, missing[:5]))}", "bad_row"
            )
        return [row[name] for name in schema.names], None
    if isinstance(row, list | tuple | np.ndarray):
        values = row.tolist() if isinstance(row, np.ndarray) else row
        if len(values) != schema.width:
            return None, RowError(
                f"expected {schema.width} features, got {len(values)}", "wrong_shape"
            )
        return values, None
    return None, RowError(
        f"expected a list of values or a dict, got {type(row).__name__}", "bad_row"
    )


def _from_rows(rows: Sequence[Any], schema: InputSchema, offset: int) -> Columns:
    """Row by row (lists, dicts, object arrays): small online submissions."""
    n = len(rows)
    numeric = schema.numeric_positions
    x = np.full((n, len(numeric)), np.nan, dtype=np.float64)
    text: list[list[str | None]] = [[None] * n for _ in schema.text_positions]
    errors: dict[int, str] = {}
    for i, row in enumerate(rows):
        values, problem = _row_values(row, schema)
        if problem is None and values is not None:
            problem = _fill(x, text, i, values, schema, numeric)
        if problem is not None:
            x[i] = np.nan
            for col in text:
                col[i] = None
            errors[i] = problem.prefixed(f"row {offset + i}: ")
    return Columns(x, text if text else None, errors)


def _fill(
    x: np.ndarray, text: list[list[str | None]], i: int, values: Sequence[Any],
    schema: InputSchema, numeric: tuple[int, ...],
) -> RowError | None:  # fmt: skip
    """Write one row's values; the first problem found (message without the row prefix)."""
    for k, j in enumerate(numeric):
        v = values[j]
        problem = number_problem(v)
        if problem:
            return problem.prefixed(f"{label(schema, j)} ")
        try:
            x[i, k] = np.nan if _missing(v) else float(v)
        except (TypeError, ValueError, OverflowError) as exc:
            return RowError(f"{label(schema, j)} cannot be read as a number ({exc})")
    for k, j in enumerate(schema.text_positions):
        value, problem = as_text(values[j])
        if problem:
            return problem.prefixed(f"{label(schema, j)} ")
        text[k][i] = value
    return None


def _text_column(
    values: np.ndarray, j: int, schema: InputSchema, errors: dict[int, str], offset: int
) -> list[str | None]:
    """One category column of a DataFrame/array, vectorized when it is all text or missing."""
    out: list[Any] = values.tolist()
    # C-level passes (map) over the column: ~10x faster than a per-value generator.
    if not out or (set(map(type, out)) == {str} and max(map(len, out)) <= MAX_TEXT_CHARS):
        return out
    for i, v in enumerate(out):
        value, problem = as_text(v)
        out[i] = value
        if problem and i not in errors:
            errors[i] = problem.prefixed(f"row {offset + i}: {label(schema, j)} ")
    return out


def _number_column(
    values: Any, j: int, schema: InputSchema, errors: dict[int, str], offset: int
) -> np.ndarray:
    """One number column of a DataFrame/array as float64 (NaN = missing or bad cell).

    Text is that row's error even when it looks like a number ("4.5"): a caller who sends
    text meant text. (CSV cells are all text: bulk sources turn numbers back first.)
    """
    if getattr(values, "dtype", None) is not None and values.dtype.kind in "biuf":
        return np.asarray(values, dtype=np.float64)
    cells = np.asarray(values, dtype=object).tolist()
    out = np.full(len(cells), np.nan)
    for i, v in enumerate(cells):
        if type(v) in _NUMBER_TYPES:
            out[i] = v
            continue
        problem = number_problem(v)
        if problem is None and not _missing(v):
            try:
                out[i] = float(v)
                continue
            except (TypeError, ValueError, OverflowError) as exc:
                problem = RowError(f"cannot be read as a number ({exc})")
        if problem is not None:
            errors.setdefault(i, problem.prefixed(f"row {offset + i}: {label(schema, j)} "))
    return out


def _from_frame(df: Any, schema: InputSchema, model: str, offset: int) -> Columns:
    """A DataFrame, matched by name (named models) or position."""
    if schema.named:
        missing = [name for name in schema.names if name not in df.columns]
        if missing:
            raise MissingColumns(model, missing, [str(c) for c in df.columns])
        names = schema.names
    elif df.shape[1] != schema.width:
        raise InvalidInput(
            f"rows have {df.shape[1]} columns but {model} expects {schema.width} features"
        )
    else:
        names = list(df.columns)
    numeric = [names[j] for j in schema.numeric_positions]
    # NOTE: one to_numpy over all number columns when their dtypes allow (the common case,
    # and most of a one-row submission's cost): per-column access costs ~30 µs each.
    dtypes = df.dtypes
    if numeric and all(dtypes[c].kind in "biuf" for c in numeric):
        x = df[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
        if schema.numeric_only:
            return Columns(x, None, {})
        return _typed(x, [df[names[j]] for j in schema.text_positions], schema, offset, {})
    return _from_columns([df[c] for c in names], len(df), schema, offset)


def _typed(
    x: np.ndarray, text_cols: list[Any], schema: InputSchema, offset: int,
    errors: dict[int, str],
) -> Columns:  # fmt: skip
    """Number block already built (``errors`` found so far); coerce the text columns and
    blank every bad row, so no half-read row reaches the wire."""
    text = [
        _text_column(_object_values(col), j, schema, errors, offset)
        for col, j in zip(text_cols, schema.text_positions, strict=True)
    ]
    if errors:
        bad = list(errors)
        x = x.copy()
        x[bad] = np.nan
        for col in text:
            for i in bad:
                col[i] = None
    return Columns(x, text if text else None, errors)


def _from_columns(cols: list[Any], n: int, schema: InputSchema, offset: int) -> Columns:
    errors: dict[int, str] = {}
    numeric = schema.numeric_positions
    if numeric and all(getattr(cols[j], "dtype", np.dtype(object)).kind in "biuf" for j in numeric):
        x = np.column_stack([np.asarray(cols[j], dtype=np.float64) for j in numeric])
    else:
        x = np.empty((n, len(numeric)), dtype=np.float64)
        for k, j in enumerate(numeric):
            x[:, k] = _number_column(_values(cols[j]), j, schema, errors, offset)
    text_cols = [cols[j] for j in schema.text_positions]
    return _typed(x.reshape(n, len(numeric)), text_cols, schema, offset, errors)


def _values(col: Any) -> Any:
    """A column's values: numeric dtypes as they are, anything else as objects."""
    dtype = getattr(col, "dtype", None)
    if dtype is not None and getattr(dtype, "kind", "O") in "biuf":
        return col.to_numpy() if hasattr(col, "to_numpy") else np.asarray(col)
    return _object_values(col)


def _object_values(col: Any) -> np.ndarray:
    """A column as an object array; pandas missing markers (pd.NA, NaT) become None."""
    if hasattr(col, "to_numpy"):
        dtype = getattr(col, "dtype", None)
        if str(dtype) == "category":
            col = col.astype(object)
        return col.to_numpy(dtype=object, na_value=None)
    return np.asarray(col, dtype=object)


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and hasattr(obj, "columns")


def to_columns(rows: Any, schema: InputSchema, model: str = "model", offset: int = 0) -> Columns:
    """Coerce caller rows to ``schema``; row messages count rows from ``offset``."""
    if _is_dataframe(rows):
        return _from_frame(rows, schema, model, offset)
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2:
            raise InvalidInput(
                f"rows must be 2-D (n_rows, n_features); got an array of shape {rows.shape}"
                + (" — use x.reshape(1, -1) for a single row" if rows.ndim == 1 else "")
            )
        if rows.shape[1] != schema.width:
            raise InvalidInput(
                f"rows have {rows.shape[1]} columns but {model} expects {schema.width} features"
            )
        if rows.dtype.kind in "biuf" and schema.numeric_only:
            return Columns(np.ascontiguousarray(rows, dtype=np.float64), None, {})
        return _from_columns([rows[:, j] for j in range(schema.width)], len(rows), schema, offset)
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise InvalidInput(
            "rows must be a 2-D numpy array, a pandas DataFrame, or a list of rows "
            f"(lists or dicts); got {type(rows).__name__}"
        )
    return _from_rows(rows, schema, offset)


__all__ = [
    "MAX_TEXT_CHARS", "Columns", "as_text", "number_problem", "to_columns", "whole_column_problem",
]  # fmt: skip
