"""The validation gate and safe model files through the CLI (embedded backend, real models).

`models register --reference --target` checks a version in a clean process and records its
metrics; `promote` refuses a version whose checks failed, or that has none while the current
version has, unless --force; skops files need their untrusted types named with --trust.
"""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from tests.unit.checks_helpers import fail_above
from tests.unit.test_cli import run


@pytest.fixture(scope="module")
def churn_data() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 400
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(1, 72, n).astype(float),
            "spend": rng.normal(70, 20, n),
            "plan": rng.choice(["basic", "plus", "pro"], n),
        }
    )
    frame["churned"] = ((frame.tenure < 20) ^ (rng.random(n) < 0.15)).astype(int)
    return frame


def _pipeline(classifier) -> object:
    return make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            (StandardScaler(), ["tenure", "spend"]),
        ),
        classifier,
    )


def test_checks_record_metrics_and_gate_promote(sqlite_settings, tmp_path, churn_data):
    features = churn_data[["tenure", "spend", "plan"]]
    good = _pipeline(LogisticRegression(max_iter=1000)).fit(features, churn_data.churned)
    ref = tmp_path / "reference.csv"
    churn_data.to_csv(ref, index=False)
    good_path = tmp_path / "good.joblib"
    joblib.dump(good, good_path)

    out = run(sqlite_settings, "models", "register", str(good_path), "-n", "churn",
              "--reference", str(ref), "--target", "churned", "--alias", "production",
              "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    v1 = json.loads(out.stdout)
    assert v1["aliases"] == ["latest", "production"] and v1["checks"]["passed"] is True
    metrics = v1["checks"]["metrics"]
    assert metrics["accuracy"] == pytest.approx(
        accuracy_score(churn_data.churned, good.predict(features))
    )
    assert metrics["roc_auc"] == pytest.approx(
        roc_auc_score(churn_data.churned, good.predict_proba(features)[:, 1])
    )

    # v2 needs a module the registering process can import but a clean process cannot:
    # its checks fail, so promote refuses it unless forced.
    broken = make_pipeline(
        FunctionTransformer(fail_above),
        LogisticRegression(max_iter=1000),
    ).fit(np.zeros((4, 2)), [0, 1, 0, 1])
    broken_path = tmp_path / "broken.joblib"
    joblib.dump(broken, broken_path)
    pd.DataFrame({"a": [0.0, 1.0], "b": [1.0, 0.0]}).to_csv(tmp_path / "ab.csv", index=False)
    out = run(sqlite_settings, "models", "register", str(broken_path), "-n", "churn",
              "--reference", str(tmp_path / "ab.csv"), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["checks"]["passed"] is False
    out = run(sqlite_settings, "models", "promote", "churn", "2")
    assert out.returncode == 2
    assert "promote refused" in out.stderr and "churn@2 failed its checks" in out.stderr
    assert "--force" in out.stderr

    # v3 without checks, while production (v1) has them: refused; `models check` fixes it.
    run(sqlite_settings, "models", "register", str(good_path), "-n", "churn", "--force")
    out = run(sqlite_settings, "models", "promote", "churn", "3")
    assert out.returncode == 2 and "has no checks while churn@1" in out.stderr
    out = run(sqlite_settings, "models", "check", "churn", "3", "--reference", str(ref),
              "--target", "churned")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "passed" in out.stdout and "accuracy" in out.stdout
    out = run(sqlite_settings, "models", "promote", "churn", "3")
    assert out.returncode == 0, out.stderr
    assert "candidate  churn@3: checks passed; accuracy" in out.stdout
    assert "current    churn@1: checks passed; accuracy" in out.stdout

    # @2's features are a, b: promoting it over @3 also changes the schema
    out = run(sqlite_settings, "models", "promote", "churn", "2", "--force",
              "--accept-schema-change", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    forced = json.loads(out.stdout)
    assert forced["version"] == 2 and forced["previous_version"] == 3
    assert any("forced past the gate" in n for n in forced["notes"])
    shown = run(sqlite_settings, "models", "show", "churn@2").stdout
    assert "checks: FAILED" in shown and "No module named 'tests'" in shown


def test_skops_files_need_named_trust(sqlite_settings, tmp_path):
    import skops.io as sio

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, x[:, 0] > 0)
    path = tmp_path / "forest.skops"
    sio.dump(forest, path)
    out = run(sqlite_settings, "models", "register", str(path), "-n", "forest")
    assert out.returncode == 2
    assert "sklearn.tree._tree.Tree" in out.stderr and "--trust" in out.stderr
    assert "Traceback" not in out.stderr

    out = run(sqlite_settings, "models", "register", str(path), "-n", "forest", "--trust",
              "sklearn.tree._tree.Tree", "--trust", "numpy.float32", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    mv = json.loads(out.stdout)
    assert mv["format"] == "skops" and mv["trusted"] == ["sklearn.tree._tree.Tree"]
    assert mv["artifact"].endswith("model.skops")
    assert "numpy.float32: the file does not need it" in out.stderr

    from inferq.common.db import make_engine
    from inferq.models import registry

    engine = make_engine(sqlite_settings)
    loaded = registry.load(
        sqlite_settings.model_store_dir, registry.get_version(engine, "forest", 1)
    )
    np.testing.assert_array_equal(loaded.predict_proba(x), forest.predict_proba(x))
    shown = run(sqlite_settings, "models", "show", "forest@1").stdout
    assert "skops (trusted: sklearn.tree._tree.Tree)" in shown
