"""Build a version's drift baseline from its reference sample (common/drift.py holds the math).

The reference rows go through the worker's own path (models/sample.py): the same coercion,
so booleans are 0/1 and numbers given for a category are their decimal text, exactly as
workers later see and count them; and the same scoring, so the output bins hold the scores
or labels workers write.

The reference should be *held-out* data drawn like production, not the training set: the
calibrator of the accuracy estimate (NannyML's CBPE) is fitted on it, and a model is
over-confident on the rows it was fitted on, so a training-set calibrator overestimates
accuracy. The estimate assumes no concept drift (P(y | x) unchanged since the reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from inferq.common import drift
from inferq.common.errors import InvalidInput

#: Most breakpoints kept from the fitted calibrator (the JSON stays a few kB).
MAX_CALIBRATION_POINTS = 200


def build_baseline(
    model: Any,
    info: Any,
    frame: Any,
    target_values: Any = None,
    *,
    n_bins: int = 10,
    top_k: int = 20,
) -> drift.Baseline:
    """Freeze feature bins, output bins and (classifiers with a target) the calibration.

    ``info`` is a workers.inference.ModelInfo; ``frame`` holds the model's features in
    training order; ``target_values`` the reference's true labels (one per row, or None).
    Rows the model cannot score are left out of the output bins and the calibration.
    """
    from inferq.models.sample import score_sample

    scored = score_sample(model, info, frame)
    batch = scored.batch
    n = batch.n_rows
    if target_values is not None and len(target_values) != n:
        raise InvalidInput(f"the target has {len(target_values)} values for {n} reference rows")
    features = tuple(
        drift.categorical_bins(name, values, top_k)
        if kind == "categorical"
        else drift.numeric_bins(name, values, n_bins)
        for name, (kind, values) in drift.feature_values(info.schema, batch).items()
    )
    return drift.Baseline(
        features=features,
        output=_output_bins(scored, n_bins, top_k),
        ref_rows=n,
        calibration=_calibration(info, scored, target_values),
    )


def _output_bins(scored: Any, n_bins: int, top_k: int) -> drift.FeatureBins | None:
    """Numeric bins of the scores when the model gives any, else categorical bins of labels."""
    scores = drift.output_values(scored, "numeric")
    if scores is not None and np.isfinite(scores).any():
        return drift.numeric_bins(drift.OUTPUT, scores, n_bins)
    labels = drift.output_values(scored, "categorical")
    return None if labels is None else drift.categorical_bins(drift.OUTPUT, labels, top_k)


def _calibration(info: Any, scored: Any, target_values: Any) -> dict[str, list[float]] | None:
    """Isotonic breakpoints confidence -> P(correct) on the scored, labelled rows."""
    if (
        target_values is None
        or info.task != "classifier"
        or scored.proba is None
        or scored.labels is None
    ):
        return None
    truth = [_as_label(v, set(info.classes or [])) for v in target_values]
    use = scored.ok & np.array([t is not None for t in truth], dtype=bool)
    if not use.any():
        raise InvalidInput("no reference row has both a score and a target: cannot calibrate")
    rows = np.flatnonzero(use)
    conf = drift.confidence(scored.proba[rows])
    correct = np.fromiter(
        (scored.labels[i] == truth[i] for i in rows.tolist()), dtype=np.float64, count=len(rows)
    )
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)
    iso.fit(conf, correct)
    x, y = np.asarray(iso.X_thresholds_), np.asarray(iso.y_thresholds_)
    if len(x) > MAX_CALIBRATION_POINTS:
        # Even positions, ends kept: the curve is monotone and interpolated between points.
        keep = np.unique(np.linspace(0, len(x) - 1, MAX_CALIBRATION_POINTS).round().astype(int))
        x, y = x[keep], y[keep]
    return {"x": x.tolist(), "y": y.tolist()}


def _as_label(value: Any, known: set[str]) -> str | None:
    """A target value as a class label (None if missing), as models/checks.py matches them."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    # An int column with gaps is read back as floats: 1.0 must match class "1".
    if isinstance(value, float) and value.is_integer() and str(value) not in known:
        return str(int(value))
    return str(value)
