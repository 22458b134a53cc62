"""Drift and label-free accuracy math against a frozen reference baseline (pure numpy).

A version's baseline freezes, per feature and for the model's output, the bins of a reference
sample and the reference's share in each (models/baseline.py builds it). Workers count every
batch into those bins (workers/monitor.py); reports sum the counts of a window and compare
them with the reference shares here. Frozen bins keep counts exact and mergeable across
batches, hours and workers, which refitting bins per window would not.

PSI alone is a poor alarm for small windows: with no real change, PSI over 10 bins exceeds
0.1 in ~85% of 100-row windows against a 100-row reference (~40% against 5,000 rows). Under
no drift PSI ≈ (1/n + 1/m)·χ²(B-1) (n window rows, m reference rows, B bins), so a verdict
flags a feature only when its PSI exceeds both the usual threshold and that noise level.

The accuracy estimate is NannyML's CBPE: a calibrator fitted on a labelled reference maps each
row's confidence to P(prediction correct); the mean over a window estimates its accuracy
without labels, valid as long as P(y | x) does not change (no concept drift).

Imported by workers on every batch: numpy only at import (scipy is loaded lazily).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

#: The feature name under which the model's output (score or label) is binned.
OUTPUT = "__output__"

PSI_WARN = 0.1
PSI_DRIFT = 0.25
#: Below this many window rows no verdict is given: any PSI is mostly noise.
MIN_ROWS = 30
#: ...nor below this many rows per bin: with few expected rows, a bin left empty by chance
#: adds p·ln(p/eps) (~0.3 for a 5% bin) to PSI, a tail the χ² noise level does not cover
#: (measured: 10 bins at 50 rows flag 6% of no-drift windows; at 100 rows, 1-2%).
MIN_ROWS_PER_BIN = 10
#: Quantile of PSI's no-drift distribution a flag must exceed (see psi_noise).
NOISE_QUANTILE = 0.99
#: Up to this many numeric edges, bin_counts makes one vectorized pass per edge.
_MAX_PASSES = 32


@dataclass(frozen=True)
class FeatureBins:
    """One feature's frozen bins and the reference's share in each."""

    name: str
    kind: str  # "numeric" | "categorical"
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    ref_share: tuple[float, ...] = ()
    # Derived once: bin_counts runs per batch per feature, so rebuilding these per call
    # would be most of its cost for small batches.
    _edges: np.ndarray = field(init=False, repr=False, compare=False)
    _lookup: dict[Any, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("numeric", "categorical"):
            raise ValueError(f"feature {self.name!r}: unknown bin kind {self.kind!r}")
        object.__setattr__(self, "_edges", np.asarray(self.edges, dtype=np.float64))
        lookup: dict[Any, int] = {c: i for i, c in enumerate(self.categories)}
        lookup[None] = len(self.categories) + 1  # the "missing" bin
        object.__setattr__(self, "_lookup", lookup)
        if self.ref_share and len(self.ref_share) != self.n_bins:
            raise ValueError(
                f"feature {self.name!r}: {len(self.ref_share)} reference shares "
                f"for {self.n_bins} bins"
            )

    @property
    def n_bins(self) -> int:
        """Number of bins, the missing bin (and for categories the "other" bin) included."""
        return len(self.edges if self.kind == "numeric" else self.categories) + 2

    def labels(self) -> list[str]:
        """Human-readable bin names, in bin order."""
        if self.kind == "categorical":
            return [*self.categories, "other", "missing"]
        if not self.edges:
            return ["any value", "missing"]
        e = _edge_texts(self.edges)
        inner = [f"[{a}, {b})" for a, b in pairwise(e)]
        return [f"< {e[0]}", *inner, f">= {e[-1]}", "missing"]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "kind": self.kind,
            "edges": [float(v) for v in self.edges],
            "categories": list(self.categories),
            "ref_share": [float(v) for v in self.ref_share],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureBins:
        """Inverse of :meth:`to_json`."""
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            edges=tuple(float(v) for v in d.get("edges", ())),
            categories=tuple(str(c) for c in d.get("categories", ())),
            ref_share=tuple(float(v) for v in d.get("ref_share", ())),
        )


@dataclass(frozen=True)
class Baseline:
    """A model version's frozen reference: feature bins, output bins and calibration."""

    features: tuple[FeatureBins, ...]
    output: FeatureBins | None
    ref_rows: int
    #: {"x": confidences, "y": P(correct)} breakpoints; None when no target was given.
    calibration: dict[str, list[float]] | None = None

    def feature(self, name: str) -> FeatureBins | None:
        """The bins of feature ``name`` (``OUTPUT``: the output's), None if absent."""
        if name == OUTPUT:
            return self.output
        return next((f for f in self.features if f.name == name), None)

    def __post_init__(self) -> None:
        # Workers lay out every batch's counts by this: computed once per baseline.
        out, offset = [], 0
        for fb in (*self.features, *((self.output,) if self.output is not None else ())):
            out.append((fb, offset))
            offset += fb.n_bins
        object.__setattr__(self, "_layout", tuple(out))
        object.__setattr__(self, "_width", offset)

    def layout(self) -> tuple[tuple[FeatureBins, int], ...]:
        """Each feature's bins (the output's last) and its offset in one flat counts vector:
        how `drift_counts.counts` is laid out for this baseline."""
        return self._layout  # type: ignore[attr-defined]

    @property
    def width(self) -> int:
        """Length of the flat counts vector (every feature's bins, then the output's)."""
        return self._width  # type: ignore[attr-defined]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (stored in `model_versions.baseline`)."""
        return {
            "format": 1,
            "ref_rows": int(self.ref_rows),
            "features": [f.to_json() for f in self.features],
            "output": self.output.to_json() if self.output is not None else None,
            "calibration": self.calibration,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Baseline:
        """Inverse of :meth:`to_json`."""
        cal = d.get("calibration")
        return cls(
            features=tuple(FeatureBins.from_json(f) for f in d.get("features", ())),
            output=FeatureBins.from_json(d["output"]) if d.get("output") else None,
            ref_rows=int(d["ref_rows"]),
            calibration={"x": [float(v) for v in cal["x"]], "y": [float(v) for v in cal["y"]]}
            if cal
            else None,
        )


def baseline_id(doc: dict[str, Any]) -> str:
    """A short, stable id of a baseline document: counts are kept per baseline id, so a
    version given a new baseline never mixes counts of two bin layouts."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _edge_texts(edges: Sequence[float]) -> list[str]:
    """Edges as short text, with just enough digits that neighbours stay distinct."""
    for digits in (4, 6, 9, 12, 17):
        texts = [f"{v:.{digits}g}" for v in edges]
        if len(set(texts)) == len(texts):
            return texts
    return [repr(float(v)) for v in edges]


# ----- building bins from a reference -----------------------------------------------------
def numeric_bins(name: str, values: Any, n_bins: int = 10) -> FeatureBins:
    """Quantile bins of the reference's finite values (fewer when few values are distinct)."""
    if n_bins < 2:
        raise ValueError(f"feature {name!r}: n_bins must be at least 2, not {n_bins}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    edges: np.ndarray = np.array([], dtype=np.float64)
    if finite.size:
        probs = np.arange(1, n_bins) / n_bins
        # "higher" gives data values as edges: with side="right" counting, every bin
        # [e_i, e_i+1) then holds at least e_i itself, so no bin is empty in the reference
        # (and 0..99 in 4 bins splits 25/25/25/25).
        edges = np.unique(np.quantile(finite, probs, method="higher"))
        low = finite.min()
        edges = edges[edges > low]  # an edge at the minimum would leave "< e0" empty
        if not edges.size:
            # Every quantile at the minimum (a constant or mostly-zero column): bins below,
            # at and above it, so any move away from it is seen.
            edges = np.array([low, np.nextafter(low, np.inf)])
    fb = FeatureBins(name, "numeric", edges=tuple(edges.tolist()))
    return _with_shares(fb, x)


def categorical_bins(name: str, values: Any, top_k: int = 20) -> FeatureBins:
    """Bins for the ``top_k`` most frequent categories (as text), then "other", "missing"."""
    freq = Counter(str(v) for v in values if not _is_missing(v))
    # Ties broken by text, so the same reference always gives the same bins.
    top = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    fb = FeatureBins(name, "categorical", categories=tuple(c for c, _ in top))
    return _with_shares(fb, values)


def _with_shares(fb: FeatureBins, values: Any) -> FeatureBins:
    counts = bin_counts(fb, values)
    total = counts.sum()
    shares = counts / total if total else np.zeros(fb.n_bins)
    return FeatureBins(fb.name, fb.kind, fb.edges, fb.categories, tuple(shares.tolist()))


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float):
        return math.isnan(v)
    # pd.NA / pd.NaT without importing pandas (bool(pd.NA) raises).
    return type(v).__name__ in ("NAType", "NaTType")


# ----- counting a window ------------------------------------------------------------------
def bin_counts(fb: FeatureBins, values: Any) -> np.ndarray:
    """Rows per bin of ``fb`` (int64); NaN/None count as missing, unseen text as "other"."""
    if fb.kind == "numeric":
        # Contiguous first: workers pass columns of a row-major block, and the passes below
        # over a strided view cost ~3x (one copy is cheaper than ten strided reads).
        x = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        nan = int(np.count_nonzero(np.isnan(x)))
        if len(fb.edges) > _MAX_PASSES:  # many bins: one binary search per value is cheaper
            counts = np.bincount(np.searchsorted(fb._edges, x, side="right"), minlength=fb.n_bins)
            counts[-2] -= nan  # NaN sorts after +inf, into the last value bin
            counts[-1] = nan
            return counts.astype(np.int64, copy=False)
        # at_least[k] = values >= edge k (a value equal to an edge goes to the bin starting
        # at it, as searchsorted side="right"); bin counts are the differences. One SIMD
        # pass per edge beats searchsorted ~3x, whose branches mispredict on random data.
        # NaN is >= nothing (counted apart); -inf lands in the first bin, +inf in the last.
        at_least = [x.size - nan, *(np.count_nonzero(x >= e) for e in fb.edges), 0]
        g = np.array(at_least, dtype=np.int64)
        counts = np.empty(fb.n_bins, dtype=np.int64)
        counts[:-1] = g[:-1] - g[1:]
        counts[-1] = nan
        return counts
    try:
        # Counter counts in C; the Python loop below then runs per distinct value, not per
        # row (~45 ns a row: a text column costs ~5x a numeric one, see the tests).
        distinct: Iterable[tuple[Any, int]] = Counter(values).items()
    except TypeError:  # an unhashable value: count row by row
        distinct = [(v, 1) for v in values]
    tally = [0] * fb.n_bins
    lookup, other, missing = fb._lookup, fb.n_bins - 2, fb.n_bins - 1
    for v, n in distinct:
        i = lookup.get(v) if isinstance(v, str) or v is None else None
        if i is None:
            if _is_missing(v):
                i = missing
            else:  # a number given for text (7 for "7") still finds its category
                i = lookup.get(v if isinstance(v, str) else str(v), other)
        tally[i] += n
    return np.array(tally, dtype=np.int64)


# ----- comparing a window with the reference ----------------------------------------------
def _shares(ref_share: Any, counts: Any) -> tuple[np.ndarray, np.ndarray] | None:
    p = np.asarray(ref_share, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return None
    return p, c / total


def psi(ref_share: Any, counts: Any, eps: float = 1e-4) -> float:
    """Population stability index of window ``counts`` against ``ref_share`` (0 if empty).

    Both shares are floored at ``eps`` and renormalised, so a bin empty on one side adds a
    large but finite term instead of infinity.
    """
    pq = _shares(ref_share, counts)
    if pq is None:
        return 0.0
    p, q = (np.maximum(s, eps) for s in pq)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(ref_share: Any, counts: Any) -> float:
    """Jensen-Shannon *divergence* (base 2, in [0, 1]; not its square root) of the window."""
    pq = _shares(ref_share, counts)
    if pq is None:
        return 0.0
    p, q = pq
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0  # 0·log 0 = 0; where a > 0, m > 0 too
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))


