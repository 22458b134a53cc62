"""Model lifecycle in the registry: promote behind the validation gate, retire, shadow.

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

from inferq.common.errors import LifecycleRefused, ModelRetired
from inferq.common.schema import model_aliases, model_shadows, model_versions
from inferq.models import registry
from inferq.models.registry import DEFAULT_ALIAS, ModelVersion
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
    """``mv`` if it may be served; ModelRetired (naming the production version) if retired."""
    if mv.status != "retired":
        return mv
    current = None
    with contextlib.suppress(Exception):  # no production alias: the message says what to do
        current = registry.resolve(engine, mv.name).version
    raise ModelRetired(mv.name, mv.version, current)


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
    engine: Engine, name: str, version: int, alias: str = DEFAULT_ALIAS, *, force: bool = False
) -> PromoteResult:
    """Point ``alias`` at ``version`` behind the gate: never a retired version; a version whose
    checks failed, or that has none when the current one has, only with ``force``."""
    candidate = registry.get_version(engine, name, version)
    if candidate.status == "retired":
        raise LifecycleRefused(
            f"{candidate.ref} is retired: an alias cannot point at it (register it again to "
            "serve this file)"
        )
    try:
        current: ModelVersion | None = registry.resolve(engine, name, None, alias)
    except Exception:
        current = None
    if current is not None and current.version == version:
        note = f"{name}:{alias} already is {candidate.ref}"
        return PromoteResult(candidate, current, alias, [note])
    problems = gate_problems(candidate, current)
    if problems and not force:
        raise LifecycleRefused("promote refused: " + "; ".join(problems) + " (--force to override)")
    promoted = registry.promote(engine, name, version, alias)
    notes = [f"forced past the gate: {p}" for p in problems]
    return PromoteResult(promoted, current, alias, notes)


def retire(engine: Engine, name: str, version: int) -> ModelVersion:
    """Stop serving ``name@version`` for good: refused while an alias or the shadow points at it."""
    mv = registry.get_version(engine, name, version)
    if mv.status == "retired":
        return mv
    if mv.aliases:
        raise LifecycleRefused(
            f"cannot retire {mv.ref}: alias {', '.join(mv.aliases)} points at it; promote "
            f"another version first (`inferq models promote {name} VERSION`)"
        )
    if shadow_of(engine, name) == version:
        raise LifecycleRefused(
            f"cannot retire {mv.ref}: it is {name}'s shadow; `inferq models shadow {name} --off` "
            "first"
        )
    with engine.begin() as conn:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.name == name, model_versions.c.version == version)
            .values(status="retired", retired_at=_now())
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
        raise LifecycleRefused(f"{mv.ref} is retired: it cannot be a shadow")
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
