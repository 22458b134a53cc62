"""`inferq drift`: PSI and Jensen-Shannon per feature and for the output, against each
version's baseline, from the exact per-batch counts in `drift_counts`.

It reads counts, never `predictions`: a window's drift is one GROUP BY over rows that number
(hours x processes x features x bins), whatever the number of predictions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from inferq.common import drift
from inferq.common.errors import InvalidInput
from inferq.models import registry
from sqlalchemy import Engine, text

BY = ("day", "version", "worker")


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature (or the output) in one group."""

    feature: str
    rows: int
    psi: float
    js: float
    noise: float  # PSI that sampling noise alone exceeds 1% of the time at this row count
    verdict: str  # too few rows | ok | warn | drift
    bins: list[dict[str, Any]]  # label, reference share, window share

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(slots=True)
class DriftGroup:
    """The features of one model version in one group (a day, a worker node, or all)."""

    version: int
    group: str
    features: list[FeatureDrift] = field(default_factory=list)
    missing_baseline: str | None = None

    @property
    def rows(self) -> int:
        """Rows counted in this group (the most any feature saw)."""
        return max((f.rows for f in self.features), default=0)

    @property
    def flagged(self) -> list[FeatureDrift]:
        """Features whose verdict is warn or drift."""
        return [f for f in self.features if f.verdict in ("warn", "drift")]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "version": self.version,
            "group": self.group,
            "rows": self.rows,
            "missing_baseline": self.missing_baseline,
            "flagged": [f.feature for f in self.flagged],
            "features": [f.to_json() for f in self.features],
        }


def _group_sql(dialect: str, by: str | None) -> str:
    if by == "day":
        return (
            "date_trunc('day', bucket)::date::text"
            if dialect == "postgresql"
            else "substr(bucket, 1, 10)"
        )
    if by == "worker":
        return (
            "split_part(worker, ':', 1)"
            if dialect == "postgresql"
            else "substr(worker, 1, instr(worker || ':', ':') - 1)"
        )
    return "'all'"


def window_counts(
    engine: Engine, name: str, since: dt.datetime, version: int | None, by: str | None
) -> dict[tuple[int, str, str], np.ndarray]:
    """{(version, baseline id, group): counts vector} summed over the window."""
    if by is not None and by not in BY:
        raise InvalidInput(f"--by {by!r}: use one of {', '.join(BY)}")
    group = _group_sql(engine.dialect.name, by)
    where = "model_name = :name AND bucket >= :since" + (
        " AND model_version = :version" if version is not None else ""
    )
    params = {"name": name, "since": since, "version": version}
    out: dict[tuple[int, str, str], np.ndarray] = {}
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Element-wise sums in SQL: rows are hours x processes, whatever the predictions.
            sql = (
                f"SELECT model_version, baseline, {group} AS grp, i, sum(v) FROM drift_counts, "
                f"unnest(counts) WITH ORDINALITY AS u(v, i) WHERE {where} "
                "GROUP BY model_version, baseline, grp, i"
            )
            cells: dict[tuple[int, str, str], dict[int, int]] = {}
            for r in conn.execute(text(sql), params):
                cells.setdefault((int(r[0]), r[1], str(r[2])), {})[int(r[3]) - 1] = int(r[4])
            for key, found in cells.items():
                vec = np.zeros(max(found) + 1, dtype=np.int64)
                vec[list(found)] = list(found.values())
                out[key] = vec
            return out
        import json

        sql = (
            f"SELECT model_version, baseline, {group} AS grp, counts FROM drift_counts "
            f"WHERE {where}"
        )
        for r in conn.execute(text(sql), params):
            key = (int(r[0]), r[1], str(r[2]))
            vec = np.asarray(json.loads(r[3]) if isinstance(r[3], str) else r[3], dtype=np.int64)
            out[key] = out[key] + vec if key in out else vec
    return out


def feature_drift(fb: drift.FeatureBins, vec: np.ndarray, ref_rows: int) -> FeatureDrift:
    """PSI, JS and verdict of one feature's window counts against its frozen bins."""
    rows = int(vec.sum())
    psi = drift.psi(fb.ref_share, vec) if rows else 0.0
    js = drift.js_distance(fb.ref_share, vec) if rows else 0.0
    noise = drift.psi_noise(rows, ref_rows, fb.n_bins) if rows else float("inf")
    share = vec / rows if rows else np.zeros(fb.n_bins)
    bins = [
        {"label": label, "reference": round(float(ref), 6), "window": round(float(w), 6)}
        for label, ref, w in zip(fb.labels(), fb.ref_share, share.tolist(), strict=True)
    ]
    verdict = drift.verdict(psi, rows, ref_rows, fb.n_bins)
    return FeatureDrift(fb.name, rows, float(psi), float(js), float(noise), verdict, bins)


def drift_report(
    engine: Engine, name: str, since: dt.datetime, version: int | None = None,
    by: str | None = None,
) -> list[DriftGroup]:  # fmt: skip
    """Every (version, group) with counts in the window, each against its version's baseline.

    Counts kept against an earlier baseline of a version (it was given a new one since) use
    another bin layout: they are left out, and the group says so.
    """
    registry.find(engine, name)  # ModelNotFound for an unknown model
    current: dict[int, tuple[str, drift.Baseline] | None] = {}
    merged: dict[tuple[int, str], np.ndarray | None] = {}
    for (v, base_id, grp), vec in sorted(window_counts(engine, name, since, version, by).items()):
        if v not in current:
            doc = registry.get_version(engine, name, v).baseline
            current[v] = (drift.baseline_id(doc), drift.Baseline.from_json(doc)) if doc else None
        known = current[v]
        if known is None or known[0] != base_id:
            merged.setdefault((v, grp), None)
            continue
        width = known[1].width
        vec = np.pad(vec, (0, max(0, width - len(vec))))[:width]
        old = merged.get((v, grp))
        merged[(v, grp)] = vec if old is None else old + vec
    groups = []
    for (v, grp), total in sorted(merged.items()):
        g = DriftGroup(v, grp)
        known = current[v]
        if known is None:
            g.missing_baseline = no_baseline(name, v)
        elif total is None:
            g.missing_baseline = (
                f"{name}@{v}: the counts of this window were kept against an earlier baseline"
            )
        else:
            base = known[1]
            for fb, offset in base.layout():
                cells = total[offset : offset + fb.n_bins]
                g.features.append(feature_drift(fb, cells, base.ref_rows))
        groups.append(g)
    return groups


def no_baseline(name: str, version: int) -> str:
    """What to say about a version without a drift baseline, and how to add one."""
    return (
        f"{name}@{version} has no drift baseline (registered without --reference); add one "
        f"with `inferq models baseline {name} {version} --reference FILE`"
    )