def psi_noise(n_window: int, n_ref: int, n_bins: int, q: float = NOISE_QUANTILE) -> float:
    """The ``q`` quantile of PSI under no drift: (1/n + 1/m)·χ²_q(B-1)."""
    if n_window <= 0 or n_ref <= 0:
        return math.inf
    if n_bins < 2:
        return 0.0  # one bin: PSI is always 0
    from scipy.stats import chi2  # lazily: workers never call this

    return (1 / n_window + 1 / n_ref) * float(chi2.ppf(q, n_bins - 1))


def min_rows(n_bins: int) -> int:
    """Fewest window rows a verdict needs for a feature with ``n_bins`` bins."""
    # n_bins - 1: the missing bin is usually (near) empty and needs no rows of its own.
    return max(MIN_ROWS, MIN_ROWS_PER_BIN * (n_bins - 1))


def verdict(psi_value: float, n_window: int, n_ref: int, n_bins: int) -> str:
    """One of "too few rows", "ok", "warn", "drift": flags need PSI above both the threshold
    and the sampling noise of this many rows."""
    if n_window < min_rows(n_bins):
        return "too few rows"
    if psi_value <= psi_noise(n_window, n_ref, n_bins):
        return "ok"
    if psi_value > PSI_DRIFT:
        return "drift"
    return "warn" if psi_value > PSI_WARN else "ok"


