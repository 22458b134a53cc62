"""Derive a model version's input schema at registration (README "Registering models").

Kinds come from the fitted model (encoders' categories, HistGradientBoosting categorical
features; everything else is a number), or from a reference sample's dtypes where the model
does not say, or from a schema file; ``--feature-type`` overrides come last. Whether a
feature accepts missing values is found by calling the model, never from scikit-learn's
``allow_nan`` tag: the tag is False for ``make_pipeline(SimpleImputer(), LogisticRegression())``
although it imputes (scikit-learn#27903). scikit-learn and pandas are imported lazily.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferq.common.errors import InvalidInput
from inferq.common.rows.schema import Feature, InputSchema, Kind
from inferq.models.reference import (
    read_reference,
    read_schema_file,
    reference_features,
    with_reference_kinds,
)

#: Stand-in for a category feature whose categories nobody knows (base row of the probe).
_UNKNOWN_CATEGORY = "0"


@dataclass(frozen=True, slots=True)
class InferredSchema:
    """A derived schema, where its kinds came from, the reference's metadata and warnings."""

    schema: InputSchema
    source: str  # "model" | "reference" | "file"
    reference: dict[str, Any] | None  # {"path", "sha256", "rows", "format"}
    warnings: tuple[str, ...] = ()

    def document(self) -> dict[str, Any]:
        """What `model_versions.input_schema` stores: the schema plus how it was derived."""
        return {**self.schema.to_json(), "source": self.source, "warnings": list(self.warnings)}


def infer_schema(
    model: Any,
    n_features: int,
    feature_names: list[str] | None,
    *,
    reference: Path | None = None,
    feature_types: dict[str, str] | None = None,
    schema_file: Path | None = None,
    path: str = "<model>",
) -> InferredSchema:
    """The input schema of a fitted model (kinds, categories, probed missing-value support)."""
    if schema_file is not None:
        schema, source = read_schema_file(Path(schema_file), n_features, feature_names), "file"
    else:
        schema, source = model_schema(model, n_features, feature_names), "model"
    frame, ref_meta = None, None
    if reference is not None:
        text = [f.name for f in schema.features if f.is_text] if schema.named else []
        frame, ref_meta = read_reference(Path(reference), text)
        frame = reference_features(frame, n_features, feature_names, path, str(reference))
        if source == "model":
            schema, source = with_reference_kinds(schema, frame), "reference"
    if feature_types:
        try:
            schema = schema.with_overrides(feature_types)
        except ValueError as exc:
            raise InvalidInput(f"cannot register {path}: {exc}") from None
    accepts, warning = probe_missing(model, schema, frame)
    return InferredSchema(
        schema.with_missing(accepts), source, ref_meta, (warning,) if warning else ()
    )


# ----- from the fitted model ------------------------------------------------------------
def model_schema(model: Any, n_features: int, feature_names: list[str] | None) -> InputSchema:
    """Kinds the fitted model itself reveals (missing values not yet probed)."""
    base = InputSchema.numeric(n_features, feature_names)
    found: dict[int, Feature] = {}
    _walk(model, list(range(n_features)), base.names, found)
    return InputSchema(tuple(found.get(j, f) for j, f in enumerate(base.features)), base.named)


def _walk(est: Any, cols: list[int], names: list[str], found: dict[int, Feature]) -> None:
    """Visit ``est``, whose input column i is model feature ``cols[i]``, recording kinds."""
    import numpy as np

    if isinstance(est, str) or est is None:  # "drop" / "passthrough"
        return
    if hasattr(est, "steps"):  # Pipeline: later steps see the same columns only if kept
        current: list[int] | None = cols
        for _, step in est.steps:
            if current is None:
                break
            _walk(step, current, names, found)
            kept = step in (None, "passthrough") or _keeps_columns(step, len(current))
            current = current if kept else None
    elif hasattr(est, "transformers_"):  # ColumnTransformer (also nested)
        est_names = [str(n) for n in getattr(est, "feature_names_in_", [])]
        for _, trans, columns in est.transformers_:
            picked = _positions(columns, len(cols), est_names)
            _walk(trans, [cols[p] for p in picked if p < len(cols)], names, found)
    elif getattr(est, "is_categorical_", None) is not None and hasattr(est, "_preprocessor"):
        _hist_gradient_boosting(est, cols, names, found)
    elif hasattr(est, "build_analyzer") and len(cols) == 1:  # CountVectorizer & co: free text
        found[cols[0]] = Feature(names[cols[0]], "category")
    elif hasattr(est, "best_estimator_") or hasattr(est, "regressor_"):  # searches, TTR
        inner = est.best_estimator_ if hasattr(est, "best_estimator_") else est.regressor_
        _walk(inner, cols, names, found)
    elif isinstance(getattr(est, "categories_", None), list) and len(est.categories_) == len(
        cols
    ):  # OneHotEncoder, OrdinalEncoder, TargetEncoder
        for j, cats in zip(cols, est.categories_, strict=True):
            kind: Kind = "category" if getattr(cats, "dtype", None) == np.dtype("O") else "number"
            # Numeric categories are kept too: the probe's base row must use a known one.
            found[j] = Feature(names[j], kind, categories=_category_texts(cats))


