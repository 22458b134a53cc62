"""Registry logic on the embedded SQLite database (real scikit-learn artifacts)."""

import joblib
import pytest
from inferq.common.db import make_engine
from inferq.common.errors import ArtifactMismatch, ModelNotFound, NotAnEstimator
from inferq.common.schema import model_versions
from inferq.models import registry
from sqlalchemy import update


@pytest.fixture
def engine(sqlite_settings):
    eng = make_engine(sqlite_settings)
    yield eng
    eng.dispose()


def test_register_records_metadata_and_copies_artifact(engine, sqlite_settings, binary_model):
    store = sqlite_settings.model_store_dir
    mv = registry.register(engine, store, binary_model.path, "cancer", alias="production")
    assert (mv.version, mv.task, mv.estimator, mv.n_features) == (1, "classifier", "Pipeline", 30)
    assert mv.classes == ["0", "1"] and mv.feature_names[0] == "mean radius"
    assert mv.aliases == ["latest", "production"] and mv.has_proba
    assert (store / mv.artifact).is_file() and len(mv.sha256) == 64
    import sklearn

    assert mv.sklearn_version == sklearn.__version__
    mv2 = registry.register(engine, store, binary_model.path, "cancer", force=True)
    assert mv2.version == 2 and mv2.aliases == ["latest"]
    assert registry.resolve(engine, "cancer").version == 1  # production still on 1
    registry.promote(engine, "cancer", 2)
    assert registry.resolve(engine, "cancer").version == 2
    registry.promote(engine, "cancer", 1, alias="staging")
    assert registry.resolve(engine, "cancer", alias="staging").version == 1
    assert registry.resolve(engine, "cancer", version=1).aliases == ["staging"]
    listed = registry.list_models(engine)
    assert [(m.name, m.version, m.aliases) for m in listed] == [
        ("cancer", 1, ["staging"]),
        ("cancer", 2, ["latest", "production"]),
    ]


def test_unknown_model_version_alias_are_clear(engine, sqlite_settings, regressor_model):
    with pytest.raises(ModelNotFound, match="model 'nope' is not registered"):
        registry.resolve(engine, "nope")
    registry.register(engine, sqlite_settings.model_store_dir, regressor_model.path, "reg")
    with pytest.raises(ModelNotFound, match="has no alias 'production'"):
        registry.resolve(engine, "reg", alias="production")  # a named alias is never replaced
    assert registry.resolve(engine, "reg").version == 1  # bare name: production, else latest
    with pytest.raises(ModelNotFound, match="version 9 is not registered"):
        registry.promote(engine, "reg", 9)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"weights": [1, 2]}, "holds a dict, not a scikit-learn estimator"),
        ("a string", "holds a str"),
    ],
)
def test_non_estimators_are_refused(engine, sqlite_settings, tmp_path, obj, message):
    path = tmp_path / "thing.joblib"
    joblib.dump(obj, path)
    with pytest.raises(NotAnEstimator, match=message):
        registry.register(engine, sqlite_settings.model_store_dir, path, "x")
    assert registry.list_models(engine) == []


def test_unfitted_and_transformers_are_refused(engine, sqlite_settings, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    unfitted = tmp_path / "unfitted.joblib"
    joblib.dump(LogisticRegression(), unfitted)
    with pytest.raises(NotAnEstimator, match="LogisticRegression is not fitted"):
        registry.register(engine, sqlite_settings.model_store_dir, unfitted, "x")
    scaler = tmp_path / "scaler.joblib"
    joblib.dump(StandardScaler().fit([[1.0], [2.0]]), scaler)
    with pytest.raises(NotAnEstimator, match="StandardScaler is a transformer: it cannot"):
        registry.register(engine, sqlite_settings.model_store_dir, scaler, "x")
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(NotAnEstimator, match="not a readable joblib file"):
        registry.register(engine, sqlite_settings.model_store_dir, garbage, "x")


def test_load_verifies_sha256_before_unpickling(engine, sqlite_settings, regressor_model):
    store = sqlite_settings.model_store_dir
    mv = registry.register(engine, store, regressor_model.path, "reg")
    assert registry.load(store, mv).predict(regressor_model.x[:1]).shape == (1,)
    path = store / mv.artifact
    # A pickle that would run code if loaded: the sha256 check must refuse it first.
    path.write_bytes(b"cos\nsystem\n(S'touch /tmp/inferq-pwned'\ntR.")
    with pytest.raises(ArtifactMismatch) as info:
        registry.load(store, mv)
    assert str(path) in str(info.value) and mv.sha256 in str(info.value)
    assert "sha256 mismatch" in str(info.value)
    path.unlink()
    with pytest.raises(ArtifactMismatch, match="no file"):
        registry.load(store, mv)


def test_load_refuses_other_sklearn_version(engine, sqlite_settings, regressor_model):
    store = sqlite_settings.model_store_dir
    mv = registry.register(engine, store, regressor_model.path, "reg")
    with engine.begin() as conn:
        conn.execute(update(model_versions).values(sklearn_version="0.24.2"))
    mv = registry.get_version(engine, "reg", 1)
    import sklearn

    with pytest.raises(ArtifactMismatch) as info:
        registry.load(store, mv)
    text = str(info.value)
    assert "scikit-learn version mismatch" in text
    assert "expected 0.24.2" in text and f"found {sklearn.__version__}" in text
    assert mv.artifact in text


def test_parse_ref():
    assert registry.parse_ref("churn") == ("churn", None, None)  # production, else latest
    assert registry.parse_ref("churn@3") == ("churn", 3, None)
    assert registry.parse_ref("churn:staging") == ("churn", None, "staging")


def test_versions_registered_before_schemas_are_all_numbers(engine, sqlite_settings, binary_model):
    from inferq.common.rows.schema import InputSchema

    registry.register(engine, sqlite_settings.model_store_dir, binary_model.path, "cancer")
    with engine.begin() as conn:  # what a row written before migration 0004 looks like
        conn.execute(update(model_versions).values(input_schema=None, reference=None))
    mv = registry.find(engine, "cancer")  # no production alias: the latest version
    assert mv.input_schema is None and mv.schema_warnings == []
    assert mv.schema == InputSchema.numeric(30, mv.feature_names)
    assert mv.schema.named and not any(f.missing for f in mv.schema.features)
    assert mv.to_json()["input_schema"] is None and "_schema" not in mv.to_json()
