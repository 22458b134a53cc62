"""Pure scoring with real scikit-learn models: validation messages and output mapping."""

import numpy as np
import pytest
from inferq.common.contract import Batch
from inferq.models.artifacts import inspect_estimator
from inferq.workers.inference import ModelInfo, error_batch, score_batch, validate

MISSING = ", and m@1 does not accept missing values there"


def info_for(model, name="m", version=1) -> ModelInfo:
    """What a worker knows about ``model`` (the same ModelInfo.of the workers use)."""
    return ModelInfo.of(name, version, model, inspect_estimator(model))


def batch_of(x, **kw) -> Batch:
    x = np.asarray(x, dtype=np.float64)
    return Batch(model="m", version=1, job_ids=[f"j{i}" for i in range(len(x))], x=x, **kw)


def test_binary_scores_are_probability_of_second_class(binary_model):
    x = binary_model.x.to_numpy()[:50]
    scored = score_batch(binary_model.model, info_for(binary_model.model), batch_of(x))
    expected_proba = binary_model.model.predict_proba(binary_model.x.iloc[:50])
    assert scored.status == ["ok"] * 50
    assert scored.label == [str(v) for v in binary_model.model.predict(binary_model.x.iloc[:50])]
    assert scored.score == expected_proba[:, 1].tolist()
    assert scored.probabilities[3] == {"0": expected_proba[3, 0], "1": expected_proba[3, 1]}


def test_multiclass_score_is_probability_of_predicted_label(multiclass_model):
    model, x = multiclass_model.model, multiclass_model.x
    scored = score_batch(model, info_for(model), batch_of(x))
    proba = model.predict_proba(x)
    assert scored.label == model.predict(x).tolist()
    idx = [list(model.classes_).index(lbl) for lbl in scored.label]
    assert scored.score == proba[np.arange(len(x)), idx].tolist()
    assert set(scored.probabilities[0]) == {"setosa", "versicolor", "virginica"}


def test_regressor_score_is_predicted_value(regressor_model):
    model, x = regressor_model.model, regressor_model.x
    scored = score_batch(model, info_for(model), batch_of(x[:20]))
    assert scored.score == model.predict(x[:20]).tolist()
    assert scored.label == [None] * 20 and scored.probabilities == [None] * 20


def test_bad_rows_get_messages_and_the_rest_is_scored(regressor_model):
    model, x = regressor_model.model, np.array(regressor_model.x[:6], dtype=float)
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    x[4, 9] = -np.inf
    x[4, 5] = np.nan
    batch = batch_of(x, row_offset=100, row_errors={5: "row 105: column 1 is missing (None)"})
    scored = score_batch(model, info_for(model), batch)
    assert scored.status == ["ok", "error", "ok", "error", "error", "error"]
    assert scored.error[1] == "row 101: column 2 is missing" + MISSING
    assert scored.error[3] == "row 103: column 0 is +inf"
    assert scored.error[4] == "row 104: column 5 is missing" + MISSING  # first of two
    assert scored.error[5] == "row 105: column 1 is missing (None)"
    good = x[[0, 2]]
    assert [scored.score[0], scored.score[2]] == model.predict(good).tolist()


def test_wrong_width_makes_every_row_an_error(binary_model):
    info = info_for(binary_model.model)
    errors = validate(batch_of(np.zeros((3, 29))), info)
    assert errors[2] == "row 2: expected 30 features, got 29"
    scored = score_batch(binary_model.model, info, batch_of(np.zeros((3, 29))))
    assert scored.n_error == 3 and scored.n_ok == 0


def test_named_features_appear_in_messages(binary_model):
    x = binary_model.x.to_numpy()[:2].copy()
    x[1, 3] = np.nan
    errors = validate(batch_of(x), info_for(binary_model.model))
    assert errors == {1: "row 1: feature 'mean area' (column 3) is missing" + MISSING}


def test_argmax_shortcut_equals_predict_for_forests(multiclass_model):
    model = multiclass_model.model
    info = info_for(model)
    assert info.final_estimator == "RandomForestClassifier"
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, size=(500, 4))
    assert score_batch(model, info, batch_of(x)).label == model.predict(x).tolist()


def test_error_batch_answers_every_job():
    scored = error_batch(
        batch_of(np.zeros((4, 2))), "model m@1 unavailable: gone", code="unknown_model"
    )
    assert scored.status == ["error"] * 4 and scored.error == ["model m@1 unavailable: gone"] * 4


