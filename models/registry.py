"""Model registry: versions and aliases in the database, artifacts in the model store.

Reading (``resolve``, ``list_models``) needs only SQLAlchemy, so the producer can use it
without importing scikit-learn. Writing (``register``) and ``load`` import
:mod:`models.artifacts`, which imports scikit-learn lazily.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from inferq.common.contract import check_name
from inferq.common.errors import ModelNotFound
from inferq.common.schema import model_aliases, model_shadows, model_versions
from inferq.models.version import ModelVersion as ModelVersion
from inferq.models.version import row_to_mv
from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

DEFAULT_ALIAS = "production"
#: Maintained by the registry: the newest version that is not retired (or archived). A bare
#: ``NAME`` resolves to ``production`` if the model has it, else to ``latest``.
LATEST_ALIAS = "latest"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Parse ``NAME``, ``NAME@VERSION`` or ``NAME:ALIAS`` into (name, version, alias); a bare
    ``NAME`` has neither (None, None): it resolves to production, else latest."""
    if "@" in ref:
        name, _, ver = ref.partition("@")
        if not ver.isdigit():
            raise ModelNotFound(ref)
        return check_name(name), int(ver), None
    if ":" in ref:
        name, _, alias = ref.partition(":")
        return check_name(name), None, check_name(alias, "alias")
    return check_name(ref), None, None


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
        return row_to_mv(row, list(aliases), shadow == version)


def default_target(aliases: dict[str, int]) -> int | None:
    """The version a bare ``NAME`` means, given the model's {alias: version}: production,
    else latest (None: neither)."""
    found = aliases.get(DEFAULT_ALIAS)
    return found if found is not None else aliases.get(LATEST_ALIAS)


def resolve(
    engine: Engine, name: str, version: int | None = None, alias: str | None = None
) -> ModelVersion:
    """Resolve a pinned version, else an alias, else (no alias given) production if the model
    has it, else latest, to a ModelVersion. An alias that was named is never substituted."""
    check_name(name)
    if version is not None:
        return get_version(engine, name, int(version))
    wanted = [check_name(alias, "alias")] if alias else [DEFAULT_ALIAS, LATEST_ALIAS]
    with engine.connect() as conn:
        rows = conn.execute(
            select(model_aliases.c.alias, model_aliases.c.version).where(
                model_aliases.c.name == name, model_aliases.c.alias.in_(wanted)
            )
        )
        targets = {r.alias: int(r.version) for r in rows}
        found = targets.get(alias) if alias else default_target(targets)
        if found is None:
            exists = conn.execute(
                select(func.count())
                .select_from(model_versions)
                .where(model_versions.c.name == name)
            ).scalar()
            if not exists:
                raise ModelNotFound(name)
            raise ModelNotFound(name, alias=alias or DEFAULT_ALIAS)
    return get_version(engine, name, found)


def find(engine: Engine, ref: str) -> ModelVersion:
    """``NAME@VERSION``, ``NAME:ALIAS``, or ``NAME``: production, else latest, else (every
    version retired) the newest version; for showing a version, not for serving it."""
    name, version, alias = parse_ref(ref)
    if version is not None or alias is not None:
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


