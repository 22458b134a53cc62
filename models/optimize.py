"""Convert a fitted scikit-learn model to ONNX and check parity before workers serve it.

A version is served with onnxruntime only when its ONNX graph, scored through the worker's
own path (models/sample.py), answers a reference sample like scikit-learn does within
:class:`ParityThresholds`. skl2onnx is imported only to convert; workers that serve ONNX
import this module for :class:`OnnxModel` and need onnxruntime alone.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from inferq.common.rows.schema import InputSchema

#: Tasks served with ONNX: classifiers that have predict_proba (their graph gives labels and
#: probabilities) and regressors.
ONNX_TASKS = frozenset({"classifier", "regressor"})

#: A missing text value as fed to ONNX (string tensors hold no None). skl2onnx stores the
#: category an encoder learnt from NaN as str(nan) = "nan", so "nan" hits it, and is unknown
#: (all zeros with handle_unknown="ignore", as NaN is) when the encoder learnt none. "" gave
#: 0.043 probability differences there. A literal "nan" text merges with missing (parity).
MISSING_TEXT = "nan"

_TASK_NAMES = {"outlier": "an outlier detector", "cluster": "a clusterer"}
_DTYPES = {"tensor(double)": np.float64, "tensor(float)": np.float32, "tensor(int64)": np.int64}


@dataclass(frozen=True)
class ParityThresholds:
    """How close ONNX must stay to scikit-learn on the reference sample."""

    max_abs_diff: float = 1e-4  # max |Δ| over probabilities (classifiers) or predictions
    min_label_agreement: float = 1.0  # share of rows whose label matches (classifiers)


class OnnxUnsupported(Exception):
    """The model cannot be served with ONNX; the message says why, for a human."""


def _name(model: Any) -> str:
    """The model's class name; a Pipeline is named by its final step."""
    steps = getattr(model, "steps", None)
    return f"Pipeline({_name(steps[-1][1])})" if steps else type(model).__name__


def _final(model: Any) -> Any:
    while getattr(model, "steps", None):
        model = model.steps[-1][1]
    return model


def _has_trees(obj: Any, depth: int = 0) -> bool:
    """Any scikit-learn decision tree inside ``obj`` (steps, transformers, ensembles)."""
    from sklearn.tree import BaseDecisionTree

    if isinstance(obj, BaseDecisionTree):
        return True
    if depth > 8:
        return False
    if isinstance(obj, np.ndarray) and obj.dtype == object:  # GradientBoosting's estimators_
        obj = obj.ravel().tolist()
    if isinstance(obj, list | tuple):
        return any(_has_trees(o, depth + 1) for o in obj)
    if not hasattr(obj, "get_params"):
        return False
    parts = [*obj.get_params(deep=False).values()]
    # Fitted parts, and `estimator`: forests keep their tree template there, not in params.
    attrs = ("estimator", "estimators_", "estimator_", "final_estimator_")
    parts += [getattr(obj, a, None) for a in attrs]
    return any(_has_trees(o, depth + 1) for o in parts if o is not None)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """A converter error in one short line (skl2onnx can dump megabytes of attributes)."""
    lines = str(exc).strip().splitlines()
    text = lines[0].rstrip(",:; ") if lines else type(exc).__name__
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause):
        text += f"; {type(cause).__name__}: {_first_line(cause, 120)}"
    return text