@pytest.mark.parametrize("n", [1, 7])
def test_all_rows_invalid_skips_the_model_call(multiclass_model, n):
    x = np.full((n, 4), np.nan)
    scored = score_batch(multiclass_model.model, info_for(multiclass_model.model), batch_of(x))
    assert scored.n_error == n


@pytest.mark.parametrize("n_classes", [2, 4])
def test_argmax_shortcut_equals_predict_for_logistic_regression(n_classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(n_classes)
    x = rng.normal(size=(3000, 6))
    y = np.digitize(x[:, 0] + 0.3 * x[:, 1], np.linspace(-1, 1, n_classes - 1))
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    info = info_for(model)
    assert info.final_estimator == "LogisticRegression"
    probe = rng.normal(size=(5000, 6))
    assert score_batch(model, info, batch_of(probe)).label == [str(v) for v in model.predict(probe)]


def test_named_pipelines_get_arrays_unless_a_step_selects_columns(binary_model):
    import pandas as pd
    from inferq.workers.inference import accepts_array
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    assert accepts_array(binary_model.model)  # scaler + logistic regression: positional
    frame = binary_model.x
    by_name = make_pipeline(
        ColumnTransformer([("s", StandardScaler(), ["mean area", "mean radius"])]),
        LogisticRegression(),
    ).fit(frame, (frame["mean area"] > 600).astype(int))
    assert not accepts_array(by_name)
    for model in (binary_model.model, by_name):
        info = info_for(model)
        x = frame.to_numpy()[:300]
        scored = score_batch(model, info, batch_of(x))
        expected = model.predict_proba(pd.DataFrame(x, columns=frame.columns))[:, 1]
        # Same numbers either way (to the last bits: BLAS sums in layout-dependent order).
        assert np.max(np.abs(np.array(scored.score) - expected)) <= 1e-12


class Picky:
    """A model that raises on rows whose first feature is above 100 (like a broken step)."""

    def __init__(self, inner, always=False):
        self.inner, self.always, self.calls = inner, always, 0

    def predict_proba(self, x):
        self.calls += 1
        if self.always or (np.asarray(x)[:, 0] > 100).any():
            raise ValueError("input contains an impossible value")
        return self.inner.predict_proba(x)


def test_rows_the_model_fails_on_get_errors_and_the_rest_is_scored(multiclass_model):
    inner = multiclass_model.model
    x = np.array(multiclass_model.x[:40], dtype=float)
    x[[3, 27], 0] = 1000.0
    info = info_for(inner)
    scored = score_batch(Picky(inner), info, batch_of(x, row_offset=500))
    assert [i for i, s in enumerate(scored.status) if s == "error"] == [3, 27]
    assert scored.error[3] == (
        "row 503: the model failed on this row (ValueError: input contains an impossible value)"
    )
    good = np.delete(np.arange(40), [3, 27])
    assert [scored.label[i] for i in good] == inner.predict(x[good]).tolist()


def test_a_model_that_always_fails_answers_every_row_after_few_probes(multiclass_model):
    model = Picky(multiclass_model.model, always=True)
    x = np.array(multiclass_model.x[:150], dtype=float)
    scored = score_batch(model, info_for(multiclass_model.model), batch_of(x))
    assert scored.n_error == 150 and "the model failed" in scored.error[149]
    assert model.calls < 60  # gave up after MAX_ROW_PROBES single rows, not 150+ calls


def test_reraise_lets_time_limits_escape(multiclass_model):
    class Limit(Exception):
        pass

    class Slow:
        def predict_proba(self, x):
            raise Limit

    with pytest.raises(Limit):
        score_batch(Slow(), info_for(multiclass_model.model),
                    batch_of(np.zeros((3, 4))), reraise=(Limit,))  # fmt: skip


def test_multi_output_regressors_are_refused_at_registration():
    from inferq.common.errors import NotAnEstimator
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(0).normal(size=(50, 3))
    y2 = np.c_[x[:, 0], x[:, 1]]
    for model in (LinearRegression().fit(x, y2), RandomForestRegressor(3).fit(x, y2)):
        with pytest.raises(NotAnEstimator, match="several outputs per row"):
            inspect_estimator(model)
    assert inspect_estimator(LinearRegression().fit(x, x[:, 0])).task == "regressor"
