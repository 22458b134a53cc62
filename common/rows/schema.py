"""The input schema of a model version: per feature, its name, kind and whether missing
values are accepted.

scikit-learn records no input dtypes (scikit-learn#26305), so the registry derives a schema
at registration (models/schema_infer.py) and stores it with the version; producers coerce
rows to it and workers rebuild exactly the input the model was fitted on. Versions
registered before schemas existed get the all-number schema they were always served with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["number", "integer", "boolean", "category"]
KINDS: tuple[str, ...] = ("number", "integer", "boolean", "category")
#: Spellings accepted by `--feature-type NAME=KIND` and schema files.
KIND_ALIASES = {
    "number": "number", "float": "number", "numeric": "number", "double": "number",
    "integer": "integer", "int": "integer",
    "boolean": "boolean", "bool": "boolean",
    "category": "category", "categorical": "category", "text": "category", "string": "category",
    "str": "category",
}  # fmt: skip


def parse_kind(value: str) -> Kind:
    """A kind from its user spelling (``text`` = ``category``); ValueError otherwise."""
    kind = KIND_ALIASES.get(str(value).strip().lower())
    if kind is None:
        raise ValueError(
            f"unknown feature kind {value!r}: use number, integer, boolean or category (text)"
        )
    return kind  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column of a model."""

    name: str
    kind: Kind = "number"
    #: The model answers rows where this feature is missing (decided by probing the model).
    missing: bool = False
    #: Known categories (category features), for `category` dtype restore and docs.
    categories: tuple[str, ...] | None = None
    #: The model was fitted on a pandas `category` column (e.g. HistGradientBoosting with
    #: categorical_features="from_dtype"): the worker must give it one again.
    pandas_category: bool = False

    @property
    def is_text(self) -> bool:
        """Travels as text on the wire (category features); everything else is a float."""
        return self.kind == "category"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (only non-default fields beyond name and kind)."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "missing": self.missing}
        if self.categories is not None:
            data["categories"] = list(self.categories)
        if self.pandas_category:
            data["pandas_category"] = True
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Feature:
        """Inverse of :meth:`to_json` (validates the kind)."""
        cats = data.get("categories")
        return cls(
            name=str(data["name"]),
            kind=parse_kind(data.get("kind", "number")),
            missing=bool(data.get("missing", False)),
            categories=tuple(str(c) for c in cats) if cats is not None else None,
            pandas_category=bool(data.get("pandas_category", False)),
        )


@dataclass(frozen=True, slots=True)
class InputSchema:
    """The features of a model version, in the order the model was fitted on."""

    features: tuple[Feature, ...]
    #: The model was fitted with column names (DataFrame); otherwise names are "x0", "x1"...
    #: and rows are matched by position.
    named: bool = True
    # Derived once here, read per message by producers and workers.
    _text: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _numeric: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _frame: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = tuple(j for j, f in enumerate(self.features) if f.is_text)
        object.__setattr__(self, "_text", text)
        object.__setattr__(
            self, "_numeric", tuple(j for j, f in enumerate(self.features) if not f.is_text)
        )
        object.__setattr__(
            self, "_frame", bool(text) or any(f.pandas_category for f in self.features)
        )

    @classmethod
    def numeric(
        cls, n_features: int, names: Sequence[str] | None = None, missing: bool = False
    ) -> InputSchema:
        """All-number schema (versions registered before schemas; bare-array models)."""
        labels = list(names) if names else [f"x{j}" for j in range(n_features)]
        return cls(tuple(Feature(n, "number", missing) for n in labels), named=bool(names))

    @property
    def names(self) -> list[str]:
        """Feature names in model order."""
        return [f.name for f in self.features]

    @property
    def width(self) -> int:
        """Number of features."""
        return len(self.features)

    @property
    def text_positions(self) -> tuple[int, ...]:
        """Positions of the features that travel as text."""
        return self._text

    @property
    def numeric_positions(self) -> tuple[int, ...]:
        """Positions of the features carried in the float block, in block order."""
        return self._numeric

    @property
    def numeric_only(self) -> bool:
        """No text feature: rows travel as one raw float block (the fast path)."""
        return not self._text

    @property
    def needs_frame(self) -> bool:
        """The model must be given a DataFrame (text or pandas category columns)."""
        return self._frame

    def with_overrides(self, kinds: dict[str, str]) -> InputSchema:
        """A copy with some features' kinds replaced (``--feature-type name=kind``)."""
        unknown = [n for n in kinds if n not in self.names]
        if unknown:
            raise ValueError(
                f"--feature-type names unknown feature(s) {', '.join(map(repr, unknown))} "
                f"(the model's features: {', '.join(self.names[:20])})"
            )
        feats = tuple(
            Feature(f.name, parse_kind(kinds[f.name]), f.missing, f.categories, f.pandas_category)
            if f.name in kinds
            else f
            for f in self.features
        )
        return InputSchema(feats, self.named)

    def with_missing(self, accepts: Sequence[bool]) -> InputSchema:
        """A copy with the probed missing-value answer per feature."""
        feats = tuple(
            Feature(f.name, f.kind, bool(ok), f.categories, f.pandas_category)
            for f, ok in zip(self.features, accepts, strict=True)
        )
        return InputSchema(feats, self.named)

    def describe(self) -> str:
        """One line: "20 features: 15 number, 5 category; missing accepted by 3"."""
        counts: dict[str, int] = {}
        for f in self.features:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
        missing = sum(f.missing for f in self.features)
        return f"{self.width} features: {kinds}; missing values accepted by {missing}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (stored in `model_versions.input_schema`)."""
        return {"named": self.named, "features": [f.to_json() for f in self.features]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSchema:
        """Inverse of :meth:`to_json`; ValueError on a malformed document."""
        if not isinstance(data, dict) or not isinstance(data.get("features"), list):
            raise ValueError("a schema is a mapping with a 'features' list")
        feats = tuple(Feature.from_json(f) for f in data["features"])
        names = [f.name for f in feats]
        if len(set(names)) != len(names):
            raise ValueError("feature names in a schema must be unique")
        return cls(feats, bool(data.get("named", True)))
