"""A registered model version as the registry returns it (no scikit-learn, no database I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any

from inferq.common.rows.schema import InputSchema


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered version of a model (a row of `model_versions`, plus its aliases)."""

    name: str
    version: int
    sha256: str
    sklearn_version: str
    task: str
    estimator: str
    classes: list[str] | None
    n_features: int
    feature_names: list[str] | None
    has_proba: bool
    artifact: str
    size_bytes: int
    created_at: dt.datetime
    aliases: list[str] = field(default_factory=list)
    #: InputSchema.to_json() plus "source" and "warnings"; None for versions registered
    #: before schemas existed (they are served as all numbers).
    input_schema: dict[str, Any] | None = None
    #: The reference sample given at registration: {"path", "sha256", "rows", "format"}.
    reference: dict[str, Any] | None = None
    status: str = "active"  # 'active' | 'retired' (archived versions are retired too)
    retired_at: dt.datetime | None = None
    format: str = "joblib"  # 'joblib' | 'skops'
    #: skops: the types trusted at registration; workers load with exactly this list.
    trusted: list[str] | None = None
    #: The validation gate's result on the reference sample (models/checks.py).
    checks: dict[str, Any] | None = None
    runtime: str = "sklearn"  # what workers serve it with: 'sklearn' | 'onnx'
    #: ONNX conversion and parity report (models/optimize.py); None if never optimized.
    onnx: dict[str, Any] | None = None
    shadow: bool = False  # the model's jobs are also scored by this version
    #: Drift baseline (common/drift.py Baseline.to_json()); None: no reference given.
    baseline: dict[str, Any] | None = None
    #: Free text and KEY=VALUE tags given at registration or with `models describe`.
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    #: ``user@host`` that registered it (None for versions registered before 0011).
    registered_by: str | None = None
    #: Set by `models archive`: hidden from `models list` (an archived version is retired).
    archived_at: dt.datetime | None = None
    #: How its features differ from the production version it was registered beside:
    #: {"against": "name@version", "changes": [...]}; None when they did not differ.
    schema_changes: dict[str, Any] | None = None
    _schema: InputSchema | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def ref(self) -> str:
        """``name@version``, the way inferq prints a model version."""
        return f"{self.name}@{self.version}"

    @property
    def archived(self) -> bool:
        """Archived (`models archive`): retired and hidden from `models list`."""
        return self.archived_at is not None

    @property
    def schema(self) -> InputSchema:
        """The input schema (the all-number one for versions registered before schemas)."""
        if self._schema is None:  # parsed once: producers read it on every submit
            parsed = (
                InputSchema.numeric(self.n_features, self.feature_names)
                if self.input_schema is None
                else InputSchema.from_json(self.input_schema)
            )
            object.__setattr__(self, "_schema", parsed)
            return parsed
        return self._schema

    @property
    def schema_warnings(self) -> list[str]:
        """Warnings from deriving the schema at registration (e.g. the probe row failed)."""
        return list((self.input_schema or {}).get("warnings") or [])

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (for ``--json`` output)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_schema"}
        data["created_at"] = self.created_at.isoformat()
        data["retired_at"] = self.retired_at.isoformat() if self.retired_at else None
        data["archived_at"] = self.archived_at.isoformat() if self.archived_at else None
        return data


def row_to_mv(row: Any, aliases: list[str] | None = None, shadow: bool = False) -> ModelVersion:
    m = row._mapping
    return ModelVersion(
        name=m["name"],
        version=m["version"],
        sha256=m["sha256"],
        sklearn_version=m["sklearn_version"],
        task=m["task"],
        estimator=m["estimator"],
        classes=m["classes"],
        n_features=m["n_features"],
        feature_names=m["feature_names"],
        has_proba=bool(m["has_proba"]),
        artifact=m["artifact"],
        size_bytes=m["size_bytes"],
        created_at=m["created_at"],
        aliases=sorted(aliases or []),
        input_schema=m["input_schema"],
        reference=m["reference"],
        status=m["status"],
        retired_at=m["retired_at"],
        format=m["format"],
        trusted=m["trusted"],
        checks=m["checks"],
        runtime=m["runtime"],
        onnx=m["onnx"],
        shadow=shadow,
        baseline=m["baseline"],
        description=m["description"],
        tags=dict(m["tags"] or {}),
        registered_by=m["registered_by"],
        archived_at=m["archived_at"],
        schema_changes=m["schema_changes"],
    )
