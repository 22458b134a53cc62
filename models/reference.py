"""Reference samples and schema files given at registration (``models register --reference
FILE`` / ``--schema FILE``): read, checked against the model, turned into feature kinds.

The reference's path, sha256 and row count are recorded with the version, so later checks
(validation, drift baselines) can find the very sample the schema was derived from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inferq.common.errors import InvalidInput
from inferq.common.rows.schema import InputSchema


def read_reference(path: Path, text: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """A reference sample (CSV or Parquet) and its metadata {path, sha256, rows, format}."""
    # CSV columns in ``text`` are read as text: a zip code keeps its leading zero.
    import pandas as pd
    from inferq.models.artifacts import sha256_file

    if not path.is_file():
        raise InvalidInput(f"reference sample {path}: no such file")
    suffixes = [s.lower() for s in path.suffixes]
    fmt = "parquet" if {".parquet", ".pq"} & set(suffixes) else "csv" if ".csv" in suffixes else ""
    if not fmt:
        raise InvalidInput(f"reference sample {path}: unknown format (use a .csv or .parquet file)")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, low_memory=False, dtype=dict.fromkeys(text or [], str))
    except Exception as exc:  # pandas/pyarrow raise many kinds for an unreadable file
        raise InvalidInput(
            f"reference sample {path} cannot be read ({type(exc).__name__}: {exc})"
        ) from None
    if len(frame) == 0:
        raise InvalidInput(f"reference sample {path} has no rows")
    meta = {"path": str(path.resolve()), "sha256": sha256_file(path), "rows": len(frame)}
    return frame, {**meta, "format": fmt}


def reference_features(
    frame: Any, n_features: int, names: list[str] | None, path: str, ref: str
) -> Any:
    """The reference's columns for the model's features, in model order (extras dropped)."""
    if names is None:  # a model fitted without names: match by position, all of them
        if frame.shape[1] != n_features:
            raise InvalidInput(
                f"cannot register {path}: the model has no feature names, so the reference "
                f"{ref} must have exactly its {n_features} columns in training order "
                f"(it has {frame.shape[1]})"
            )
        return frame.set_axis([f"x{j}" for j in range(n_features)], axis=1)
    have = {str(c) for c in frame.columns}
    missing = [n for n in names if n not in have]
    if missing:
        raise InvalidInput(
            f"cannot register {path}: the reference {ref} has no column "
            f"{', '.join(map(repr, missing[:10]))}{' ...' if len(missing) > 10 else ''} "
            "(a feature of the model)"
        )
    return frame.set_axis([str(c) for c in frame.columns], axis=1)[names]


def _dtype_kind(dtype: Any) -> str | None:
    """float->number, int->integer, bool->boolean, object/str/category->category."""
    import pandas as pd

    types = pd.api.types
    if types.is_bool_dtype(dtype):
        return "boolean"
    if isinstance(dtype, pd.CategoricalDtype) or types.is_object_dtype(dtype):
        return "category"
    if types.is_string_dtype(dtype):
        return "category"
    if types.is_integer_dtype(dtype):
        return "integer"
    if types.is_float_dtype(dtype):
        return "number"
    return None  # datetimes and the like: no evidence, the model's kind stands


def with_reference_kinds(schema: InputSchema, frame: Any) -> InputSchema:
    """Kinds from the sample's dtypes, except where the model says category (it knows best)."""
    kinds: dict[str, str] = {}
    for f in schema.features:
        if f.kind == "category" or f.pandas_category:
            continue  # e.g. a zip code read as int that the model one-hot encodes as text
        kind = _dtype_kind(frame[f.name].dtype)
        if kind is not None and kind != f.kind:
            kinds[f.name] = kind
    return schema.with_overrides(kinds) if kinds else schema


def read_schema_file(path: Path, n_features: int, names: list[str] | None) -> InputSchema:
    """A schema file (InputSchema JSON, or `models show --json` output), checked for the model."""
    try:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and "features" not in data and "schema" in data:
            data = data["schema"]
        schema = InputSchema.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"schema file {path}: {exc}") from None
    if schema.width != n_features:
        raise InvalidInput(
            f"schema file {path} has {schema.width} features, the model {n_features}"
        )
    if names is not None and schema.names != names:
        wrong = [a for a, b in zip(schema.names, names, strict=True) if a != b]
        raise InvalidInput(
            f"schema file {path}: feature names differ from the model's (first: "
            f"{wrong[0]!r}); list them in training order: {', '.join(names[:20])}"
        )
    return InputSchema(schema.features, named=names is not None)
