"""Typed rows end to end (issue 12): every kind of scikit-learn predictor, mixed-type
pipelines with text categories and missing values, bulk runs from CSV and Parquet, and hostile
typed messages. Real Redis, Postgres, `celery worker` processes and scikit-learn models; each
result is compared with the same model's in-process output on the same rows."""

from __future__ import annotations

import json
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from inferq.common import contract
from inferq.common.db import make_engine
from inferq.common.schema import predictions
from inferq.models import registry
from inferq.producer import InferenceClient
from sqlalchemy import func, select

from tests.conftest import REPO, settings_env
from tests.integration.checker import check

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CITIES = ["lyon", "paris", "zürich", 'a "quoted", city', "new\nline"]


def customers(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Mixed types: text categories, a pandas category, ints, a bool, floats with NaN."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "city": rng.choice(CITIES, n),
            "plan": pd.Categorical(rng.choice(["free", "pro", "team"], n)),
            "age": rng.integers(18, 80, n),
            "spend": rng.gamma(2.0, 10.0, n),
            "vip": rng.random(n) < 0.3,
        }
    )
    frame.loc[rng.random(n) < 0.1, "spend"] = np.nan
    y = ((frame.age > 45) ^ (frame.city == "paris") ^ frame.vip).to_numpy()
    return frame, np.where(y, "yes", "no")


def fitted_models(folder):
    """name -> (fitted model, rows to score), dumped to folder/<name>.joblib."""
    from sklearn.cluster import Birch, KMeans, MiniBatchKMeans
    from sklearn.compose import ColumnTransformer
    from sklearn.covariance import EllipticEnvelope
    from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import LinearSVC, OneClassSVM

    train, y = customers(600, 1)
    rows, _ = customers(80, 2)
    rng = np.random.default_rng(3)
    xn = rng.normal(size=(400, 4))
    xn_rows = rng.normal(size=(70, 4))
    xnan = xn.copy()
    xnan[rng.random(xnan.shape) < 0.1] = np.nan
    xnan_rows = xn_rows.copy()
    xnan_rows[rng.random(xnan_rows.shape) < 0.1] = np.nan
    yn = (xn[:, 0] + xn[:, 1] > 0).astype(int)
    mixed = make_pipeline(
        ColumnTransformer(
            [
                ("text", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
                ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "spend"]),
                ("flag", "passthrough", ["vip"]),
            ]
        ),
        LogisticRegression(max_iter=500),
    ).fit(train, y)
    hgb_cat = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=20)
    cat_train = train.astype({"city": "category"})
    models = {
        "mixed": (mixed, rows),
        "hgb-cat": (hgb_cat.fit(cat_train, y), rows.astype({"city": "category"})),
        "hgb-nan": (HistGradientBoostingClassifier(max_iter=20).fit(xnan, yn), xnan_rows),
        "impute-lr": (make_pipeline(SimpleImputer(), LogisticRegression()).fit(xnan, yn),
                      xnan_rows),
        "linearsvc": (LinearSVC().fit(xn, np.where(yn, "up", "down")), xn_rows),
        "ridge": (Ridge().fit(xn, xn[:, 0] * 3), xn_rows),
        "iforest": (IsolationForest(n_estimators=20, random_state=0).fit(xn), xn_rows),
        "ocsvm": (OneClassSVM(nu=0.1).fit(xn), xn_rows),
        "lof": (LocalOutlierFactor(novelty=True).fit(xn), xn_rows),
        "envelope": (EllipticEnvelope(random_state=0).fit(xn), xn_rows),
        "kmeans": (KMeans(3, n_init=3, random_state=0).fit(xn), xn_rows),
        "minibatch": (MiniBatchKMeans(3, n_init=3, random_state=0).fit(xn), xn_rows),
        "gmm": (GaussianMixture(3, random_state=0).fit(xn), xn_rows),
        "birch": (Birch(n_clusters=3).fit(xn), xn_rows),
    }  # fmt: skip
    for name, (model, _) in models.items():
        joblib.dump(model, folder / f"{name}.joblib")
    return models


