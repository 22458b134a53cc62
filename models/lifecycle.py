"""Model lifecycle in the registry: promote behind the validation gate (and the schema-change
gate), retire, archive, shadow, description and tags.

Workers follow these tables on their own (workers/reload.py polls :func:`serving_state`):
a promote, retire, shadow or optimize reaches every running worker within a few seconds,
without a restart. Reading needs only SQLAlchemy (no scikit-learn), like the registry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from inferq.common.contract import check_name
from inferq.common.errors import LifecycleRefused, ModelRetired, SchemaChangeRefused
from inferq.common.schema import model_aliases, model_shadows, model_versions
from inferq.models import registry
from inferq.models.registry import DEFAULT_ALIAS, LATEST_ALIAS, ModelVersion
from sqlalchemy import Engine, delete, insert, select, tuple_, update


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class ServingState:
    """What workers must serve now: alias targets, shadows, retired versions, runtimes."""

    #: (name, alias) -> version
    aliases: dict[tuple[str, str], int] = field(default_factory=dict)
    #: name -> shadow version
    shadows: dict[str, int] = field(default_factory=dict)
    retired: frozenset[tuple[str, int]] = frozenset()
    #: (name, version) -> serving_sig() of every alias and shadow target
    runtimes: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything a worker serves changes (cheap to compare every poll)."""
        doc = {
            "a": sorted((n, a, v) for (n, a), v in self.aliases.items()),
            "s": sorted(self.shadows.items()),
            "r": sorted(self.retired),
            "t": sorted((n, v, *sig) for (n, v), sig in self.runtimes.items()),
        }
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


def serving_state(engine: Engine) -> ServingState:
    """One consistent read of the serving tables (three small queries, one transaction)."""
    with engine.connect() as conn:
        aliases = {
            (r.name, r.alias): int(r.version)
            for r in conn.execute(
                select(model_aliases.c.name, model_aliases.c.alias, model_aliases.c.version)
            )
        }
        shadows = {
            r.name: int(r.version)
            for r in conn.execute(select(model_shadows.c.name, model_shadows.c.version))
        }
        retired = frozenset(
            (r.name, int(r.version))
            for r in conn.execute(
                select(model_versions.c.name, model_versions.c.version).where(
                    model_versions.c.status == "retired"
                )
            )
        )
        wanted = {(n, v) for (n, _a), v in aliases.items()} | set(shadows.items())
        runtimes: dict[tuple[str, int], tuple[str, ...]] = {}
        if wanted:
            key = tuple_(model_versions.c.name, model_versions.c.version)
            for r in conn.execute(
                select(
                    model_versions.c.name,
                    model_versions.c.version,
                    model_versions.c.runtime,
                    model_versions.c.onnx,
                    model_versions.c.baseline,
                ).where(key.in_(sorted(wanted)))
            ):
                runtimes[(r.name, int(r.version))] = serving_sig(r)
    return ServingState(aliases, shadows, retired, runtimes)


#: serving_sig() of a version served with scikit-learn and no drift baseline.
DEFAULT_SIG = ("sklearn", "", "")


def serving_sig(mv: Any) -> tuple[str, ...]:
    """What a worker must reload a version for: its runtime, its ONNX file, its baseline."""
    from inferq.common.drift import baseline_id

    onnx = str((mv.onnx or {}).get("sha256") or "")
    return (mv.runtime, onnx, baseline_id(mv.baseline) if mv.baseline else "")


def check_servable(engine: Engine, mv: ModelVersion) -> ModelVersion:
    """``mv`` if it may be served; ModelRetired (naming the version ``NAME`` resolves to) if it
    is retired or archived."""
    if mv.status != "retired":
        return mv
    current = None
    with contextlib.suppress(Exception):  # nothing to serve: the message says what to do
        current = registry.resolve(engine, mv.name).version
    raise ModelRetired(mv.name, mv.version, current, archived=mv.archived)


def _metric_line(mv: ModelVersion | None) -> str:
    if mv is None:
        return "-"
    checks = mv.checks or {}
    metrics = checks.get("metrics") or {}
    if not checks:
        return f"{mv.ref}: no checks"
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float))
    state = "passed" if checks.get("passed") else "FAILED"
    return f"{mv.ref}: checks {state}" + (f"; {shown}" if shown else "")


