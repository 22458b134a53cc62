"""Model registry: versions and aliases in the database, artifacts in the model store.

Reading (``resolve``, ``list_models``) needs only SQLAlchemy, so the producer can use it
without importing scikit-learn. Writing (``register``) and ``load`` import
:mod:`models.artifacts`, which imports scikit-learn lazily.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from inferq.common.contract import check_name
from inferq.common.errors import ModelNotFound
from inferq.common.rows.schema import InputSchema
from inferq.common.schema import model_aliases, model_shadows, model_versions
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

DEFAULT_ALIAS = "production"


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
    status: str = "active"  # 'active' | 'retired'
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
    _schema: InputSchema | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def ref(self) -> str:
        """``name@version``, the way inferq prints a model version."""
        return f"{self.name}@{self.version}"

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
        return data


def _row_to_mv(row: Any, aliases: list[str] | None = None, shadow: bool = False) -> ModelVersion:
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
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Parse ``NAME``, ``NAME@VERSION`` or ``NAME:ALIAS`` into (name, version, alias)."""
    if "@" in ref:
        name, _, ver = ref.partition("@")
        if not ver.isdigit():
            raise ModelNotFound(ref)
        return check_name(name), int(ver), None
    if ":" in ref:
        name, _, alias = ref.partition(":")
        return check_name(name), None, check_name(alias, "alias")
    return check_name(ref), None, DEFAULT_ALIAS


def get_version(engine: Engine, name: str, version: int) -> ModelVersion:
    """The registered version ``name@version``; raises ModelNotFound."""
    with engine.connect() as conn:
        row = conn.execute(
            select(model_versions).where(
                model_versions.c.name == name, model_versions.c.version == version
            )
        ).first()
        if row is None:
            raise ModelNotFound(name, version=version)
        aliases = conn.execute(
            select(model_aliases.c.alias).where(
                model_aliases.c.name == name, model_aliases.c.version == version
            )
        ).scalars()
        shadow = conn.execute(
            select(model_shadows.c.version).where(model_shadows.c.name == name)
        ).scalar()
        return _row_to_mv(row, list(aliases), shadow == version)


def resolve(
    engine: Engine, name: str, version: int | None = None, alias: str | None = DEFAULT_ALIAS
) -> ModelVersion:
    """Resolve a pinned version, or an alias (default ``production``), to a ModelVersion."""
    check_name(name)
    if version is not None:
        return get_version(engine, name, int(version))
    alias = check_name(alias or DEFAULT_ALIAS, "alias")
    with engine.connect() as conn:
        found = conn.execute(
            select(model_aliases.c.version).where(
                model_aliases.c.name == name, model_aliases.c.alias == alias
            )
        ).scalar()
        if found is None:
            exists = conn.execute(
                select(func.count())
                .select_from(model_versions)
                .where(model_versions.c.name == name)
            ).scalar()
            raise ModelNotFound(name, alias=alias) if exists else ModelNotFound(name)
    return get_version(engine, name, found)


def find(engine: Engine, ref: str) -> ModelVersion:
    """``NAME@VERSION``, ``NAME:ALIAS``, or ``NAME``: its production version, else its latest."""
    name, version, alias = parse_ref(ref)
    if version is not None or ":" in ref:
        return resolve(engine, name, version, alias)
    try:
        return resolve(engine, name)
    except ModelNotFound as exc:
        if exc.alias is None:
            raise
    with engine.connect() as conn:
        latest = conn.execute(
            select(func.max(model_versions.c.version)).where(model_versions.c.name == name)
        ).scalar()
    if latest is None:  # deleted meanwhile
        raise ModelNotFound(name)
    return get_version(engine, name, int(latest))


def list_models(engine: Engine, name: str | None = None) -> list[ModelVersion]:
    """Every registered version (optionally of one model), newest first per model."""
    with engine.connect() as conn:
        query = select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
        alias_q = select(model_aliases)
        if name is not None:
            query = query.where(model_versions.c.name == name)
            alias_q = alias_q.where(model_aliases.c.name == name)
        aliases: dict[tuple[str, int], list[str]] = {}
        for a in conn.execute(alias_q):
            aliases.setdefault((a.name, a.version), []).append(a.alias)
        shadows = {(r.name, r.version) for r in conn.execute(select(model_shadows))}
        return [
            _row_to_mv(r, aliases.get((r.name, r.version)), (r.name, r.version) in shadows)
            for r in conn.execute(query)
        ]