def expected(model, task: str, rows) -> tuple[list[str | None], np.ndarray]:
    """What inferq must answer: (label per row, score per row) from the model in-process."""
    n = len(rows)
    if task == "regressor":
        return [None] * n, model.predict(rows).astype(float)
    if task == "outlier":
        labels = ["outlier" if v == -1 else "inlier" for v in model.predict(rows)]
        return labels, model.decision_function(rows)
    predicted = model.predict(rows)
    labels = [str(v) for v in predicted]
    if task == "cluster":
        if hasattr(model, "predict_proba"):
            return labels, model.predict_proba(rows).max(axis=1)
        if hasattr(model, "cluster_centers_"):
            return labels, model.transform(rows)[np.arange(n), predicted]
        return labels, np.full(n, np.nan)
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(rows)
        return labels, proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
    return labels, model.decision_function(rows)


def test_every_kind_of_predictor_is_served_exactly(pg_settings, tmp_path, start_worker):
    engine = make_engine(pg_settings)
    models = fitted_models(tmp_path)
    versions = {
        name: registry.register(
            engine, pg_settings.model_store_dir, tmp_path / f"{name}.joblib", name, "production"
        )
        for name in models
    }
    assert versions["mixed"].schema.text_positions == (0, 1)
    assert versions["impute-lr"].schema.features[0].missing  # probed, not sklearn's tags
    start_worker(pg_settings, concurrency=2)
    with InferenceClient(pg_settings, engine=engine) as client:
        jobs = {name: client.submit(name, rows) for name, (_, rows) in models.items()}
        results = {name: client.wait(ids, timeout=120) for name, ids in jobs.items()}
    for name, (model, rows) in models.items():
        labels, scores = expected(model, versions[name].task, rows)
        got = results[name]
        assert [r.error for r in got if not r.ok] == [], name
        assert [r.label for r in got] == labels, name
        got_scores = np.array([np.nan if r.score is None else r.score for r in got])
        np.testing.assert_allclose(got_scores, scores, rtol=0, atol=1e-9, err_msg=name)
    assert {versions[n].task for n in models} == {
        "classifier", "regressor", "outlier", "cluster"
    }  # fmt: skip
    assert check(engine, [j for ids in jobs.values() for j in ids]).clean
    engine.dispose()


def test_mixed_type_bulk_runs_from_csv_parquet_and_sql(pg_settings, tmp_path, start_worker):
    engine = make_engine(pg_settings)
    models = fitted_models(tmp_path)
    registry.register(engine, pg_settings.model_store_dir, tmp_path / "mixed.joblib", "mixed",
                      "production")  # fmt: skip
    model = models["mixed"][0]
    frame, _ = customers(2500, 7)
    frame.insert(0, "id", [f"{i:05d}" for i in range(len(frame))])  # leading zeros kept
    frame.to_parquet(tmp_path / "rows.parquet")  # plan: dictionary-encoded (category)
    csv = frame.astype({"age": object})
    csv.loc[5, "age"] = "unknown"  # text in a number column: that row's error
    csv.to_csv(tmp_path / "rows.csv", index=False)
    frame.astype({"plan": object}).to_sql("customers", engine, index=False)  # SQL: text columns
    start_worker(pg_settings, concurrency=2)
    env = settings_env(pg_settings)
    for kind in ("csv", "parquet", "sql"):
        source = ["--sql", "SELECT * FROM customers"] if kind == "sql" else [
            "-i", str(tmp_path / f"rows.{kind}")]  # fmt: skip
        argv = [sys.executable, "-m", "inferq", "score", "-m", "mixed", *source,
                "--id-column", "id", "--run-id", kind, "--chunk-size", "700", "--json"]  # fmt: skip
        out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        bad = 1 if kind == "csv" else 0
        assert (summary["scored_ok"], summary["scored_error"]) == (2500 - bad, bad)
        with engine.connect() as conn:
            rows = {
                r.key: r
                for r in conn.execute(
                    select(predictions.c.key, predictions.c.label, predictions.c.score,
                           predictions.c.error).where(predictions.c.run_id == kind)
                )
            }  # fmt: skip
        proba = model.predict_proba(frame.drop(columns="id"))[:, 1]
        labels = model.predict(frame.drop(columns="id"))
        for i in range(len(frame)):
            r = rows[f"{i:05d}"]
            if kind == "csv" and i == 5:
                assert (
                    r.error == "row 5: feature 'age' (column 2) has a non-numeric value "
                    "'unknown' (text)"
                )
                continue
            assert r.label == labels[i] and abs(r.score - proba[i]) <= 1e-9, (kind, i)
        again = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
        assert again.returncode == 0 and "already complete" not in again.stdout
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar() == 7500
    engine.dispose()