@dataclass(frozen=True, slots=True)
class PromoteResult:
    """A promote: the new target, the version it replaced, and notes (gate bypasses)."""

    promoted: ModelVersion
    previous: ModelVersion | None
    alias: str
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``--json``): the promoted version, as `models show --json` prints
        it, plus what the alias pointed at before and the gate's notes."""
        previous = self.previous
        return {
            **self.promoted.to_json(),
            "moved_alias": self.alias,
            "previous_version": previous.version if previous else None,
            "metrics": (self.promoted.checks or {}).get("metrics"),
            "previous_metrics": ((previous.checks or {}) if previous else {}).get("metrics"),
            "notes": self.notes,
        }

    def comparison(self) -> list[str]:
        """The candidate's checks and metric beside the current version's (for the CLI)."""
        return [
            f"candidate  {_metric_line(self.promoted)}",
            f"current    {_metric_line(self.previous)}",
        ]


def gate_problems(candidate: ModelVersion, current: ModelVersion | None) -> list[str]:
    """Why the validation gate refuses ``candidate`` (empty: it may be promoted)."""
    problems = []
    checks = candidate.checks
    if checks and not checks.get("passed"):
        problems.append(
            f"{candidate.ref} failed its checks: {checks.get('reason') or 'see models show'}"
        )
    elif not checks and current is not None and (current.checks or {}).get("passed"):
        problems.append(
            f"{candidate.ref} has no checks while {current.ref} (current) passed its checks; "
            f"run `inferq models check {candidate.name} {candidate.version} --reference FILE`"
        )
    return problems


def promote(
    engine: Engine,
    name: str,
    version: int,
    alias: str = DEFAULT_ALIAS,
    *,
    force: bool = False,
    accept_schema_change: bool = False,
) -> PromoteResult:
    """Point ``alias`` at ``version`` behind the gates: never a retired (or archived) version,
    nor the registry's own ``latest``; a version whose checks failed, or that has none when
    the current one has, only with ``force``; one whose features differ from the current
    target's only with ``accept_schema_change``."""
    from inferq.models.schema_diff import schema_changes

    if check_name(alias, "alias") == LATEST_ALIAS:
        registry.promote(engine, name, version, alias)  # LifecycleRefused, with the reason
    candidate = registry.get_version(engine, name, version)
    if candidate.status == "retired":
        state = "archived" if candidate.archived else "retired"
        raise LifecycleRefused(
            f"{candidate.ref} is {state}: an alias cannot point at it (register the file "
            "again with --force to serve it)"
        )
    try:
        current: ModelVersion | None = registry.resolve(engine, name, None, alias)
    except Exception:
        current = None
    if current is not None and current.version == version:
        note = f"{name}:{alias} already is {candidate.ref}"
        return PromoteResult(candidate, current, alias, [note])
    changes = schema_changes(current.schema, candidate.schema) if current is not None else []
    problems = gate_problems(candidate, current)
    if problems and not force:
        raise LifecycleRefused("promote refused: " + "; ".join(problems) + " (--force to override)")
    if changes and not accept_schema_change and current is not None:
        raise SchemaChangeRefused(candidate.ref, current.ref, alias, changes)
    promoted = registry.promote(engine, name, version, alias)
    notes = [f"forced past the gate: {p}" for p in problems]
    if changes and current is not None:
        notes.append(f"schema change accepted ({current.ref} -> {candidate.ref}): "
                     + "; ".join(changes))  # fmt: skip
    return PromoteResult(promoted, current, alias, notes)


def _check_unused(engine: Engine, mv: ModelVersion, action: str) -> None:
    """LifecycleRefused while an alias (``latest`` aside: it moves) or the shadow points at mv."""
    held = [a for a in mv.aliases if a != LATEST_ALIAS]
    if held:
        raise LifecycleRefused(
            f"cannot {action} {mv.ref}: alias {', '.join(held)} points at it; promote "
            f"another version first (`inferq models promote {mv.name} VERSION --alias "
            f"{held[0]}`)"
        )
    if shadow_of(engine, mv.name) == mv.version:
        raise LifecycleRefused(
            f"cannot {action} {mv.ref}: it is {mv.name}'s shadow; `inferq models shadow "
            f"{mv.name} --off` first"
        )


