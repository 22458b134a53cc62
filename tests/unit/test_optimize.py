"""ONNX conversion and parity gate (real scikit-learn models fitted on small data)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from inferq.models.artifacts import inspect_estimator
from inferq.models.optimize import (
    ONNX_TASKS,
    OnnxModel,
    OnnxUnsupported,
    ParityThresholds,
    convert,
    optimize,
    parity,
)
from inferq.models.sample import score_sample
from inferq.models.schema_infer import infer_schema
from inferq.workers.inference import ModelInfo
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC

REPORT_KEYS = {"status", "reason", "parity", "thresholds", "converter", "onnxruntime",
               "convert_ms", "size_bytes"}  # fmt: skip


def info_of(model) -> ModelInfo:
    """What a worker knows about ``model`` once it is registered."""
    est = inspect_estimator(model)
    schema = infer_schema(model, est.n_features, est.feature_names).schema
    meta = SimpleNamespace(schema=schema, task=est.task, n_features=est.n_features,
                           feature_names=est.feature_names, classes=est.classes,
                           has_proba=est.has_proba)  # fmt: skip
    return ModelInfo.of("m", 1, model, meta)


def onnx_of(model) -> tuple[ModelInfo, OnnxModel]:
    info = info_of(model)
    data = convert(model, info.schema, info.task, info.has_proba)
    return info, OnnxModel(data, info.schema, info.task, info.classes)


@pytest.fixture(scope="module")
def numeric():
    x, y = make_classification(300, 6, n_informative=4, random_state=0)
    return x, y, make_classification(200, 6, n_informative=4, random_state=1)[0]


@pytest.fixture(scope="module")
def forest(numeric):
    x, y, _ = numeric
    return RandomForestClassifier(n_estimators=30, random_state=0).fit(x, y)


def customers(n: int, missing_city: bool, seed: int) -> pd.DataFrame:
    """Two text columns and two numbers, with missing numbers (and cities if asked)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.integers(18, 80, n).astype(float),
        "income": rng.normal(5.0, 1.0, n),
        "city": rng.choice(["berlin", "paris", "rome"], n).astype(object),
        "plan": rng.choice(["basic", "pro"], n).astype(object),
    })  # fmt: skip
    frame.loc[rng.random(n) < 0.15, "income"] = np.nan
    if missing_city:
        frame.loc[rng.random(n) < 0.15, "city"] = None
    return frame


def mixed_model(missing_city: bool):
    ct = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income"]),
    ])  # fmt: skip
    frame = customers(200, missing_city, 0)
    y = ((frame.age > 45) ^ (frame.city == "rome")).astype(int)
    return make_pipeline(ct, LogisticRegression()).fit(frame, y)


def test_onnx_tasks():
    assert {"classifier", "regressor"} == ONNX_TASKS


def test_forest_converts_with_parity(forest, numeric):
    _, _, x_new = numeric
    info, onnx_model = onnx_of(forest)
    assert onnx_model.input_type == "float"  # trees: scikit-learn compares float32 too
    # 15/15 votes: exact ties in scikit-learn, 0.49999997 vs 0.5 in onnxruntime's float32.
    assert (forest.predict_proba(x_new)[:, 0] == 0.5).sum() >= 3
    proba = onnx_model.predict_proba(x_new)
    assert proba.shape == (200, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba, forest.predict_proba(x_new), atol=1e-6)
    labels = onnx_model.predict(x_new)
    assert labels.shape == (200,)
    assert labels.tolist() == [str(v) for v in forest.predict(x_new)]

    data, report = optimize(forest, info, x_new)
    assert data is not None and set(report) >= REPORT_KEYS
    assert report["status"] == "ok" and report["reason"] is None
    assert report["converter"].startswith("skl2onnx ") and report["size_bytes"] == len(data)
    assert report["thresholds"] == {"max_abs_diff": 1e-4, "min_label_agreement": 1.0}
    result = report["parity"]
    assert result["passed"] and result["rows"] == 200 and result["label_agreement"] == 1.0
    assert result["max_abs_diff"] < 1e-6
    assert result["sklearn_errors"] == result["onnx_errors"] == 0


def test_predict_after_predict_proba_runs_the_session_once(forest, numeric):
    _, onnx_model = onnx_of(forest)
    calls = []
    run = onnx_model.session.run

    class Counting:
        def run(self, *args):
            calls.append(1)
            return run(*args)

    onnx_model.session = Counting()
    x = numeric[2]
    onnx_model.predict_proba(x)
    onnx_model.predict(x)
    assert len(calls) == 1
    onnx_model.predict(x.copy())  # a new array is scored anew
    assert len(calls) == 2


