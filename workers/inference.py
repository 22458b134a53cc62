"""Pure scoring logic: validate rows, run one vectorized prediction, map outputs to result rows.

No I/O and no Celery here: every function takes arrays and returns arrays/lists, so it is
tested directly with real scikit-learn models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from inferq.common.contract import Batch, RowError
from inferq.common.rows import model_input as mi
from inferq.common.rows.schema import InputSchema

#: Final estimators whose predict() is classes_[argmax(predict_proba)] by definition (trees,
#: forests) or through a monotone link (logistic regression); for these the label is taken
#: from predict_proba and the model is not run a second time. Parity is unit-tested.
PREDICT_IS_ARGMAX = frozenset(
    {"RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier",
     "LogisticRegression"}
)  # fmt: skip

#: Steps that may select input columns by name; a model containing one is always given a
#: DataFrame. Every other scikit-learn step works on positions, and a bare array skips
#: ~0.7 ms of per-call feature-name checks (most of a single-row prediction).
NAME_SENSITIVE = frozenset({"ColumnTransformer", "FunctionTransformer"})

#: Labels of outlier detectors (their predict gives +1 / -1).
OUTLIER_CLASSES = ("inlier", "outlier")


def accepts_array(model: Any) -> bool:
    """True when ``model`` can be given a bare array in training column order."""

    def steps(est: Any) -> list[Any]:
        inner = [s for _, s in getattr(est, "steps", [])]
        inner += [t for _, t, *_ in getattr(est, "transformers", [])]
        return [est] + [x for s in inner if hasattr(s, "get_params") for x in steps(s)]

    return all(
        type(s).__module__.startswith("sklearn.") and type(s).__name__ not in NAME_SENSITIVE
        for s in steps(model)
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
    array_ok: bool = False  # see accepts_array()
    schema: InputSchema = field(default_factory=lambda: InputSchema(()))

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    @classmethod
    def of(cls, name: str, version: int, estimator: Any, meta: Any) -> ModelInfo:
        """Describe ``estimator``; ``meta`` is a registry ModelVersion or an EstimatorInfo."""
        steps = getattr(estimator, "steps", None)
        schema = getattr(meta, "schema", None)
        if not isinstance(schema, InputSchema):  # EstimatorInfo, or a version before schemas
            schema = InputSchema.numeric(meta.n_features, meta.feature_names)
        classes = meta.classes
        if meta.task == "outlier":
            classes = list(OUTLIER_CLASSES)
        return cls(
            name=name,
            version=version,
            task=meta.task,
            n_features=meta.n_features,
            feature_names=meta.feature_names,
            classes=classes,
            has_proba=meta.has_proba,
            final_estimator=type(steps[-1][1] if steps else estimator).__name__,
            array_ok=accepts_array(estimator),
            schema=schema,
        )


@dataclass(slots=True)
class ScoredBatch:
    """Result rows of one batch, column by column (one entry per job).

    Kept as arrays so the writer can format thousands of rows without a Python object per
    value; the list properties below are conveniences for tests and the SQLite writer.
    """

    batch: Batch
    model_name: str
    model_version: int
    ok: np.ndarray  # bool per row
    errors: dict[int, str]
    labels: list[str | None] | None = None  # per row (classifiers)
    scores: np.ndarray | None = None  # float per row, NaN = no score
    proba: np.ndarray | None = None  # (rows, classes); rows not ok are NaN
    classes: list[str] | None = None
    predict_ms: float = 0.0
    #: 'sklearn' | 'onnx' when a model scored the batch (lineage in `predictions.runtime`).
    runtime: str | None = None
    #: The shadow version's result for (the first rows of) this batch (workers/shadow.py).
    shadow: ScoredBatch | None = None
    #: Drift bin counts and accuracy estimate of this batch (workers/monitor.py).
    monitor: Any = None

    @property
    def n_ok(self) -> int:
        """Rows scored successfully."""
        return int(self.ok.sum())

    @property
    def n_error(self) -> int:
        """Rows answered with an error."""
        return len(self.ok) - self.n_ok

    @property
    def status(self) -> list[str]:
        """'ok' or 'error' per row."""
        return ["ok" if v else "error" for v in self.ok.tolist()]

    @property
    def label(self) -> list[str | None]:
        """Label per row (None for regressors and error rows)."""
        if self.labels is None:
            return [None] * len(self.ok)
        return [lbl if ok else None for lbl, ok in zip(self.labels, self.ok.tolist(), strict=True)]

    @property
    def score(self) -> list[float | None]:
        """Score per row (None where there is none)."""
        if self.scores is None:
            return [None] * len(self.ok)
        return [None if v != v else v for v in self.scores.tolist()]  # v != v: NaN

    @property
    def probabilities(self) -> list[dict[str, float] | None]:
        """{class: probability} per row, None where there are none."""
        if self.proba is None or self.classes is None:
            return [None] * len(self.ok)
        return [
            dict(zip(self.classes, row, strict=True)) if ok else None
            for row, ok in zip(self.proba.tolist(), self.ok.tolist(), strict=True)
        ]

    @property
    def error(self) -> list[str | None]:
        """Error message per row (None for ok rows)."""
        return [self.errors.get(i) for i in range(len(self.ok))]


def validate(batch: Batch, info: ModelInfo) -> dict[int, str]:
    """Messages for every invalid row of ``batch`` (index -> text); valid rows are absent."""
    errors = dict(batch.row_errors)
    problem = mi.layout_problem(
        info.schema, int(batch.x.shape[1]), batch.text_positions, batch.n_features
    )
    if problem:
        for i in range(batch.n_rows):
            errors.setdefault(i, RowError(f"row {batch.row_number(i)}: {problem}", "wrong_shape"))
        return errors
    return mi.validate(info.schema, batch.x, batch.text, batch.row_number, info.ref, errors)


def error_batch(
    batch: Batch, message: str, *, code: str, name: str | None = None, version: int = 0
) -> ScoredBatch:
    """Every row of ``batch`` answered with the same error (unknown model, time limit...)."""
    return ScoredBatch(
        batch=batch,
        model_name=name or batch.model,
        model_version=version or batch.version,
        ok=np.zeros(batch.n_rows, dtype=bool),
        errors=dict.fromkeys(range(batch.n_rows), RowError(message, code)),
    )


def model_input(batch: Batch, info: ModelInfo, rows: np.ndarray | None = None) -> Any:
    """What the model is given for ``rows`` of ``batch`` (None: all): array or DataFrame."""
    return mi.model_input(info.schema, batch.x, batch.text, rows, info.array_ok)


def predict_arrays(
    model: Any, info: ModelInfo, x: Any
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """One vectorized call: (class index per row or None, scores, probability matrix or None).

    ``x`` is the model's input from :func:`model_input` (a bare array only when the model
    takes one).
    """
    if isinstance(x, np.ndarray) and info.schema.named:
        import warnings

        with warnings.catch_warnings():
            # NOTE: columns are already in training order (the producer matched names).
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            return _predict(model, info, x)
    return _predict(model, info, x)


def _predict(
    model: Any, info: ModelInfo, x: Any
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    n = len(x)
    if info.task == "regressor":
        return None, np.asarray(model.predict(x), dtype=np.float64).reshape(-1), None
    if info.task == "outlier":
        # label: +1 inlier / -1 outlier; score: decision_function (negative = outlier).
        idx = (np.asarray(model.predict(x)).reshape(-1) == -1).astype(np.intp)
        return idx, _decision(model, x, idx, n), None
    lookup = {c: k for k, c in enumerate(info.classes or [])}
    if info.task == "cluster":
        idx = _indices(model.predict(x), lookup, n)
        if info.has_proba:  # mixtures: membership probabilities, score = the chosen one's
            proba = np.asarray(model.predict_proba(x), dtype=np.float64)
            return idx, proba[np.arange(n), idx], proba
        if hasattr(model, "transform") and hasattr(model, "cluster_centers_"):
            # k-means: distance to the assigned centre (smaller = more typical).
            return idx, np.asarray(model.transform(x), dtype=np.float64)[np.arange(n), idx], None
        return idx, np.full(n, np.nan), None
    if not info.has_proba:
        idx = _indices(model.predict(x), lookup, n)
        return idx, _decision(model, x, idx, n), None
    proba = np.asarray(model.predict_proba(x), dtype=np.float64)
    if info.final_estimator in PREDICT_IS_ARGMAX:
        idx = proba.argmax(axis=1)
    else:
        idx = _indices(model.predict(x), lookup, n)
    scores = proba[:, 1] if proba.shape[1] == 2 else proba[np.arange(len(idx)), idx]
    return idx, scores, proba


def _indices(predicted: Any, lookup: dict[str, int], n: int) -> np.ndarray:
    """Class index per row; a label the registry does not know fails those rows."""
    return np.fromiter((lookup[str(v)] for v in np.asarray(predicted).reshape(-1)),
                       dtype=np.intp, count=n)  # fmt: skip


def _decision(model: Any, x: Any, idx: np.ndarray, n: int) -> np.ndarray:
    """decision_function as the score (binary/outlier: the value; multiclass: the chosen
    class's); NaN when the model has none."""
    if not hasattr(model, "decision_function"):
        return np.full(n, np.nan)
    d = np.asarray(model.decision_function(x), dtype=np.float64)
    return d.reshape(-1) if d.ndim == 1 else d[np.arange(n), idx]


def _checked_predict(
    model: Any, info: ModelInfo, x: Any
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    idx, scores, proba = predict_arrays(model, info, x)
    if scores.shape != (len(x),):
        raise ValueError(
            f"the model returned {scores.size} values for {len(x)} rows "
            "(multi-output models are not supported)"
        )
    return idx, scores, proba


#: Single-row failures with no success before the model is treated as failing on every row.
MAX_ROW_PROBES = 16


def _isolate_failures(
    model: Any, info: ModelInfo, batch: Batch, rows: np.ndarray, first: Exception,
    reraise: tuple[type[BaseException], ...],
) -> tuple[np.ndarray, list[Any], dict[int, str]]:  # fmt: skip
    """The batch's predict raised: bisect to find the rows the model fails on.

    Returns (rows that scored, their outputs in order, {row: message} for the rest). A model
    that fails on every probed row gets every remaining row answered with its error.
    """
    good: list[np.ndarray] = []
    outputs: list[Any] = []
    errors: dict[int, str] = {}
    failed_singles = 0

    def why(exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"[:300]

    def visit(sub: np.ndarray) -> None:
        nonlocal failed_singles
        if failed_singles >= MAX_ROW_PROBES and not good:
            for i in sub.tolist():
                errors[i] = RowError(
                    f"row {batch.row_number(i)}: the model failed ({why(first)})", "model_failed"
                )
            return
        try:
            out = _checked_predict(model, info, model_input(batch, info, sub))
        except reraise:
            raise
        except Exception as exc:
            if len(sub) == 1:
                failed_singles += 1
                i = int(sub[0])
                errors[i] = RowError(
                    f"row {batch.row_number(i)}: the model failed on this row ({why(exc)})",
                    "model_failed",
                )
                return
            mid = len(sub) // 2
            visit(sub[:mid])
            visit(sub[mid:])
            return
        good.append(sub)
        outputs.append(out)

    visit(rows)
    return (np.concatenate(good) if good else np.array([], dtype=np.intp)), outputs, errors


def _join_outputs(outputs: list[Any]) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    idx = None if outputs[0][0] is None else np.concatenate([o[0] for o in outputs])
    scores = np.concatenate([o[1] for o in outputs])
    proba = None if outputs[0][2] is None else np.concatenate([o[2] for o in outputs])
    return idx, scores, proba


def score_batch(
    model: Any, info: ModelInfo, batch: Batch, reraise: tuple[type[BaseException], ...] = ()
) -> ScoredBatch:
    """Validate every row, predict the valid ones in one call, and build one result per job.

    If the model raises, the rows it fails on are found by bisection and answered with the
    error; the other rows are still scored. Exceptions in ``reraise`` (a time limit) escape.
    """
    n = batch.n_rows
    errors = validate(batch, info)
    ok = np.ones(n, dtype=bool)
    if errors:
        ok[list(errors)] = False
    rows = np.flatnonzero(ok)
    scored = ScoredBatch(batch=batch, model_name=info.name, model_version=info.version, ok=ok,
                         errors=errors, classes=info.classes)  # fmt: skip
    if not len(rows):
        return scored
    started = time.perf_counter()
    x = model_input(batch, info, None if len(rows) == n else rows)
    try:
        idx, scores, proba = _checked_predict(model, info, x)
    except reraise:
        raise
    except Exception as exc:
        rows, outputs, failed = _isolate_failures(model, info, batch, rows, exc, reraise)
        errors.update(failed)
        ok[list(failed)] = False
        if not len(rows):
            scored.predict_ms = (time.perf_counter() - started) * 1000
            return scored
        idx, scores, proba = _join_outputs(outputs)
    scored.predict_ms = (time.perf_counter() - started) * 1000
    if len(rows) == n:
        scored.scores, scored.proba = scores, proba
        if idx is not None:
            scored.labels = np.asarray(info.classes, dtype=object)[idx].tolist()
        return scored
    # Scatter the scored rows' outputs back to their positions; other rows stay empty.
    scored.scores = np.full(n, np.nan)
    scored.scores[rows] = scores
    if proba is not None:
        scored.proba = np.full((n, proba.shape[1]), np.nan)
        scored.proba[rows] = proba
    if idx is not None:
        labels: list[str | None] = [None] * n
        classes = info.classes or []
        for i, k in zip(rows.tolist(), idx.tolist(), strict=True):
            labels[i] = classes[k]
        scored.labels = labels
    return scored