def _session(onnx_bytes: bytes) -> Any:
    """A single-threaded CPU session (one per worker process, created after fork)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Parallelism comes from worker processes; session threads would oversubscribe. One
    # thread also keeps a forest's tied votes exactly tied, so argmax takes the first class
    # as scikit-learn does (default threads split ties: 42 of 20,000 rows, 30 trees).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def convert(model: Any, schema: InputSchema, task: str, has_proba: bool) -> bytes:
    """ONNX bytes of ``model``; raises OnnxUnsupported(reason)."""
    name = _name(model)
    if task not in ONNX_TASKS or (task == "classifier" and not has_proba):
        what = _TASK_NAMES.get(task, "a classifier without predict_proba")
        raise OnnxUnsupported(
            f"{name} is {what}: inferq serves ONNX for classifiers with predict_proba "
            "and regressors"
        )
    import onnx.defs
    import skl2onnx
    from inferq.workers.inference import accepts_array
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    # The newest opset skl2onnx is tested with; the session below proves that the installed
    # onnxruntime runs it (1.32 does for 22).
    opset = min(skl2onnx.get_latest_tested_opset_version(), onnx.defs.onnx_opset_version())
    # zipmap=False: probabilities as one (n, classes) tensor instead of a list of dicts.
    options = {id(_final(model)): {"zipmap": False}} if task == "classifier" else None
    # One "X" input exactly when workers give the model a bare array (model_input()'s rule).
    whole = not schema.needs_frame and (accepts_array(model) or not schema.named)
    # Numbers as double where the graph converts and loads so: scikit-learn computes in
    # float64 (max |Δ| on held-out rows, double vs float32: LogisticRegression 2e-16 vs
    # 1.5e-7, GaussianNB 7e-15 vs 2.3e-6, Ridge 1.7e-13 vs 6.5e-5 with |y| ~ 700). Float32
    # for trees: scikit-learn casts X to float32 before comparing it with thresholds, which
    # the float32 graph reproduces; the double graph (loadable for RandomForestClassifier
    # only) compares x with float32-rounded thresholds, flipping a vote on 1 row in 20,000
    # (500 trees), and split binary 15/15 ties on 138 of 2,000 rows (30 trees).
    # OneHotEncoder pipelines mix float and double and load only as float32.
    problems: list[str] = []
    tensors = [FloatTensorType] if _has_trees(model) else [DoubleTensorType, FloatTensorType]
    for tensor in tensors:
        if whole:
            inputs = [("X", tensor([None, schema.width]))]
        else:  # one input per feature: how skl2onnx maps ColumnTransformer columns by name
            inputs = [
                (f.name, StringTensorType([None, 1]) if f.is_text else tensor([None, 1]))
                for f in schema.features
            ]
        try:
            graph = skl2onnx.convert_sklearn(
                model, initial_types=inputs, options=options, target_opset=opset
            )
        except Exception as exc:
            problems.append(f"skl2onnx cannot convert it ({_first_line(exc)})")
            continue
        data = graph.SerializeToString()
        try:
            _session(data)
        except Exception as exc:
            problems.append(f"onnxruntime cannot load the converted graph ({_first_line(exc)})")
            continue
        return data
    # The float32 attempt's problem is the telling one: double is only a preference.
    raise OnnxUnsupported(f"{name}: {problems[-1]}")


class OnnxModel:
    """An onnxruntime session that behaves like the scikit-learn model for inferq's scoring path."""

    def __init__(
        self, onnx_bytes: bytes, schema: InputSchema, task: str, classes: list[str] | None
    ) -> None:
        self.schema, self.task, self.classes = schema, task, classes
        self.session = _session(onnx_bytes)
        # convert() declares inputs in schema order; skl2onnx may rename them ("my col" ->
        # "my_col"), so they are fed by position.
        self._inputs = [(i.name, i.type) for i in self.session.get_inputs()]
        if len(self._inputs) not in (1, schema.width):
            n = len(self._inputs)
            raise ValueError(f"the ONNX graph has {n} inputs for {schema.width} features")
        self._outputs = [o.name for o in self.session.get_outputs()]
        # skl2onnx names classifier outputs "label" and "probabilities", in that order.
        self._label, self._proba = 0, 1
        if {"label", "probabilities"} <= set(self._outputs):
            self._label, self._proba = map(self._outputs.index, ("label", "probabilities"))
        # One input for a width-1 schema is also one per feature; feed it per feature.
        self._whole = len(self._inputs) != schema.width
        self._class_of: dict[Any, str] = {}
        # The last input's outputs: the scoring path calls predict_proba, then predict on the
        # same x when the label is not the argmax. A weak reference, unlike id(), cannot
        # match a new object at a freed one's address.
        self._last: tuple[weakref.ref[Any], list[np.ndarray]] | None = None

    @property
    def input_type(self) -> str:
        """The ONNX type numbers are fed as: double or float."""
        numeric = [t for _, t in self._inputs if t != "tensor(string)"]
        return "double" if numeric and numeric[0] == "tensor(double)" else "float"

    def _column(self, x: Any, j: int) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x[:, j]
        column = x[self.schema.features[j].name]
        if hasattr(column, "cat"):  # restored pandas category: its values, NaN if missing
            column = column.astype(object)
        return column.to_numpy()

    def _feed(self, x: Any) -> dict[str, np.ndarray]:
        """What session.run takes for ``x`` (the output of model_input())."""
        if self._whole:
            name, kind = self._inputs[0]
            block = x if isinstance(x, np.ndarray) else x[self.schema.names].to_numpy()
            return {name: np.ascontiguousarray(block, dtype=_DTYPES[kind])}
        feed: dict[str, np.ndarray] = {}
        for j, (name, kind) in enumerate(self._inputs):
            values = self._column(x, j)
            if kind == "tensor(string)":
                text = [v if type(v) is str else _text(v) for v in values.tolist()]
                feed[name] = np.array(text, dtype=object).reshape(-1, 1)
            else:
                feed[name] = np.asarray(values, dtype=_DTYPES[kind]).reshape(-1, 1)
        return feed

    def _run(self, x: Any) -> list[np.ndarray]:
        last = self._last
        if last is not None and last[0]() is x:
            return last[1]
        outputs = self.session.run(self._outputs, self._feed(x))
        try:
            self._last = (weakref.ref(x), outputs)
        except TypeError:  # not weak-referenceable: no reuse
            self._last = None
        return outputs

    def predict(self, x: Any) -> np.ndarray:
        """Labels as the class strings (classifiers) or float64 values (regressors), 1-D."""
        outputs = self._run(x)
        if self.task != "classifier":
            return np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        raw = np.asarray(outputs[self._label]).reshape(-1)
        unique, inverse = np.unique(raw, return_inverse=True)
        return np.array([self._label_text(v) for v in unique.tolist()], dtype=object)[inverse]

    def predict_proba(self, x: Any) -> np.ndarray:
        """(n, n_classes) float64 probabilities, columns in the order of ``classes``."""
        if self.task != "classifier":
            raise AttributeError(f"a {self.task} has no predict_proba")
        return np.asarray(self._run(x)[self._proba], dtype=np.float64)

    def _label_text(self, value: Any) -> str:
        """The class string of an ONNX label (int64 for integer classes, else text)."""
        if value in self._class_of:
            return self._class_of[value]
        text, classes = value.decode() if isinstance(value, bytes) else str(value), self.classes
        number = _number(text)
        if classes and text not in classes and number is not None:  # "1.0", labelled 1
            text = next((c for c in classes if _number(c) == number), text)
        self._class_of[value] = text
        return text