# ----- label-free accuracy estimate (CBPE) ------------------------------------------------
def confidence(proba: Any) -> np.ndarray:
    """Each row's confidence in its predicted label: the highest probability of a (rows,
    classes) matrix, or max(p, 1 - p) for a binary model's positive-class probability."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        return np.maximum(p, 1 - p)
    return p.max(axis=1)


def calibrate(cal: dict[str, Any] | None, conf: Any) -> np.ndarray | None:
    """P(prediction correct) per row from the baseline's calibration (None without one)."""
    if not cal:
        return None
    x = np.asarray(cal["x"], dtype=np.float64)
    y = np.asarray(cal["y"], dtype=np.float64)
    # np.interp holds the end values outside [x0, xk]: the calibrator's out_of_bounds="clip".
    return np.clip(np.interp(np.asarray(conf, dtype=np.float64), x, y), 0.0, 1.0)


# ----- what is binned, shared by the baseline (models/baseline.py) and workers -----------
def feature_values(schema: Any, batch: Any) -> dict[str, tuple[str, Any]]:
    """{feature: (bin kind, values)} of a message's rows, in schema order: numbers from the
    float block, text columns as lists. Rows refused at submission are left out (their
    values were blanked: they are not missing values); a message whose columns do not fit
    the schema has nothing to count."""
    from inferq.common.rows.model_input import layout_problem

    if layout_problem(schema, int(batch.x.shape[1]), batch.text_positions, batch.n_features):
        return {}
    keep: Any = slice(None)
    rows: list[int] | None = None
    if batch.row_errors:
        mask = np.ones(batch.n_rows, dtype=bool)
        mask[list(batch.row_errors)] = False
        keep, rows = mask, np.flatnonzero(mask).tolist()
    if batch.text is None:  # every feature travels in the float block
        return {f.name: ("numeric", batch.x[keep, j]) for j, f in enumerate(schema.features)}
    found: dict[int, tuple[str, tuple[str, Any]]] = {}
    for k, j in enumerate(schema.numeric_positions):
        found[j] = (schema.features[j].name, ("numeric", batch.x[keep, k]))
    for k, j in enumerate(schema.text_positions):
        column = batch.text[k] if rows is None else [batch.text[k][i] for i in rows]
        found[j] = (schema.features[j].name, ("categorical", column))
    return dict(found[j] for j in sorted(found))


def output_values(scored: Any, kind: str) -> Any:
    """The scored rows' outputs to bin: scores (``numeric``) or labels (``categorical``);
    None when the batch has none of that kind."""
    ok = scored.ok
    if not ok.any():
        return None
    if kind == "numeric":
        return None if scored.scores is None else scored.scores[ok]
    if scored.labels is None:
        return None
    return [lbl for lbl, good in zip(scored.labels, ok.tolist(), strict=True) if good]