def test_hostile_typed_messages_get_error_rows_and_the_worker_keeps_serving(
    pg_settings, tmp_path, start_worker
):
    engine = make_engine(pg_settings)
    fitted_models(tmp_path)
    mv = registry.register(engine, pg_settings.model_store_dir, tmp_path / "mixed.joblib",
                           "mixed", "production")  # fmt: skip
    worker = start_worker(pg_settings, concurrency=1)
    good, _ = customers(4, 9)
    with InferenceClient(pg_settings, engine=engine) as client:
        (template,) = client.build_batches("mixed", good)

        def send(change: dict) -> list[str]:
            payload = {**contract.encode_batch(template), **change}
            payload["batch_id"] = contract.new_id()
            payload["job_ids"] = [contract.new_id() for _ in range(4)]
            client.app.send_task(contract.SCORE_BATCH, kwargs=payload,
                                 queue=pg_settings.online_queue)  # fmt: skip
            return payload["job_ids"]

        assert template.text is not None
        huge = [["x" * 10_485_760, *template.text[0][1:]], template.text[1]]
        sent = {
            "truncated": send({"text": [template.text[0][:2], template.text[1]]}),
            "wrong type": send({"text": [[1, 2, 3, 4], template.text[1]]}),
            "10 MB string": send({"text": huge}),
            "lying width": send({"width": 9}),
            "lying positions": send({"tpos": [0, 4]}),
            "numbers only": send({"v": 1, "text": None, "tpos": None, "width": None}),
        }
        fine = client.submit("mixed", good)
        results = {r.job_id: r for r in client.wait([j for ids in sent.values() for j in ids]
                                                    + fine, timeout=120)}  # fmt: skip
    reasons = {name: {results[j].error for j in ids} for name, ids in sent.items()}
    assert reasons["truncated"] == {"message rejected: text column 0 does not hold one value "
                                    "per row (4)"}  # fmt: skip
    assert reasons["wrong type"] == {"message rejected: text column 0 holds a int, not text"}
    assert results[sent["10 MB string"][0]].error == (
        "row 0: feature 'city' (column 0) has a text of 10,485,760 characters (limit 10,000)"
    )
    assert all(results[j].ok for j in sent["10 MB string"][1:])  # the rest of its batch
    assert reasons["lying width"] == {"message rejected: width 9 is not 3 number columns + 2 "
                                      "text columns"}  # fmt: skip
    assert reasons["lying positions"] == {
        f"row {i}: text features at columns [0, 4], but the model's are at [0, 1]" for i in range(4)
    }
    assert all(r.startswith("row ") and "expected 5 features (2 text), got 3 (0 text)" in r
               for r in reasons["numbers only"])  # fmt: skip
    assert all(results[j].ok for j in fine)
    codes = {name: {results[j].error_code for j in ids if not results[j].ok}
             for name, ids in sent.items()}  # fmt: skip
    assert codes == {
        "truncated": {"message_rejected"}, "wrong type": {"message_rejected"},
        "10 MB string": {"text_too_long"}, "lying width": {"message_rejected"},
        "lying positions": {"wrong_shape"}, "numbers only": {"wrong_shape"},
    }  # fmt: skip
    assert worker.proc.poll() is None and mv.ref == "mixed@1"
    engine.dispose()