def _number(text: str) -> float | None:
    if text in ("False", "True"):  # bool classes: the graph labels them 0 and 1
        return float(text == "True")
    try:
        return float(text)
    except ValueError:
        return None


def _text(value: Any) -> str:
    """A non-str value of a text column as fed to ONNX (None, NaN, pd.NA: MISSING_TEXT)."""
    if value is None or type(value).__name__ in {"NAType", "NaTType"}:
        return MISSING_TEXT
    return MISSING_TEXT if isinstance(value, float) and value != value else str(value)


def _rows(n: Any) -> str:
    return f"{int(n)} row" if n == 1 else f"{int(n)} rows"


def parity(
    model: Any, onnx_model: OnnxModel, info: Any, frame: Any, thresholds: ParityThresholds
) -> dict[str, Any]:
    """Score ``frame`` with both (through models.sample.score_sample) and compare."""
    from inferq.models.sample import score_sample

    ref = score_sample(model, info, frame)
    got = score_sample(onnx_model, info, frame)
    both = ref.ok & got.ok
    n = int(both.sum())
    problems: list[str] = []
    # A row one runtime answers and the other fails would change a caller's result.
    lost, gained = ref.ok & ~got.ok, got.ok & ~ref.ok
    if lost.any():
        first = str(got.errors[int(np.flatnonzero(lost)[0])])[:200]
        problems.append(f"{_rows(lost.sum())} scored by scikit-learn failed with ONNX ({first})")
    if gained.any():
        problems.append(f"{_rows(gained.sum())} failed by scikit-learn were scored by ONNX")
    classifier = info.task == "classifier"
    what = "probabilities" if classifier else "predictions"
    diff, agreement, matched = 0.0, None, 0
    if n:
        if classifier:
            ref_labels = np.asarray(ref.label, dtype=object)[both]
            matched = int((ref_labels == np.asarray(got.label, dtype=object)[both]).sum())
            agreement = matched / n
        a = (ref.proba if classifier else ref.scores)[both]
        b = (got.proba if classifier else got.scores)[both]
        finite = np.isfinite(a) & np.isfinite(b)
        # Non-finite values must agree exactly (NaN with NaN); |Δ| is over the rest.
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        odd = int((~finite & ~same).reshape(n, -1).any(axis=1).sum())
        if odd:
            problems.append(f"{_rows(odd)} with NaN or inf {what} on one side only")
        if finite.any():
            diff = float(np.abs(a - b)[finite].max())
    else:
        problems.append("no row of the sample was scored by both")
    if diff > thresholds.max_abs_diff:
        problems.append(
            f"max_abs_diff: {what} differ by up to {diff:.3g} (threshold "
            f"{thresholds.max_abs_diff:g})"
        )
    if agreement is not None and agreement < thresholds.min_label_agreement:
        problems.append(
            f"min_label_agreement: labels agree on {agreement:.2%} of rows ({matched} of {n}; "
            f"threshold {thresholds.min_label_agreement:.2%})"
        )
    return {
        "rows": n, "max_abs_diff": diff, "label_agreement": agreement, "passed": not problems,
        "reason": "; ".join(problems) or None, "sklearn_errors": ref.n_error,
        "onnx_errors": got.n_error,
    }  # fmt: skip