def alias_targets(engine: Engine, alias: str = DEFAULT_ALIAS) -> list[tuple[str, int]]:
    """(name, version) of every model that has ``alias`` (the worker's default preload set)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(model_aliases.c.name, model_aliases.c.version).where(
                model_aliases.c.alias == alias
            )
        )
        return [(r.name, r.version) for r in rows]


def alias_versions(engine: Engine) -> list[ModelVersion]:
    """Every version some alias points at (what workers must be able to serve)."""
    with engine.connect() as conn:
        pairs = {
            (r.name, r.version)
            for r in conn.execute(select(model_aliases.c.name, model_aliases.c.version))
        }
    return [get_version(engine, name, version) for name, version in sorted(pairs)]


def promote(engine: Engine, name: str, version: int, alias: str = DEFAULT_ALIAS) -> ModelVersion:
    """Point ``alias`` of model ``name`` at ``version`` (creating the alias if needed)."""
    check_name(alias, "alias")
    if get_version(engine, name, version).status == "retired":  # raises ModelNotFound
        from inferq.common.errors import LifecycleRefused

        raise LifecycleRefused(f"{name}@{version} is retired: an alias cannot point at it")
    with engine.begin() as conn:
        changed = conn.execute(
            update(model_aliases)
            .where(model_aliases.c.name == name, model_aliases.c.alias == alias)
            .values(version=version, updated_at=_now())
        ).rowcount
        if not changed:
            conn.execute(
                insert(model_aliases).values(
                    name=name, alias=alias, version=version, updated_at=_now()
                )
            )
    return get_version(engine, name, version)


def register(
    engine: Engine,
    model_store: Path,
    path: Path,
    name: str,
    alias: str | None = None,
    *,
    reference: Path | None = None,
    feature_types: dict[str, str] | None = None,
    schema_file: Path | None = None,
    trusted: list[str] | None = None,
) -> ModelVersion:
    """Register a joblib or skops file of a fitted estimator, with its input schema, as the
    next version. A skops file's types that skops does not trust must be named in ``trusted``."""
    import sklearn
    from inferq.models.artifacts import detect_format, read_artifact, sha256_file, untrusted_types
    from inferq.models.schema_infer import infer_schema

    check_name(name)
    if alias is not None:
        check_name(alias, "alias")
    fmt = detect_format(Path(path))
    model, info = read_artifact(Path(path), trusted=trusted)
    # Kinds from the model, ``reference`` or ``schema_file``, then ``feature_types``; missing
    # values probed by calling the model (models/schema_infer.py).
    inferred = infer_schema(
        model,
        info.n_features,
        info.feature_names,
        reference=reference,
        feature_types=feature_types,
        schema_file=schema_file,
        path=str(path),
    )
    del model  # the artifact is copied below; the probed object is not needed any more
    for _attempt in range(5):  # a concurrent register may take the same number: try the next
        with engine.connect() as conn:
            latest = conn.execute(
                select(func.max(model_versions.c.version)).where(model_versions.c.name == name)
            ).scalar()
        version = (latest or 0) + 1
        rel = Path(name) / str(version) / f"model.{fmt}"
        dest = model_store / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        shutil.copyfile(path, tmp)
        digest = sha256_file(tmp)
        # NOTE: the trusted list is read from the stored copy (the bytes workers will load):
        # exactly the types it needs, all of which the caller named.
        needs = untrusted_types(tmp) if fmt == "skops" else None
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(model_versions).values(
                        name=name,
                        version=version,
                        sha256=digest,
                        sklearn_version=sklearn.__version__,
                        task=info.task,
                        estimator=info.estimator,
                        classes=info.classes,
                        n_features=info.n_features,
                        feature_names=info.feature_names,
                        has_proba=int(info.has_proba),
                        artifact=rel.as_posix(),
                        size_bytes=tmp.stat().st_size,
                        created_at=_now(),
                        input_schema=inferred.document(),
                        reference=inferred.reference,
                        format=fmt,
                        trusted=needs,
                    )
                )
        except SAIntegrityError:
            tmp.unlink(missing_ok=True)
            continue
        tmp.replace(dest)
        break
    else:
        raise RuntimeError(f"could not allocate a version number for {name!r}")
    if alias is not None:
        return promote(engine, name, version, alias)
    return get_version(engine, name, version)


def load(model_store: Path, mv: ModelVersion) -> Any:
    """Load a registered version's estimator, verifying sha256 and scikit-learn version first."""
    from inferq.models.artifacts import load_verified

    if mv.format == "joblib":
        return load_verified(model_store / mv.artifact, mv.sha256, mv.sklearn_version)
    # skops: exactly the types trusted at registration, nothing more.
    return load_verified(
        model_store / mv.artifact,
        mv.sha256,
        mv.sklearn_version,
        fmt=mv.format,
        trusted=list(mv.trusted or []),
    )


def load_onnx(model_store: Path, mv: ModelVersion) -> bytes:
    """The version's ONNX file, verified against the sha256 recorded when parity passed."""
    from inferq.models.artifacts import read_verified

    doc = mv.onnx or {}
    return read_verified(model_store / str(doc.get("artifact") or ""), str(doc.get("sha256")))
