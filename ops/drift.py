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
) -> dict[tuple[int, str], dict[str, dict[int, int]]]:
    """{(version, group): {feature: {bin: n}}} summed over the window."""
    if by is not None and by not in BY:
        raise InvalidInput(f"--by {by!r}: use one of {', '.join(BY)}")
    group = _group_sql(engine.dialect.name, by)
    sql = (
        f"SELECT model_version, {group} AS grp, feature, bin, sum(n) AS n FROM drift_counts "
        "WHERE model_name = :name AND bucket >= :since"
        + (" AND model_version = :version" if version is not None else "")
        + " GROUP BY model_version, grp, feature, bin"
    )
    out: dict[tuple[int, str], dict[str, dict[int, int]]] = {}
    with engine.connect() as conn:
        for r in conn.execute(text(sql), {"name": name, "since": since, "version": version}):
            out.setdefault((int(r[0]), str(r[1])), {}).setdefault(r[2], {})[int(r[3])] = int(r[4])
    return out


def feature_drift(fb: drift.FeatureBins, counts: dict[int, int], ref_rows: int) -> FeatureDrift:
    """PSI, JS and verdict of one feature's window counts against its frozen bins."""
    vec = np.zeros(fb.n_bins, dtype=np.int64)
    for b, n in counts.items():
        if 0 <= b < fb.n_bins:
            vec[b] = n
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
    """Every (version, group) with counts in the window, each against its version's baseline."""
    registry.find(engine, name)  # ModelNotFound for an unknown model
    groups = []
    baselines: dict[int, drift.Baseline | None] = {}
    for (v, grp), features in sorted(window_counts(engine, name, since, version, by).items()):
        if v not in baselines:
            doc = registry.get_version(engine, name, v).baseline
            baselines[v] = drift.Baseline.from_json(doc) if doc else None
        base = baselines[v]
        g = DriftGroup(v, grp)
        if base is None:
            g.missing_baseline = no_baseline(name, v)
        else:
            fbs = list(base.features) + ([base.output] if base.output is not None else [])
            for fb in fbs:
                g.features.append(feature_drift(fb, features.get(fb.name, {}), base.ref_rows))
        groups.append(g)
    return groups


def no_baseline(name: str, version: int) -> str:
    """What to say about a version without a drift baseline, and how to add one."""
    return (
        f"{name}@{version} has no drift baseline (registered without --reference); add one "
        f"with `inferq models baseline {name} {version} --reference FILE`"
    )