def optimize(
    model: Any, info: Any, frame: Any, thresholds: ParityThresholds = ParityThresholds()
) -> tuple[bytes | None, dict[str, Any]]:
    """Convert and check parity: (onnx bytes or None, report)."""
    import onnxruntime
    import skl2onnx

    report: dict[str, Any] = {
        "status": "failed", "reason": None, "parity": None, "thresholds": asdict(thresholds),
        "converter": f"skl2onnx {skl2onnx.__version__}", "onnxruntime": onnxruntime.__version__,
        "convert_ms": None, "size_bytes": None,
    }  # fmt: skip
    started = time.perf_counter()
    try:
        data = convert(model, info.schema, info.task, info.has_proba)
    except OnnxUnsupported as exc:
        data, report["reason"] = None, str(exc)
    report["convert_ms"] = round((time.perf_counter() - started) * 1000, 1)
    if data is None:
        return None, report
    report["size_bytes"] = len(data)
    onnx_model = OnnxModel(data, info.schema, info.task, info.classes)
    report["input_type"] = onnx_model.input_type
    result = parity(model, onnx_model, info, frame, thresholds)
    report["parity"] = result
    if not result["passed"]:
        report["reason"] = f"parity failed: {result['reason']}"
        return None, report
    report["status"] = "ok"
    report["sha256"] = hashlib.sha256(data).hexdigest()
    return data, report