@pytest.mark.parametrize("missing_city", [False, True])
def test_mixed_pipeline_with_text_inputs(missing_city):
    # missing_city=True: the encoder learnt NaN as a category, which skl2onnx names "nan".
    model = mixed_model(missing_city)
    info, onnx_model = onnx_of(model)
    assert [f.kind for f in info.schema.features][2:] == ["category", "category"]
    types = [i.type for i in onnx_model.session.get_inputs()]
    assert types == ["tensor(float)", "tensor(float)", "tensor(string)", "tensor(string)"]
    sample = customers(150, True, 1)
    sample.loc[0, "city"] = "madrid"  # unseen: ignored by both
    assert sample["income"].isna().any() and sample["city"].isna().any()
    data, report = optimize(model, info, sample)
    assert report["status"] == "ok", report["reason"]
    assert data is not None and report["input_type"] == "float"
    assert report["parity"]["rows"] == 150 and report["parity"]["max_abs_diff"] < 1e-5


def test_regressor_parity_on_predictions():
    x, y = make_regression(200, 5, noise=5.0, random_state=0)
    model = Ridge().fit(x, y)
    info, onnx_model = onnx_of(model)
    values = onnx_model.predict(x)
    assert values.dtype == np.float64 and values.shape == (200,)
    data, report = optimize(model, info, x)
    assert report["status"] == "ok" and data is not None and report["input_type"] == "double"
    # Double inputs: float32 would be ~1e-4 off on targets in the hundreds.
    assert report["parity"]["max_abs_diff"] < 1e-9
    assert report["parity"]["label_agreement"] is None


def test_multiclass_string_labels(numeric):
    x, _, x_new = numeric
    y = np.array(["cat", "dog", "fish"])[np.arange(len(x)) % 3]
    model = GaussianNB().fit(x, y)  # not argmax-only: the scoring path calls predict too
    info, onnx_model = onnx_of(model)
    assert set(onnx_model.predict(x_new).tolist()) <= {"cat", "dog", "fish"}
    assert onnx_model.predict_proba(x_new).shape == (200, 3)
    scored = score_sample(onnx_model, info, x_new)
    assert scored.labels == model.predict(x_new).tolist()
    _, report = optimize(model, info, x_new)
    assert report["status"] == "ok" and report["parity"]["label_agreement"] == 1.0


def test_unconvertible_model_fails_with_reason(numeric):
    x, y, _ = numeric
    model = HistGradientBoostingClassifier(max_iter=5).fit(x, y)
    data, report = optimize(model, info_of(model), x)
    assert data is None and report["status"] == "failed" and report["parity"] is None
    assert report["reason"].startswith("HistGradientBoostingClassifier: skl2onnx cannot convert")
    assert len(report["reason"]) < 500  # skl2onnx's own message dumps every tree


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (IsolationForest(n_estimators=10, random_state=0), "is an outlier detector"),
        (LinearSVC(), "is a classifier without predict_proba"),
    ],
)
def test_unsupported_tasks(numeric, model, why):
    x, y, _ = numeric
    model.fit(x, y)
    info = info_of(model)
    with pytest.raises(OnnxUnsupported, match=why):
        convert(model, info.schema, info.task, info.has_proba)
    data, report = optimize(model, info, x)
    assert data is None and report["status"] == "failed"
    assert report["reason"] == (
        f"{type(model).__name__} {why}: inferq serves ONNX for classifiers with "
        "predict_proba and regressors"
    )


def test_parity_failure_names_the_threshold(forest, numeric, monkeypatch):
    x_new = numeric[2]
    original = OnnxModel.predict_proba
    monkeypatch.setattr(OnnxModel, "predict_proba", lambda self, x: original(self, x) + 0.01)
    data, report = optimize(forest, info_of(forest), x_new)
    assert data is None and report["status"] == "failed"
    assert report["parity"]["passed"] is False
    assert abs(report["parity"]["max_abs_diff"] - 0.01) < 1e-6
    assert "max_abs_diff" in report["reason"] and "0.01" in report["reason"]
    assert "threshold 0.0001" in report["reason"]


def test_parity_failure_on_labels_and_failed_rows(forest, numeric, monkeypatch):
    x_new = numeric[2]
    info, onnx_model = onnx_of(forest)
    strict = ParityThresholds(max_abs_diff=1.0, min_label_agreement=1.0)
    # Every row labelled "0": predict_proba says class 0 is certain.
    monkeypatch.setattr(onnx_model, "predict_proba", lambda x: np.tile([1.0, 0.0], (len(x), 1)))
    result = parity(forest, onnx_model, info, x_new, strict)
    assert not result["passed"] and result["label_agreement"] < 1.0
    assert "min_label_agreement: labels agree on" in result["reason"]
    assert "threshold 100.00%" in result["reason"]

    def broken(x):
        raise RuntimeError("onnxruntime blew up")

    monkeypatch.setattr(onnx_model, "predict_proba", broken)
    result = parity(forest, onnx_model, info, x_new, strict)
    assert not result["passed"] and result["rows"] == 0 and result["onnx_errors"] == 200
    assert "200 rows scored by scikit-learn failed with ONNX" in result["reason"]
    assert "onnxruntime blew up" in result["reason"]
