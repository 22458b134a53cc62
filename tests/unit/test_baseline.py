"""Drift baselines built from real scikit-learn models (models/baseline.py)."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from inferq.common import drift
from inferq.common.errors import InvalidInput
from inferq.models.artifacts import inspect_estimator
from inferq.models.baseline import MAX_CALIBRATION_POINTS, build_baseline
from inferq.models.sample import score_sample
from inferq.models.schema_infer import infer_schema
from inferq.workers.inference import ModelInfo
from sklearn.cluster import MeanShift
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC

CITIES = np.array(["lyon", "oslo", "rome", "paris"])


def model_info(model, name="m"):
    """The ModelInfo a worker would build for ``model`` (schema derived as at registration)."""
    est = inspect_estimator(model)
    schema = infer_schema(model, est.n_features, est.feature_names).schema
    meta = SimpleNamespace(
        task=est.task, classes=est.classes, n_features=est.n_features,
        feature_names=est.feature_names, has_proba=est.has_proba, schema=schema,
    )  # fmt: skip
    return ModelInfo.of(name, 1, model, meta)


def draw(rng, n):
    """Rows of a text column and two numbers (x1 with ~5% NaN), and a noisy 0/1 target."""
    frame = pd.DataFrame({
        "city": rng.choice(CITIES, n, p=[0.4, 0.3, 0.2, 0.1]).astype(object),
        "x1": rng.normal(size=n),
        "x2": rng.normal(size=n),
    })  # fmt: skip
    logit = 1.2 * frame["x1"] - 0.8 * frame["x2"] + (frame["city"] == "oslo") * 1.0 - 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.loc[rng.random(n) < 0.05, "x1"] = np.nan
    return frame, y.to_numpy()


@pytest.fixture(scope="module")
def mixed():
    """A ColumnTransformer pipeline fitted on 600 rows; reference and held-out samples."""
    rng = np.random.default_rng(11)
    train, y_train = draw(rng, 600)
    model = make_pipeline(
        ColumnTransformer([
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["x1", "x2"]),
        ]),
        LogisticRegression(C=50.0),  # weakly regularised: over-confident on new rows
    ).fit(train, y_train)  # fmt: skip
    return model, model_info(model), draw(rng, 4000), draw(rng, 4000)


def test_mixed_pipeline_feature_and_output_bins(mixed):
    model, info, (ref, y_ref), _ = mixed
    base = build_baseline(model, info, ref, y_ref)
    assert [f.name for f in base.features] == ["city", "x1", "x2"]
    city, x1, x2 = base.features
    assert city.kind == "categorical" and city.categories == ("lyon", "oslo", "rome", "paris")
    assert city.ref_share[:4] == pytest.approx((0.4, 0.3, 0.2, 0.1), abs=0.03)
    assert x1.kind == "numeric" and x1.n_bins == 11
    assert x1.ref_share[-1] == pytest.approx(0.05, abs=0.015)  # the NaN rows: missing bin
    assert x2.ref_share[-1] == 0.0
    assert base.ref_rows == 4000
    out = base.output
    assert out.name == drift.OUTPUT and out.kind == "numeric"  # P(class "1") per row
    assert 0 < out.edges[0] < out.edges[-1] < 1
    assert sum(out.ref_share) == pytest.approx(1.0)
    cal = base.calibration
    assert cal is not None and 2 <= len(cal["x"]) <= MAX_CALIBRATION_POINTS
    assert np.all(np.diff(cal["x"]) > 0) and np.all(np.diff(cal["y"]) >= 0)
    assert cal["x"][0] >= 0.5 and cal["x"][-1] <= 1.0  # binary: confidence in [0.5, 1]
    back = drift.Baseline.from_json(json.loads(json.dumps(base.to_json())))
    assert back == base


def test_output_bins_match_what_a_worker_counts(mixed):
    model, info, (ref, _), (held, _) = mixed
    base = build_baseline(model, info, ref)
    assert base.calibration is None  # no target: no accuracy estimate
    scored = score_sample(model, info, held)
    counts = drift.bin_counts(base.output, scored.scores[scored.ok])
    value = drift.psi(base.output.ref_share, counts)
    assert drift.verdict(value, int(counts.sum()), base.ref_rows, base.output.n_bins) == "ok"


def test_calibrated_confidence_estimates_held_out_accuracy(mixed):
    model, info, (ref, y_ref), (held, y_held) = mixed
    base = build_baseline(model, info, ref, y_ref)
    scored = score_sample(model, info, held)
    ok = scored.ok
    conf = drift.confidence(scored.proba[ok])
    estimate = float(drift.calibrate(base.calibration, conf).mean())
    labels = np.asarray(scored.labels, dtype=object)[ok]
    realised = float((labels == y_held[ok].astype(str)).mean())
    print(f"held-out accuracy {realised:.4f}: CBPE estimate {estimate:.4f} "
          f"(error {estimate - realised:+.4f}); raw mean confidence {conf.mean():.4f}")  # fmt: skip
    assert abs(estimate - realised) <= 0.03


def test_multiclass_forest_calibration_and_float_targets():
    rng = np.random.default_rng(12)

    def rows(n):
        x = rng.normal(size=(n, 3))
        y = np.digitize(x[:, 0] + 0.7 * x[:, 1] + rng.normal(0, 0.8, n), [-0.6, 0.6])
        return pd.DataFrame(x, columns=["a", "b", "c"]), y

    (train, y_train), (ref, y_ref), (held, y_held) = rows(800), rows(3000), rows(3000)
    model = RandomForestClassifier(n_estimators=30, random_state=0).fit(train, y_train)
    info = model_info(model)
    target = y_ref.astype(float)  # an int column with gaps reads back as floats
    target[:50] = np.nan  # rows without a target are left out
    base = build_baseline(model, info, ref, target)
    scored = score_sample(model, info, held)
    estimate = drift.calibrate(base.calibration, drift.confidence(scored.proba)).mean()
    realised = (np.asarray(scored.labels) == y_held.astype(str)).mean()
    print(f"3-class forest: accuracy {realised:.4f}, CBPE estimate {estimate:.4f}")
    assert abs(estimate - realised) <= 0.03
    assert base.output.kind == "numeric"  # the chosen class's probability


def test_rows_the_model_cannot_score_are_left_out(mixed):
    model, info, (ref, y_ref), _ = mixed
    bad = ref.head(200).astype({"x2": object})
    bad.loc[:9, "x2"] = "not a number"  # refused rows, as at submission
    scored = score_sample(model, info, bad)
    assert int((~scored.ok).sum()) == 10
    base = build_baseline(model, info, bad, y_ref[:200])
    assert base.ref_rows == 200
    # Rows refused at submission carry no values: feature bins leave them out, as workers
    # do (counting them as missing would raise the missing share workers never see)...
    x2 = base.feature("x2")
    assert x2.ref_share[-1] == 0.0
    valid = drift.bin_counts(x2, bad.x2[10:].astype(float).to_numpy())
    assert valid.sum() == 190
    assert np.asarray(x2.ref_share) == pytest.approx(valid / 190)
    # ...the output bins only the scored ones.
    got = drift.bin_counts(base.output, scored.scores[scored.ok])
    assert got.sum() == 190
    assert np.asarray(base.output.ref_share) == pytest.approx(got / 190)


def test_regressor_bins_its_predictions_and_has_no_calibration():
    rng = np.random.default_rng(13)
    x = pd.DataFrame({"a": rng.normal(size=500), "flag": rng.random(500) < 0.3})
    y = 3 * x["a"] + x["flag"] + rng.normal(0, 0.1, 500)
    model = Ridge().fit(x, y)
    base = build_baseline(model, model_info(model), x, y.to_numpy())
    assert base.calibration is None
    assert base.output.kind == "numeric" and base.output.n_bins == 11
    pred = model.predict(x)
    assert drift.bin_counts(base.output, pred).sum() == 500
    flag = base.feature("flag")  # booleans travel as 0/1
    assert flag.edges == (1.0,) and flag.ref_share[1] == pytest.approx(0.3, abs=0.05)


def test_classifier_without_proba_bins_its_decision_function():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(400, 2))
    y = np.where(x[:, 0] - x[:, 1] > 0, "yes", "no")
    model = LinearSVC().fit(x, y)
    info = model_info(model)
    assert not info.has_proba
    base = build_baseline(model, info, x, y)
    assert base.output.kind == "numeric"
    assert base.output.edges[0] < 0 < base.output.edges[-1]  # decision values around 0
    assert base.calibration is None  # no probabilities to calibrate
    assert [f.name for f in base.features] == ["x0", "x1"]  # an unnamed model


def test_outlier_detector_bins_its_scores():
    rng = np.random.default_rng(15)
    x = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    model = IsolationForest(n_estimators=20, random_state=0).fit(x)
    info = model_info(model)
    base = build_baseline(model, info, x, np.ones(300))
    scored = score_sample(model, info, x)
    assert base.output.kind == "numeric"  # decision_function
    assert drift.bin_counts(base.output, scored.scores).tolist() == [
        round(s * 300) for s in base.output.ref_share
    ]
    assert base.calibration is None


def test_a_model_without_scores_bins_its_labels():
    rng = np.random.default_rng(16)
    x = np.r_[rng.normal(0, 0.3, (60, 2)), rng.normal(4, 0.3, (40, 2))]
    model = MeanShift().fit(x)  # predicts clusters; no transform: no score
    info = model_info(model)
    base = build_baseline(model, info, x)
    assert base.output.kind == "categorical"
    assert sorted(base.output.ref_share[:2]) == pytest.approx([0.4, 0.6])


def test_a_target_of_the_wrong_length_is_refused(mixed):
    model, info, (ref, y_ref), _ = mixed
    with pytest.raises(InvalidInput, match="the target has 10 values for 4000"):
        build_baseline(model, info, ref, y_ref[:10])


def test_a_long_calibration_curve_is_thinned_keeping_its_ends(mixed, monkeypatch):
    import inferq.models.baseline as baseline

    model, info, (ref, y_ref), (held, y_held) = mixed
    full = build_baseline(model, info, ref, y_ref).calibration
    monkeypatch.setattr(baseline, "MAX_CALIBRATION_POINTS", 10)
    thin = build_baseline(model, info, ref, y_ref).calibration
    assert len(thin["x"]) == 10 < len(full["x"])
    assert (thin["x"][0], thin["x"][-1]) == (full["x"][0], full["x"][-1])
    scored = score_sample(model, info, held)
    conf = drift.confidence(scored.proba[scored.ok])
    realised = np.asarray(scored.labels, dtype=object)[scored.ok] == y_held[scored.ok].astype(str)
    assert abs(drift.calibrate(thin, conf).mean() - realised.mean()) <= 0.03
