"""The validation gate (models/checks.py) on real scikit-learn models fitted here."""

import json
from types import SimpleNamespace

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
from inferq.models.artifacts import inspect_estimator, sha256_file
from inferq.models.checks import check_in_process, check_reference, run_checks
from inferq.models.schema_infer import infer_schema
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from tests.unit.checks_helpers import THRESHOLD, fail_above

N = 120


def registered(model, store, name="m", **changes):
    """What the registry would record for ``model``, dumped into ``store`` as version 1."""
    info = inspect_estimator(model)
    rel = f"{name}/1/model.joblib"
    (store / name / "1").mkdir(parents=True)
    joblib.dump(model, store / rel)
    schema = infer_schema(model, info.n_features, info.feature_names, reference=None).schema
    fields = dict(
        name=name, version=1, sha256=sha256_file(store / rel),
        sklearn_version=sklearn.__version__, task=info.task, classes=info.classes,
        n_features=info.n_features, feature_names=info.feature_names,
        has_proba=info.has_proba, artifact=rel, format="joblib", trusted=None,
        schema=schema, input_schema=schema.to_json(),
    )  # fmt: skip
    return SimpleNamespace(**{**fields, **changes})


def check(report, name):
    """The named check of a report."""
    return next(c for c in report["checks"] if c["name"] == name)


