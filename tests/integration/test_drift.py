"""Drift and estimated accuracy from the results store, against a real worker.

A sample drawn like the reference flags nothing; a sample with a shifted numeric feature
and a categorical feature whose mix changed flags exactly those two features; a small
window of unshifted rows flags nothing; the confidence-based accuracy estimate on
unshifted data is within a few points of the realised accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from inferq.common.db import make_engine
from inferq.common.timewindow import since
from inferq.models import gates, registry
from inferq.ops.drift import drift_report
from inferq.producer.client import InferenceClient
from sqlalchemy import text

from tests.conftest import REPO, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

FEATURES = ["a", "b", "c", "city", "plan"]


def _sample(rng: np.random.Generator, n: int, shift: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "a": rng.normal(0.8 if shift else 0.0, 1.0, n),
            "b": rng.normal(0, 1, n),
            "c": rng.gamma(2.0, 1.0, n),
            "city": rng.choice(
                ["x", "y", "z", "w"], n, p=[0.1, 0.3, 0.2, 0.4] if shift else [0.4, 0.3, 0.2, 0.1]
            ).astype(object),
            "plan": rng.choice(["basic", "pro"], n, p=[0.7, 0.3]).astype(object),
        }
    )
    logit = 1.5 * frame.a - frame.b + 0.8 * (frame.city == "x") - 0.3 * frame.c + 0.5
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def _model(train: pd.DataFrame):
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
            (StandardScaler(), ["a", "b", "c"]),
        ),
        LogisticRegression(max_iter=1000),
    ).fit(train[FEATURES], train.y)


def test_drift_flags_exactly_the_shifted_features(pg_settings, tmp_path, start_worker):
    rng = np.random.default_rng(2026)
    engine = make_engine(pg_settings)
    store = pg_settings.model_store_dir
    model = _model(_sample(rng, 5000))
    joblib.dump(model, tmp_path / "churn.joblib")
    reference = _sample(rng, 4000)  # held out: the calibration must not see training rows
    reference.to_csv(tmp_path / "reference.csv", index=False)
    for _ in range(3):  # v1: unshifted traffic, v2: shifted traffic, v3: a small window
        mv = registry.register(engine, store, tmp_path / "churn.joblib", "churn",
                               reference=tmp_path / "reference.csv", force=True)  # fmt: skip
        mv = gates.baseline_version(engine, store, mv, None, "y")
    assert mv.baseline and mv.baseline["calibration"]
    start_worker(pg_settings, concurrency=2)

    stable, shifted, small = _sample(rng, 3000), _sample(rng, 3000, shift=True), _sample(rng, 100)
    with InferenceClient(pg_settings) as client:
        for version, frame in ((1, stable), (2, shifted), (3, small)):
            ids = client.submit("churn", frame[FEATURES], version=version)
            results = client.wait(ids, timeout=120)
            assert all(r.ok for r in results)
            if version == 1:
                realised = np.mean(
                    [r.label == str(t) for r, t in zip(results, frame.y, strict=True)]
                )

    window = since("1h")
    (g1,) = drift_report(engine, "churn", window, version=1)
    (g2,) = drift_report(engine, "churn", window, version=2)
    (g3,) = drift_report(engine, "churn", window, version=3)
    features = set(FEATURES)
    assert g1.rows == 3000 and not [f.feature for f in g1.flagged]
    assert {f.feature for f in g2.flagged} & features == {"a", "city"}
    assert not g3.flagged, [(f.feature, f.psi, f.noise) for f in g3.features]
    every = drift_report(engine, "churn", window)
    assert [(g.version, g.rows) for g in every] == [(1, 3000), (2, 3000), (3, 100)]
    # the same counts through the CLI, as JSON; exit code 1 because v2 has flags
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "drift", "churn", "--since", "1h", "--json"],
        cwd=REPO, env=settings_env(pg_settings), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    flagged = {g["version"]: set(g["flagged"]) & features for g in doc["groups"]}
    assert flagged == {1: set(), 2: {"a", "city"}, 3: set()}

    with engine.connect() as conn:
        n, expected = conn.execute(
            text(
                "SELECT sum(n), sum(expected_correct) FROM accuracy_estimates "
                "WHERE model_name = 'churn' AND model_version = 1"
            )
        ).one()
    assert int(n) == 3000
    estimate = float(expected) / int(n)
    print(f"estimated accuracy {estimate:.4f}, realised {realised:.4f}")
    assert abs(estimate - realised) < 0.03