def list_models(
    engine: Engine, name: str | None = None, *, archived: bool = True
) -> list[ModelVersion]:
    """Every registered version (optionally of one model; ``archived=False``: without the
    archived ones), by name and version."""
    with engine.connect() as conn:
        query = select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
        if not archived:
            query = query.where(model_versions.c.archived_at.is_(None))
        alias_q = select(model_aliases)
        if name is not None:
            query = query.where(model_versions.c.name == name)
            alias_q = alias_q.where(model_aliases.c.name == name)
        aliases: dict[tuple[str, int], list[str]] = {}
        for a in conn.execute(alias_q):
            aliases.setdefault((a.name, a.version), []).append(a.alias)
        shadows = {(r.name, r.version) for r in conn.execute(select(model_shadows))}
        return [
            row_to_mv(r, aliases.get((r.name, r.version)), (r.name, r.version) in shadows)
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
    from inferq.common.errors import LifecycleRefused

    check_name(alias, "alias")
    if alias == LATEST_ALIAS:
        raise LifecycleRefused(
            f"the {LATEST_ALIAS!r} alias is moved by the registry (the newest version that is "
            "not retired): promote to another alias, e.g. production"
        )
    if get_version(engine, name, version).status == "retired":  # raises ModelNotFound
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


def point_latest(conn: Connection, name: str) -> int | None:
    """Move ``name``'s ``latest`` alias to its newest version that is not retired (drop it when
    there is none), inside the caller's transaction; returns that version."""
    newest = conn.execute(
        select(func.max(model_versions.c.version)).where(
            model_versions.c.name == name, model_versions.c.status == "active"
        )
    ).scalar()
    where = (model_aliases.c.name == name, model_aliases.c.alias == LATEST_ALIAS)
    if newest is None:
        conn.execute(delete(model_aliases).where(*where))
        return None
    if not conn.execute(
        update(model_aliases).where(*where).values(version=newest, updated_at=_now())
    ).rowcount:
        conn.execute(
            insert(model_aliases).values(
                name=name, alias=LATEST_ALIAS, version=newest, updated_at=_now()
            )
        )
    return int(newest)


def registered_by() -> str:
    """``user@host`` of this process, for the record (never fails: "unknown" parts)."""
    try:
        user = getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (e.g. a container's random uid)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    try:
        host = socket.gethostname() or "unknown"
    except OSError:
        host = "unknown"
    return f"{user}@{host}"


def same_file(engine: Engine, name: str, digest: str) -> ModelVersion | None:
    """The newest version of ``name`` whose artifact has sha256 ``digest``, if any."""
    with engine.connect() as conn:
        found = conn.execute(
            select(func.max(model_versions.c.version)).where(
                model_versions.c.name == name, model_versions.c.sha256 == digest
            )
        ).scalar()
    return None if found is None else get_version(engine, name, int(found))


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
    description: str | None = None,
    tags: dict[str, str] | None = None,
    force: bool = False,
) -> ModelVersion:
    """Register a joblib or skops file of a fitted estimator, with its input schema, as the
    next version, and move the model's ``latest`` alias to it. A skops file's types that skops
    does not trust must be named in ``trusted``. The same file (sha256) as an existing version
    of ``name`` is refused (AlreadyRegistered) unless ``force``. Features that differ from the
    production version's are recorded on the version (``schema_changes``)."""
    import sklearn
    from inferq.common.errors import AlreadyRegistered
    from inferq.common.rows.schema import InputSchema
    from inferq.models.artifacts import detect_format, read_artifact, sha256_file, untrusted_types
    from inferq.models.schema_diff import schema_changes
    from inferq.models.schema_infer import infer_schema

    check_name(name)
    if alias is not None:
        check_name(alias, "alias")
    fmt = detect_format(Path(path))
    if not force:  # before unpickling: a duplicate costs one read of the file
        twin = same_file(engine, name, sha256_file(Path(path)))
        if twin is not None:
            raise AlreadyRegistered(twin.ref, twin.sha256, _state(twin))
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
    document = inferred.document()
    changed = None
    try:
        production: ModelVersion | None = resolve(engine, name, None, DEFAULT_ALIAS)
    except ModelNotFound:
        production = None
    if production is not None:
        found = schema_changes(production.schema, InputSchema.from_json(document))
        changed = {"against": production.ref, "changes": found} if found else None
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
                        input_schema=document,
                        reference=inferred.reference,
                        format=fmt,
                        trusted=needs,
                        description=description,
                        tags=dict(tags) if tags else None,
                        registered_by=registered_by(),
                        schema_changes=changed,
                    )
                )
                point_latest(conn, name)
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


def _state(mv: ModelVersion) -> str:
    return "archived" if mv.archived else mv.status


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