@pytest.fixture(scope="module")
def binary():
    """A pipeline with a text column, its rows and 0/1 target (a few targets missing)."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"city": rng.choice(["lyon", "oslo", "rome"], N),
                          "x": rng.normal(size=N)})  # fmt: skip
    y = ((frame["x"] + (frame["city"] == "oslo") + rng.normal(0, 0.7, N)) > 0.5).astype(int)
    model = make_pipeline(
        ColumnTransformer([("city", OneHotEncoder(), ["city"]), ("x", "passthrough", ["x"])]),
        LogisticRegression(),
    ).fit(frame, y)
    target = y.astype(float)
    target[[3, 40]] = np.nan  # read back as floats (1.0): they must still match class "1"
    return model, frame, target


def test_binary_text_pipeline_metrics_match_sklearn(binary, tmp_path):
    model, frame, target = binary
    mv = registered(model, tmp_path)
    frame.assign(label=target).to_csv(tmp_path / "ref.csv", index=False)
    report = check_reference(model, mv, tmp_path / "ref.csv", "label")
    assert report["passed"], report
    keep = target.notna().to_numpy()
    y, x = target[keep].astype(int), frame[keep]
    assert report["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, model.predict(x)))
    expected_auc = roc_auc_score(y, model.predict_proba(x)[:, 1])
    assert report["metrics"]["roc_auc"] == pytest.approx(expected_auc)
    assert report["rows"] == N and report["target"] == "label" and report["reason"] is None
    assert [c["name"] for c in report["checks"]] == [
        "loads", "predicts every row", "outputs", "metric"
    ]  # fmt: skip
    assert check(report, "predicts every row")["detail"] == f"{N} of {N} rows scored"
    assert "2 rows without a target skipped" in check(report, "metric")["detail"]
    json.dumps(report)  # stored as JSON in model_versions.checks


def test_three_string_classes_roc_auc_is_one_vs_rest(tmp_path):
    rng = np.random.default_rng(2)
    x = pd.DataFrame(rng.normal(size=(N, 3)), columns=["a", "b", "c"])
    y = np.array(["ant", "bee", "cat"])[np.argmax(x.to_numpy() + rng.normal(0, 1, (N, 3)), 1)]
    model = LogisticRegression().fit(x, y)
    mv = registered(model, tmp_path)
    target = pd.Series(y, dtype=object, name="kind")
    target[7] = "dog"  # not a class: counted wrong, left out of ROC AUC
    report = check_in_process(model, mv, x, target)
    assert report["passed"], report
    wrong = target.to_numpy() != model.predict(x)
    assert report["metrics"]["accuracy"] == pytest.approx(1 - wrong.mean())
    known = target != "dog"
    expected = roc_auc_score(target[known], model.predict_proba(x[known]), multi_class="ovr")
    assert report["metrics"]["roc_auc"] == pytest.approx(expected)
    assert (
        "1 target labels not among the classes (first 'dog')" in check(report, "metric")["detail"]
    )
    assert (
        check(report, "outputs")["detail"]
        == "labels within the registered classes ['ant', 'bee', 'cat']"
    )


def test_regressor_r2_and_mae_match_sklearn(tmp_path):
    rng = np.random.default_rng(3)
    x = pd.DataFrame(rng.normal(size=(N, 2)), columns=["a", "b"])
    y = 2 * x["a"] - x["b"] + rng.normal(0, 0.5, N)
    model = Ridge().fit(x, y)
    report = check_in_process(model, registered(model, tmp_path), x, y.rename("price"))
    assert report["passed"], report
    pred = model.predict(x)
    assert report["metrics"] == pytest.approx({"r2": r2_score(y, pred),
                                               "mae": mean_absolute_error(y, pred)})  # fmt: skip
    assert check(report, "outputs")["detail"] == "every prediction finite"


def test_rows_the_model_fails_on_fail_the_gate_and_are_named(tmp_path):
    rng = np.random.default_rng(4)
    x = pd.DataFrame(rng.uniform(0, 2, size=(N, 2)), columns=["a", "b"])
    model = make_pipeline(FunctionTransformer(fail_above), LogisticRegression())
    model.fit(x, (x["a"] > 1).astype(int))
    x.loc[[17, 60], "b"] = THRESHOLD + 1
    report = check_in_process(model, registered(model, tmp_path), x)
    step = check(report, "predicts every row")
    assert not report["passed"] and not step["passed"]
    assert step["detail"].startswith(f"2 of {N} rows failed; first: row 17: ")
    assert "a value above" in step["detail"] and report["reason"] == step["detail"]
    assert check(report, "outputs")["passed"]  # the other rows scored normally


def test_registered_classes_that_differ_fail_outputs(binary, tmp_path):
    model, frame, _ = binary
    report = check_in_process(model, registered(model, tmp_path, classes=["0", "2"]), frame)
    assert not report["passed"]
    assert "unregistered label '1'" in check(report, "outputs")["detail"]


def test_missing_target_column_names_it_and_lists_the_columns(binary, tmp_path):
    model, frame, target = binary
    frame.assign(label=target).to_csv(tmp_path / "ref.csv", index=False)
    report = check_reference(model, registered(model, tmp_path), tmp_path / "ref.csv", "y")
    assert not report["passed"]
    assert report["reason"] == "the reference has no target column 'y'; its columns: city, x, label"
    assert check(report, "predicts every row")["passed"]  # it still says the model predicts


# ----- in a clean process (at most three: each child imports scikit-learn) ----------------
def test_run_checks_in_a_subprocess_passes_and_records_metrics(binary, tmp_path):
    model, frame, target = binary
    mv = registered(model, tmp_path)
    frame.assign(label=target).to_csv(tmp_path / "ref.csv", index=False)
    report = run_checks(tmp_path, mv, tmp_path / "ref.csv", "label", timeout=120)
    assert report["passed"], report
    local = check_reference(model, mv, tmp_path / "ref.csv", "label")
    assert report["metrics"] == pytest.approx(local["metrics"])
    assert "loaded in a clean process" in check(report, "loads")["detail"]


def test_run_checks_refuses_an_artifact_whose_sha256_differs(binary, tmp_path):
    model, frame, _ = binary
    mv = registered(model, tmp_path, sha256="0" * 64)
    frame.to_csv(tmp_path / "ref.csv", index=False)
    report = run_checks(tmp_path, mv, tmp_path / "ref.csv", timeout=120)
    assert not report["passed"] and [c["name"] for c in report["checks"]] == ["loads"]
    assert (
        "sha256 mismatch" in report["reason"] and report["reason"] == report["checks"][0]["detail"]
    )


def test_a_pickle_needing_a_module_of_the_callers_directory_fails_to_load(tmp_path, monkeypatch):
    # The parent imports tests.unit.checks_helpers; the clean process cannot: like a worker.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 0.5], "b": [1.0, 0.0, 1.0, 0.0]})
    model = make_pipeline(FunctionTransformer(fail_above), LogisticRegression())
    model.fit(x, [0, 1, 1, 0])
    x.to_csv(tmp_path / "ref.csv", index=False)
    report = run_checks(tmp_path, registered(model, tmp_path), tmp_path / "ref.csv", timeout=120)
    assert not report["passed"]
    assert report["reason"].startswith("ModuleNotFoundError: No module named 'tests'")


# ----- a child that gives no report (no scikit-learn: a shell script stands in) ---------
def fake_python(tmp_path, monkeypatch, body):
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(script))


def test_a_crashing_child_gives_its_last_stderr_line(binary, tmp_path, monkeypatch):
    mv = registered(binary[0], tmp_path)
    fake_python(tmp_path, monkeypatch, "echo noise >&2; echo 'Fatal: boom' >&2; echo junk; exit 3")
    report = run_checks(tmp_path, mv, tmp_path / "ref.csv")
    assert not report["passed"] and report["checks"][0]["name"] == "clean process"
    assert report["reason"] == "the check process exited with code 3; last stderr line: Fatal: boom"


def test_garbage_and_timeouts_are_reported(binary, tmp_path, monkeypatch):
    mv = registered(binary[0], tmp_path)
    fake_python(tmp_path, monkeypatch, "cat >/dev/null; echo '{not json'")
    report = run_checks(tmp_path, mv, tmp_path / "ref.csv")
    assert report["reason"] == "the check process printed no report ('{not json\\n') (no stderr)"
    fake_python(tmp_path, monkeypatch, "echo started >&2; exec sleep 30")
    report = run_checks(tmp_path, mv, tmp_path / "ref.csv", timeout=0.5)
    assert not report["passed"] and report["seconds"] < 10
    assert report["reason"] == (
        "the check process did not finish within 0.5 s and was killed; last stderr line: started"
    )
