"""Input schemas derived at registration (real scikit-learn models fitted on small data)."""

import hashlib
import json

import joblib
import numpy as np
import pandas as pd
import pytest
from inferq.common.db import make_engine
from inferq.common.errors import InvalidInput, NotAnEstimator
from inferq.common.rows.schema import InputSchema
from inferq.models import registry
from inferq.models.artifacts import inspect_estimator
from inferq.models.schema_infer import infer_schema
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

N = 60


@pytest.fixture
def engine(sqlite_settings):
    eng = make_engine(sqlite_settings)
    yield eng
    eng.dispose()


def customers(n: int = N) -> pd.DataFrame:
    """Mixed-type rows: int, float, bool, text, and a zip code that is text to the model."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": rng.normal(5.0, 1.0, n),
            "vip": rng.choice([True, False], n),
            "city": rng.choice(["berlin", "paris", "rome"], n),
            "plan": rng.choice(["basic", "pro"], n),
            "zip": rng.choice(["01067", "10115"], n),
        }
    )


def target(n: int = N) -> np.ndarray:
    return np.arange(n) % 2


def mixed_model(handle_unknown: str = "ignore") -> object:
    """ColumnTransformer(OneHotEncoder on text, imputer + scaler on numbers) + LR."""
    ct = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown=handle_unknown), ["city", "plan", "zip"]),
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income", "vip"]),
        ]
    )
    return make_pipeline(ct, LogisticRegression()).fit(customers(), target())


def infer(model, **kw):
    info = inspect_estimator(model)
    return infer_schema(model, info.n_features, info.feature_names, **kw)


def by_name(schema: InputSchema) -> dict:
    return {f.name: f for f in schema.features}


def test_column_transformer_text_columns_are_categories_with_categories():
    result = infer(mixed_model())
    f = by_name(result.schema)
    assert result.schema.named and result.source == "model" and result.warnings == ()
    assert f["city"].kind == "category" and f["city"].categories == ("berlin", "paris", "rome")
    assert f["zip"].categories == ("01067", "10115") and not f["zip"].pandas_category
    assert [f[n].kind for n in ("age", "income", "vip")] == ["number"] * 3
    # imputed numbers accept missing values; handle_unknown="ignore" lets NaN text through
    assert all(f[n].missing for n in ("age", "income", "vip", "city", "plan", "zip"))


def test_one_hot_encoder_that_errors_on_unknown_refuses_missing_text():
    f = by_name(infer(mixed_model(handle_unknown="error")).schema)
    assert not f["city"].missing and not f["plan"].missing
    assert f["age"].missing and f["income"].missing  # the imputer still imputes


def test_imputer_pipeline_accepts_missing_although_tags_say_no():
    x = customers()[["age", "income"]].astype(float)
    model = make_pipeline(SimpleImputer(), LogisticRegression()).fit(x, target())
    from sklearn.utils import get_tags

    assert get_tags(model).input_tags.allow_nan is False  # scikit-learn#27903
    schema = infer(model).schema
    assert [f.missing for f in schema.features] == [True, True]


def test_plain_logistic_regression_refuses_missing():
    x = customers()[["age", "income"]].astype(float)
    schema = infer(LogisticRegression().fit(x, target())).schema
    assert schema.names == ["age", "income"] and not any(f.missing for f in schema.features)


def test_bare_array_model_has_positional_names_and_hgb_accepts_nan():
    x = np.random.default_rng(1).normal(size=(N, 3))
    x[::7, 1] = np.nan
    schema = infer(HistGradientBoostingClassifier(max_iter=5).fit(x, target())).schema
    assert not schema.named and schema.names == ["x0", "x1", "x2"]
    assert all(f.missing and f.kind == "number" for f in schema.features)
    lr = infer(LogisticRegression().fit(np.nan_to_num(x), target())).schema
    assert not lr.named and not any(f.missing for f in lr.features)


def test_hist_gradient_boosting_from_dtype_wants_pandas_categories_back():
    frame = customers()[["income", "city"]].assign(
        city=lambda d: d.city.astype("category"),
        stars=pd.Categorical(np.arange(N) % 3 + 1),
    )
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=5)
    f = by_name(infer(model.fit(frame, target())).schema)
    assert f["city"].kind == "category" and f["city"].pandas_category
    assert f["city"].categories == ("berlin", "paris", "rome")
    assert f["stars"].kind == "integer" and f["stars"].pandas_category
    assert f["stars"].categories == ("1", "2", "3")
    assert f["income"].kind == "number" and not f["income"].pandas_category
    assert all(feat.missing for feat in f.values())


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_reference_sample_gives_kinds_and_is_recorded(tmp_path, fmt):
    path = tmp_path / f"ref.{fmt}"
    sample = customers(20).assign(extra="ignored", zip=lambda d: d.zip.astype(int))
    sample.to_csv(path, index=False) if fmt == "csv" else sample.to_parquet(path)
    result = infer(mixed_model(handle_unknown="error"), reference=path)
    f = by_name(result.schema)
    assert result.source == "reference" and result.warnings == ()
    assert (f["age"].kind, f["income"].kind, f["vip"].kind) == ("integer", "number", "boolean")
    assert f["zip"].kind == "category"  # read as int, but the model one-hot encodes text
    assert result.reference == {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": 20,
        "format": fmt,
    }
    assert "extra" not in result.schema.names


def test_reference_missing_a_feature_names_the_column(tmp_path):
    path = tmp_path / "ref.csv"
    customers(5).drop(columns=["plan"]).to_csv(path, index=False)
    with pytest.raises(InvalidInput, match="has no column 'plan'"):
        infer(mixed_model(), reference=path, path="m.joblib")


def test_feature_type_overrides_and_unknown_names(tmp_path):
    x = customers()[["age", "income"]].astype(float)
    model = make_pipeline(SimpleImputer(), LogisticRegression()).fit(x, target())
    f = by_name(infer(model, feature_types={"age": "int"}).schema)
    assert f["age"].kind == "integer" and f["income"].kind == "number"
    with pytest.raises(InvalidInput, match=r"unknown feature.*'nope'.*age, income"):
        infer(model, feature_types={"nope": "text"})
    with pytest.raises(InvalidInput, match="unknown feature kind 'colour'"):
        infer(model, feature_types={"age": "colour"})


def test_schema_file_replaces_inference(tmp_path):
    model = mixed_model()
    doc = infer(model).schema.to_json()
    doc["features"][0]["kind"] = "integer"  # age
    doc["features"][5]["missing"] = False  # probing decides, not the file
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(doc))
    result = infer(model, schema_file=path)
    f = by_name(result.schema)
    assert result.source == "file" and f["age"].kind == "integer" and f["zip"].missing
    doc["features"] = doc["features"][::-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="feature names differ"):
        infer(model, schema_file=path)
    path.write_text(json.dumps({"features": doc["features"][:2]}))
    with pytest.raises(InvalidInput, match="has 2 features, the model 6"):
        infer(model, schema_file=path)


def _fails_on_one_row(x):
    if len(x) == 1:
        raise ValueError("this model cannot score single rows")
    return x


def test_failing_base_row_is_a_warning_and_no_missing_values():
    x = customers()[["age", "income"]].astype(float)
    model = make_pipeline(
        SimpleImputer(), FunctionTransformer(_fails_on_one_row), LogisticRegression()
    ).fit(x, target())
    result = infer(model)
    assert not any(f.missing for f in result.schema.features)
    (warning,) = result.warnings
    assert "could not score a probe row" in warning and "single rows" in warning


def _fit(model, x, y):
    return model.fit(x, y) if y is not None else model.fit(x)


def test_every_kind_of_predictor_registers(engine, sqlite_settings, tmp_path):
    from sklearn.cluster import Birch, KMeans, MiniBatchKMeans
    from sklearn.covariance import EllipticEnvelope
    from sklearn.ensemble import IsolationForest
    from sklearn.linear_model import Ridge
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import LinearSVC, OneClassSVM

    x = pd.DataFrame(np.random.default_rng(2).normal(size=(N, 3)), columns=["a", "b", "c"])
    y = target()
    expected = {
        "iforest": (IsolationForest(n_estimators=5, random_state=0), None, "outlier", False),
        "ocsvm": (OneClassSVM(), None, "outlier", False),
        "envelope": (EllipticEnvelope(random_state=0), None, "outlier", False),
        "lof": (LocalOutlierFactor(novelty=True), None, "outlier", False),
        "kmeans": (KMeans(3, n_init=1, random_state=0), None, "cluster", False),
        "mbkmeans": (MiniBatchKMeans(3, n_init=1, random_state=0), None, "cluster", False),
        "gmm": (GaussianMixture(2, random_state=0), None, "cluster", True),
        "birch": (Birch(n_clusters=3), None, "cluster", False),
        "svc": (LinearSVC(), y, "classifier", False),
        "ridge": (Ridge(), x.a.to_numpy(), "regressor", False),
    }
    store = sqlite_settings.model_store_dir
    for name, (model, yy, task, proba) in expected.items():
        path = tmp_path / f"{name}.joblib"
        joblib.dump(_fit(model, x, yy), path)
        mv = registry.register(engine, store, path, name)
        assert (mv.task, mv.has_proba, mv.schema.names) == (task, proba, ["a", "b", "c"]), name
        assert mv.input_schema is not None and mv.input_schema["source"] == "model"
    classes = {mv.name: mv.classes for mv in registry.list_models(engine)}
    assert classes["iforest"] == ["-1", "1"] and classes["svc"] == ["0", "1"]
    assert classes["kmeans"] == ["0", "1", "2"] and classes["gmm"] == ["0", "1"]
    assert classes["birch"] == ["0", "1", "2"] and classes["ridge"] is None
    assert registry.find(engine, "iforest").schema.features[0].missing  # trees take NaN


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: __import__("sklearn.neighbors").neighbors.LocalOutlierFactor(),
         "fit it with novelty=True"),
        (lambda: __import__("sklearn.cluster").cluster.DBSCAN(),
         "DBSCAN is a clusterer that cannot assign new rows: it has no predict"),
        (lambda: __import__("sklearn.cluster").cluster.AgglomerativeClustering(),
         "it has no predict"),
        (lambda: StandardScaler(), "StandardScaler is a transformer: it cannot score rows"),
    ],
    ids=["lof-novelty-false", "dbscan", "agglomerative", "transformer"],
)  # fmt: skip
def test_predictors_that_cannot_score_new_rows_are_refused(
    engine, sqlite_settings, tmp_path, make, words
):
    path = tmp_path / "offered.joblib"
    joblib.dump(make().fit(np.random.default_rng(3).normal(size=(N, 2))), path)
    with pytest.raises(NotAnEstimator, match=words):
        registry.register(engine, sqlite_settings.model_store_dir, path, "x")
    assert registry.list_models(engine) == []


def test_register_stores_schema_and_reference(engine, sqlite_settings, tmp_path):
    model_path, ref = tmp_path / "m.joblib", tmp_path / "ref.csv"
    joblib.dump(mixed_model(), model_path)
    customers(10).to_csv(ref, index=False)
    store = sqlite_settings.model_store_dir
    mv = registry.register(
        engine, store, model_path, "churn", "production", reference=ref,
        feature_types={"income": "integer"},
    )  # fmt: skip
    again = registry.find(engine, "churn")
    assert again.input_schema == mv.input_schema and again.reference == mv.reference
    assert again.reference["rows"] == 10 and again.input_schema["source"] == "reference"
    f = by_name(again.schema)
    assert (f["age"].kind, f["income"].kind, f["city"].kind) == ("integer", "integer", "category")
    assert again.to_json()["input_schema"]["features"][0]["name"] == "age"