def retire(engine: Engine, name: str, version: int) -> ModelVersion:
    """Stop serving ``name@version`` for good: refused while an alias or the shadow points at it.
    The ``latest`` alias moves back to the newest version still active."""
    mv = registry.get_version(engine, name, version)
    if mv.status == "retired":
        return mv
    _check_unused(engine, mv, "retire")
    with engine.begin() as conn:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.name == name, model_versions.c.version == version)
            .values(status="retired", retired_at=_now())
        )
        registry.point_latest(conn, name)
    return registry.get_version(engine, name, version)


def archive(engine: Engine, name: str, version: int, *, undo: bool = False) -> ModelVersion:
    """Archive ``name@version``: retire it (if it is not yet) and hide it from `models list`;
    refused while an alias or the shadow points at it. ``undo`` shows it again, still retired
    (a retired version is never served again: register the file again to serve it)."""
    mv = registry.get_version(engine, name, version)
    where = (model_versions.c.name == name, model_versions.c.version == version)
    if undo:
        if mv.archived:
            with engine.begin() as conn:
                conn.execute(update(model_versions).where(*where).values(archived_at=None))
        return registry.get_version(engine, name, version)
    if mv.archived:
        return mv
    _check_unused(engine, mv, "archive")
    now = _now()
    with engine.begin() as conn:
        conn.execute(
            update(model_versions)
            .where(*where)
            .values(status="retired", retired_at=mv.retired_at or now, archived_at=now)
        )
        registry.point_latest(conn, name)
    return registry.get_version(engine, name, version)


def describe(
    engine: Engine,
    name: str,
    version: int,
    *,
    description: str | None = None,
    tags: dict[str, str] | None = None,
    untag: list[str] | None = None,
) -> ModelVersion:
    """Change a version's description (``""`` clears it) and tags (``tags`` set or replace
    keys, ``untag`` removes them; an unknown key to remove is refused)."""
    from inferq.common.errors import InvalidInput

    mv = registry.get_version(engine, name, version)
    merged = dict(mv.tags)
    unknown = [k for k in untag or [] if k not in merged]
    if unknown:
        raise InvalidInput(
            f"{mv.ref} has no tag {', '.join(map(repr, unknown))} (tags: "
            f"{', '.join(sorted(merged)) or 'none'})"
        )
    for key in untag or []:
        del merged[key]
    merged.update(tags or {})
    values: dict[str, Any] = {"tags": merged or None}
    if description is not None:
        values["description"] = description or None
    with engine.begin() as conn:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.name == name, model_versions.c.version == version)
            .values(**values)
        )
    return registry.get_version(engine, name, version)


def shadow_of(engine: Engine, name: str) -> int | None:
    """The version ``name``'s jobs are also scored by, or None."""
    with engine.connect() as conn:
        found = conn.execute(
            select(model_shadows.c.version).where(model_shadows.c.name == name)
        ).scalar()
    return int(found) if found is not None else None


def set_shadow(engine: Engine, name: str, version: int | None) -> ModelVersion | None:
    """Score ``name``'s jobs also with ``version`` (None: stop); returns the shadow version."""
    with engine.begin() as conn:
        conn.execute(delete(model_shadows).where(model_shadows.c.name == name))
        if version is None:
            return None
    mv = registry.get_version(engine, name, version)
    if mv.status == "retired":
        state = "archived" if mv.archived else "retired"
        raise LifecycleRefused(f"{mv.ref} is {state}: it cannot be a shadow")
    try:
        primary = registry.resolve(engine, name)
    except Exception:
        primary = None
    if primary is not None and primary.version == version:
        raise LifecycleRefused(
            f"{mv.ref} is {name}'s production version already: shadow another version"
        )
    with engine.begin() as conn:
        conn.execute(insert(model_shadows).values(name=name, version=version, since=_now()))
    return mv


def record(engine: Engine, name: str, version: int, **values: Any) -> ModelVersion:
    """Store lifecycle facts on a version (``checks=``, ``onnx=``, ``runtime=``, ``baseline=``)."""
    allowed = {"checks", "onnx", "runtime", "baseline"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"not a lifecycle column: {', '.join(sorted(unknown))}")
    registry.get_version(engine, name, version)  # ModelNotFound
    with engine.begin() as conn:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.name == name, model_versions.c.version == version)
            .values(**values)
        )
    return registry.get_version(engine, name, version)
