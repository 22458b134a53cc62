"""Typed columns -> what the model is given (worker side): row validation and model input.

A numeric-only model that takes positional arrays keeps today's fast path: the raw float
block itself. Anything else gets a DataFrame with the training column names, in training
order, with text features as object columns (missing = ``np.nan``, which scikit-learn's
encoders and imputers treat as missing; never ``pd.NA``, scikit-learn#26890) and features the
model was fitted on as pandas ``category`` columns restored as such.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from inferq.common.contract import RowError
from inferq.common.rows.coerce import MAX_TEXT_CHARS, label
from inferq.common.rows.schema import InputSchema


def layout_problem(
    schema: InputSchema, n_numeric: int, positions: tuple[int, ...], width: int
) -> str | None:
    """Why a message's columns cannot be this schema's (None: they match)."""
    expected = len(schema.features) - len(schema.text_positions)
    if width == schema.width and n_numeric == expected and positions == schema.text_positions:
        return None
    texts = len(schema.text_positions)
    if not texts and not positions:
        return f"expected {schema.width} features, got {width}"
    if width == schema.width and len(positions) == texts:
        return (
            f"text features at columns {list(positions)}, but the model's are at "
            f"{list(schema.text_positions)}"
        )
    return f"expected {schema.width} features ({texts} text), got {width} ({len(positions)} text)"


def validate(
    schema: InputSchema,
    x: np.ndarray,
    text: list[list[str | None]] | None,
    row_number: Any,
    model: str,
    errors: dict[int, str],
) -> dict[int, str]:
    """Add a message for every row the model must not see (index -> text) to ``errors``.

    Missing values are refused only for features the model does not accept them in;
    infinities always; text longer than MAX_TEXT_CHARS always.
    """
    numeric = schema.numeric_positions
    if x.size:
        allowed = np.array([schema.features[j].missing for j in numeric], dtype=bool)
        nan = np.isnan(x)
        bad = np.isinf(x) | (nan & ~allowed)
        for i in np.flatnonzero(bad.any(axis=1)).tolist():
            if i in errors:
                continue
            k = int(np.argmax(bad[i]))
            j = numeric[k]
            value = x[i, k]
            if np.isnan(value):
                why = f"is missing, and {model} does not accept missing values there"
                code = "missing_value"
            else:
                why, code = ("is +inf" if value > 0 else "is -inf"), "non_finite"
            errors[i] = RowError(f"row {row_number(i)}: {label(schema, j)} {why}", code)
    for k, j in enumerate(schema.text_positions):
        if text is None:
            break
        feature = schema.features[j]
        column = text[k]
        if not feature.missing and None in column:
            for i, v in enumerate(column):
                if v is None and i not in errors:
                    errors[i] = RowError(
                        f"row {row_number(i)}: {label(schema, j)} is missing, and {model} "
                        "does not accept missing values there",
                        "missing_value",
                    )
        # One C-level pass decides whether any value is too long (the per-row loop is rare).
        if max(map(len, filter(None, column)), default=0) <= MAX_TEXT_CHARS:
            continue
        for i, v in enumerate(column):
            if v is not None and len(v) > MAX_TEXT_CHARS and i not in errors:
                errors[i] = RowError(
                    f"row {row_number(i)}: {label(schema, j)} has a text of {len(v):,} "
                    f"characters (limit {MAX_TEXT_CHARS:,})",
                    "text_too_long",
                )
    return errors


def model_input(
    schema: InputSchema,
    x: np.ndarray,
    text: list[list[str | None]] | None,
    rows: np.ndarray | None,
    array_ok: bool,
) -> Any:
    """The model's input for ``rows`` (None: every row) of a message's columns."""
    block = x if rows is None else x[rows]
    if not schema.needs_frame:
        if array_ok or not schema.named:
            return block  # the fast path: columns are already in training order
        import pandas as pd

        return pd.DataFrame(block, columns=schema.names, copy=False)
    import pandas as pd

    data: dict[str, Any] = {}
    for k, j in enumerate(schema.numeric_positions):
        data[schema.features[j].name] = block[:, k]
    for k, j in enumerate(schema.text_positions):
        column = text[k] if text is not None else []
        values = column if rows is None else [column[i] for i in rows.tolist()]
        if None in values:
            values = [np.nan if v is None else v for v in values]
        data[schema.features[j].name] = np.array(values, dtype=object)
    for f in schema.features:
        if f.pandas_category:
            cats: list[Any] = list(f.categories or [])
            if not f.is_text:  # categories of a number column were stored as text
                cats = [float(c) for c in cats]
            data[f.name] = pd.Categorical(data[f.name], categories=cats)
    return pd.DataFrame(data, columns=schema.names)