def _hist_gradient_boosting(
    est: Any, cols: list[int], names: list[str], found: dict[int, Feature]
) -> None:
    """Categorical features of HistGradientBoosting* (encoded by its private OrdinalEncoder)."""
    import numpy as np

    try:
        encoder = est._preprocessor.named_transformers_["encoder"]
        positions = np.flatnonzero(est.is_categorical_).tolist()
        categories = list(encoder.categories_)
    except (AttributeError, KeyError, TypeError):  # private API moved: numbers, as before
        return
    # "from_dtype" picked pandas `category` columns: the model wants that dtype back.
    from_dtype = isinstance(est.categorical_features, str)
    for p, cats in zip(positions, categories, strict=False):
        if p >= len(cols):
            continue
        j = cols[p]
        kind: Kind
        if cats.dtype.kind == "O":
            kind = "category"
        elif not from_dtype:
            continue  # integer codes given as numbers: they stay numbers
        else:
            kind = "integer" if cats.dtype.kind in "iu" else "number"
        found[j] = Feature(
            names[j], kind, categories=_category_texts(cats), pandas_category=from_dtype
        )


def _category_texts(cats: Any) -> tuple[str, ...]:
    """Known categories as text, without the missing-value entry encoders append."""
    import pandas as pd

    return tuple(
        str(c) for c in cats if not (c is None or (pd.api.types.is_scalar(c) and pd.isna(c)))
    )


def _keeps_columns(step: Any, width: int) -> bool:
    """The step outputs its input columns one to one (an imputer or scaler, not an encoder)."""
    try:
        out = [str(n) for n in step.get_feature_names_out()]
    except Exception:  # no get_feature_names_out, or it cannot say: assume it does not
        return False
    given = getattr(step, "feature_names_in_", None)
    expected = [str(n) for n in given] if given is not None else [f"x{i}" for i in range(width)]
    return out == expected


def _positions(columns: Any, width: int, names: list[str]) -> list[int]:
    """A fitted ColumnTransformer's column selection as input positions."""
    import numpy as np

    if callable(columns):  # transformers_ holds resolved selections; be safe anyway
        return []
    if isinstance(columns, slice):
        if isinstance(columns.start, str) or isinstance(columns.stop, str):
            start = names.index(columns.start) if columns.start is not None else 0
            stop = names.index(columns.stop) + 1 if columns.stop is not None else width
            return list(range(start, stop))  # label slices include their end
        return list(range(width))[columns]
    values = np.atleast_1d(np.asarray(columns, dtype=object if isinstance(columns, str) else None))
    if values.size == 0:
        return []
    if values.dtype == bool:
        return np.flatnonzero(values).tolist()
    if all(isinstance(v, str) for v in values.tolist()):
        return [names.index(v) for v in values.tolist() if v in names]
    return [int(v) for v in values.tolist()]


# ----- missing values: ask the model ----------------------------------------------------
def probe_missing(
    model: Any, schema: InputSchema, frame: Any | None = None
) -> tuple[list[bool], str | None]:
    """Per feature, whether the model predicts a row with only that value missing; a warning."""
    # The warning says the base row (a reference row, else zeros and first categories)
    # failed: then no feature can be said to accept missing values.
    base = _base_row(schema, frame)
    ok, why = _predicts(model, schema, base)
    if not ok:
        return [False] * schema.width, (
            f"the model could not score a probe row ({why}), so missing values are recorded "
            "as not accepted for every feature; register with --reference FILE holding "
            "typical rows to probe again"
        )
    if _predicts(model, schema, [None] * schema.width)[0]:
        return [True] * schema.width, None  # one call instead of one per feature
    answers = []
    for j in range(schema.width):
        row = list(base)
        row[j] = None
        answers.append(_predicts(model, schema, row)[0])
    return answers, None


def _base_row(schema: InputSchema, frame: Any | None) -> list[Any]:
    """A row the model should score: the first complete reference row, else defaults."""
    if frame is not None:
        complete = frame.notna().all(axis=1)
        record = frame[complete].iloc[0] if complete.any() else frame.iloc[0]
        return [_value(f, record.iloc[j]) for j, f in enumerate(schema.features)]
    return [_default(f) for f in schema.features]


def _default(feature: Feature) -> Any:
    """A valid value without a reference: the first known category, else "0" or 0.0."""
    if feature.is_text:
        return feature.categories[0] if feature.categories else _UNKNOWN_CATEGORY
    try:
        return float(feature.categories[0]) if feature.categories else 0.0
    except ValueError:  # categories of a hand-written schema file
        return 0.0


def _value(feature: Feature, value: Any) -> Any:
    """A reference cell as the worker gives it: text for categories, else a float."""
    import pandas as pd

    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    if feature.is_text:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # a CSV integer column read as floats (it had gaps)
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def probe_input(schema: InputSchema, row: list[Any]) -> Any:
    """One row built by the worker's own code (common/rows/model_input.py; None = missing)."""
    import numpy as np
    from inferq.common.rows.model_input import model_input

    x = np.array(
        [[np.nan if row[j] is None else row[j] for j in schema.numeric_positions]], dtype=float
    )
    text = [[row[j]] for j in schema.text_positions] or None
    return model_input(schema, x, text, None, array_ok=False)


def _predicts(model: Any, schema: InputSchema, row: list[Any]) -> tuple[bool, str]:
    """Whether ``model.predict`` answers ``row`` (with a finite output); else the reason."""
    import numpy as np

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = np.asarray(model.predict(probe_input(schema, row)))
    except Exception as exc:  # any failure means: the model cannot score this row
        return False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    # A model that lets NaN through to its output did not really score the row.
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        return False, "it predicted NaN"
    return True, ""
