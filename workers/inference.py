"""Pure scoring logic: validate rows, run one vectorized prediction, map outputs to result rows.

No I/O and no Celery here: every function takes arrays and returns arrays/lists, so it is
tested directly with real scikit-learn models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.contract import Batch

#: Final estimators whose predict() is by definition classes_[argmax(predict_proba)];
#: for these the label is taken from predict_proba and predict() is not run a second time.
PREDICT_IS_ARGMAX = frozenset(
    {"RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier"}
)


@dataclass(slots=True)
class ModelInfo:
    """What scoring needs to know about a loaded model."""

    name: str
    version: int
    task: str  # 'classifier' | 'regressor'
    n_features: int
    feature_names: list[str] | None
    classes: list[str] | None
    has_proba: bool
    final_estimator: str = ""


@dataclass(slots=True)
class ScoredBatch:
    """Result rows of one batch, column by column (one entry per job)."""

    batch: Batch
    model_name: str
    model_version: int
    status: list[str]
    label: list[str | None]
    score: list[float | None]
    probabilities: list[dict[str, float] | None]
    error: list[str | None]
    predict_ms: float = 0.0

    @property
    def n_ok(self) -> int:
        """Rows scored successfully."""
        return self.status.count("ok")

    @property
    def n_error(self) -> int:
        """Rows answered with an error."""
        return len(self.status) - self.n_ok


def _feature_label(j: int, names: list[str] | None) -> str:
    return f"feature {names[j]!r} (column {j})" if names and j < len(names) else f"column {j}"


def validate(batch: Batch, info: ModelInfo) -> dict[int, str]:
    """Messages for every invalid row of ``batch`` (index -> text); valid rows are absent."""
    errors = dict(batch.row_errors)
    x = batch.x
    offset = batch.row_offset
    if x.shape[1] != info.n_features:
        for i in range(batch.n_rows):
            errors.setdefault(
                i,
                f"row {offset + i}: expected {info.n_features} features, got {x.shape[1]}",
            )
        return errors
    finite = np.isfinite(x)
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    for i in bad_rows.tolist():  # only invalid rows are visited; the valid path stays vectorized
        if i in errors:
            continue
        j = int(np.argmin(finite[i]))
        value = x[i, j]
        what = "NaN (missing)" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
        extra = int((~finite[i]).sum()) - 1
        more = f" (and {extra} more non-finite value{'s' * (extra > 1)})" if extra else ""
        errors[i] = f"row {offset + i}: {_feature_label(j, info.feature_names)} is {what}{more}"
    return errors


def error_batch(
    batch: Batch, message: str, name: str | None = None, version: int = 0
) -> ScoredBatch:
    """Every row of ``batch`` answered with the same error (unknown model, load refused...)."""
    n = batch.n_rows
    return ScoredBatch(
        batch=batch,
        model_name=name or batch.model,
        model_version=version or batch.version,
        status=["error"] * n,
        label=[None] * n,
        score=[None] * n,
        probabilities=[None] * n,
        error=[message] * n,
    )


def predict_arrays(
    model: Any, info: ModelInfo, x: np.ndarray
) -> tuple[list[str] | None, np.ndarray, np.ndarray | None]:
    """One vectorized call: (labels as text or None, scores, probability matrix or None)."""
    if info.feature_names:
        # NOTE: a model fitted on a DataFrame warns (and some pipelines fail) on bare arrays;
        # the producer already ordered the columns by the model's feature names.
        import pandas as pd

        x = pd.DataFrame(x, columns=info.feature_names, copy=False)
    if info.task == "regressor":
        return None, np.asarray(model.predict(x), dtype=np.float64).reshape(-1), None
    if not info.has_proba:
        labels = model.predict(x)
        return [str(v) for v in labels], np.full(len(labels), np.nan), None
    proba = np.asarray(model.predict_proba(x), dtype=np.float64)
    classes = np.asarray(info.classes, dtype=object)
    if info.final_estimator in PREDICT_IS_ARGMAX:
        idx = proba.argmax(axis=1)
    else:
        lookup = {c: k for k, c in enumerate(info.classes or [])}
        idx = np.fromiter((lookup[str(v)] for v in model.predict(x)), dtype=np.intp, count=len(x))
    labels = classes[idx].tolist()
    scores = proba[:, 1] if proba.shape[1] == 2 else proba[np.arange(len(idx)), idx]
    return labels, scores, proba


def score_batch(model: Any, info: ModelInfo, batch: Batch) -> ScoredBatch:
    """Validate every row, predict the valid ones in one call, and build one result per job."""
    import time

    n = batch.n_rows
    errors = validate(batch, info)
    status = ["error"] * n
    label: list[str | None] = [None] * n
    score: list[float | None] = [None] * n
    probs: list[dict[str, float] | None] = [None] * n
    error: list[str | None] = [errors.get(i) for i in range(n)]
    valid = np.ones(n, dtype=bool)
    if errors:
        valid[list(errors)] = False
    rows = np.flatnonzero(valid)
    started = time.perf_counter()
    if len(rows):
        x = batch.x if len(rows) == n else batch.x[rows]
        labels, scores, proba = predict_arrays(model, info, x)
        score_list = [None if np.isnan(s) else s for s in scores.tolist()]
        classes = info.classes or []
        proba_rows = proba.tolist() if proba is not None else None
        for k, i in enumerate(rows.tolist()):
            status[i] = "ok"
            label[i] = labels[k] if labels is not None else None
            score[i] = score_list[k]
            if proba_rows is not None:
                probs[i] = dict(zip(classes, proba_rows[k], strict=True))
    return ScoredBatch(
        batch=batch,
        model_name=info.name,
        model_version=info.version,
        status=status,
        label=label,
        score=score,
        probabilities=probs,
        error=error,
        predict_ms=(time.perf_counter() - started) * 1000,
    )
