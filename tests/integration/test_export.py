"""Results out as files (issue 17): `inferq score --output`, `inferq results RUN_ID -o` and
`inferq results --model --since`, with real Redis, Postgres, workers and scikit-learn models.
Each file is compared row by row with the same model's in-process output on the input."""

from __future__ import annotations

import json
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from inferq.common.db import make_engine
from inferq.models import registry
from inferq.producer import InferenceClient

from tests.conftest import REPO, settings_env
from tests.integration.test_typed_rows import customers

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def cli(settings, *args, timeout=300):
    out = subprocess.run(
        [sys.executable, "-m", "inferq", *args], env=settings_env(settings), cwd=REPO,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return out.returncode, out.stdout, out.stderr


@pytest.fixture
def served(pg_settings, tmp_path, start_worker):
    """Three real models (3-class mixed-type pipeline, binary forest, regressor with NaN
    support) registered as production, and a worker serving them."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train, _ = customers(800, 1)
    tiers = np.select([train.age < 35, train.age < 60], ["junior", "mid"], "senior")
    mixed = make_pipeline(
        ColumnTransformer(
            [
                ("text", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
                ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "spend"]),
            ]
        ),
        LogisticRegression(max_iter=500),
    ).fit(train, tiers)
    rng = np.random.default_rng(5)
    x = pd.DataFrame(rng.normal(size=(600, 4)), columns=["a", "b", "c", "d"])
    forest = RandomForestClassifier(n_estimators=15, random_state=0).fit(x, x.a + x.b > 0)
    xnan = x.copy()
    xnan.loc[rng.random(len(x)) < 0.1, "c"] = np.nan
    hgb = HistGradientBoostingRegressor(max_iter=30).fit(xnan, x.a * 2 - x.d)
    engine = make_engine(pg_settings)
    models = {"tiers": mixed, "forest": forest, "hgb": hgb}
    for name, model in models.items():
        joblib.dump(model, tmp_path / f"{name}.joblib")
        registry.register(engine, pg_settings.model_store_dir, tmp_path / f"{name}.joblib", name,
                          "production")  # fmt: skip
    engine.dispose()
    start_worker(pg_settings, concurrency=2)
    return models


def test_a_run_comes_out_in_input_order_as_parquet_and_csv(pg_settings, tmp_path, served):
    model = served["tiers"]
    frame, _ = customers(2300, 9)
    frame = frame.astype({"plan": object})
    rng = np.random.default_rng(11)
    ids = [f"acct-{v}" for v in rng.permutation(100_000)[: len(frame)]]  # not sorted
    frame.insert(0, "account", ids)
    csv = frame.astype({"age": object})
    csv.loc[[4, 1777], "age"] = "unknown"  # two bad rows: error rows, in their place
    csv.to_csv(tmp_path / "in.csv", index=False)
    out_file = tmp_path / "preds.parquet"
    code, stdout, stderr = cli(
        pg_settings, "score", "-m", "tiers", "-i", str(tmp_path / "in.csv"), "--id-column",
        "account", "--run-id", "nightly", "--chunk-size", "300", "--output", str(out_file),
        "--json",
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["output"]["rows"] == 2300 and summary["output"]["path"] == str(out_file)
    table = pq.read_table(out_file)
    got = table.to_pandas()
    classes = ["junior", "mid", "senior"]
    assert list(got.columns[:6]) == ["row_no", "account", "job_id", "status", "label", "score"]
    assert [c for c in got.columns if c.startswith("proba_")] == [f"proba_{c}" for c in classes]
    assert got.row_no.tolist() == list(range(2300))
    assert got.account.tolist() == ids  # the input's order, not the ids' order
    assert table.schema.metadata[b"inferq.model"] == b"tiers@1"
    bad = got.row_no.isin([4, 1777])
    assert (got.status[bad] == "error").all() and got.label[bad].isna().all()
    assert got.error[bad].tolist() == [
        f"row {i}: feature 'age' (column 2) has a non-numeric value 'unknown' (text)"
        for i in (4, 1777)
    ]
    features = frame.drop(columns="account")[~bad.to_numpy()]
    ok = got[~bad]
    assert (ok.status == "ok").all()
    assert ok.label.tolist() == model.predict(features).tolist()
    proba = model.predict_proba(features)
    assert model.classes_.tolist() == classes
    np.testing.assert_allclose(ok[[f"proba_{c}" for c in classes]].to_numpy(), proba, atol=1e-12)
    assert ok.model_name.eq("tiers").all() and ok.model_version.eq(1).all()
    assert ok.run_id.eq("nightly").all() and ok.scored_at.notna().all()

    # The same run again, as CSV then gzipped CSV, later: the same rows, same order.
    for name in ("again.csv", "again.csv.gz"):
        code, _, stderr = cli(pg_settings, "results", "nightly", "-o", str(tmp_path / name))
        assert code == 0, stderr
        assert "wrote 2,300 rows of run nightly" in stderr
        again = pd.read_csv(tmp_path / name, dtype={"account": str, "label": str})
        assert again.account.tolist() == ids and again.row_no.tolist() == list(range(2300))
        np.testing.assert_allclose(again.proba_mid.to_numpy(), got.proba_mid.to_numpy(),
                                   atol=1e-12, equal_nan=True)  # fmt: skip
    # Only the error rows; and CSV on stdout when no file is given.
    code, stdout, stderr = cli(pg_settings, "results", "nightly", "--status", "error")
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith('"row_no","account","job_id"')
    assert [line.split(",")[0] for line in lines[1:]] == ["4", "1777"]
    # A reader that stops early (`| head -1`): a quiet stop, not an error about the broker.
    piped = subprocess.run(
        f"{sys.executable} -m inferq results nightly | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", env=settings_env(pg_settings), cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert piped.stdout.startswith('"row_no","account"') and piped.stdout.count("\n") == 1
    assert piped.returncode == 141 and "error" not in piped.stderr, piped.stderr


def test_binary_and_regressor_columns_and_online_rows_by_time(pg_settings, tmp_path, served):
    rng = np.random.default_rng(8)
    x = pd.DataFrame(rng.normal(size=(40, 4)), columns=["a", "b", "c", "d"])
    with InferenceClient(pg_settings) as client:
        first = client.submit("forest", x.iloc[:25], keys=[f"k{i}" for i in range(25)])
        second = client.submit("forest", x.iloc[25:], keys=[f"k{i}" for i in range(25, 40)])
        reg = client.submit("hgb", x.iloc[:10])
        client.wait(first + second + reg, timeout=120)
    out = tmp_path / "online.parquet"
    code, stdout, stderr = cli(pg_settings, "results", "--model", "forest", "--since", "1h",
                               "-o", str(out), "--json")  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["rows"] == 40
    got = pq.read_table(out).to_pandas()
    # Submission order, each row at its place in its submit() call.
    assert got.job_id.tolist() == first + second
    assert got.key.tolist() == [f"k{i}" for i in range(40)]
    assert got.row_no.tolist() == list(range(25)) + list(range(15))
    forest = served["forest"]
    proba = forest.predict_proba(x)
    # A binary classifier stores only P(True); the file has both classes' columns.
    np.testing.assert_allclose(got.proba_True.to_numpy(), proba[:, 1], atol=1e-12)
    np.testing.assert_allclose(got.proba_False.to_numpy(), proba[:, 0], atol=1e-12)
    assert got.label.tolist() == [str(v) for v in forest.predict(x)]

    code, _, stderr = cli(pg_settings, "results", "-m", "hgb", "--since", "1h", "-o",
                          str(tmp_path / "reg.csv"))  # fmt: skip
    assert code == 0, stderr
    reg_rows = pd.read_csv(tmp_path / "reg.csv")
    assert not [c for c in reg_rows.columns if c.startswith("proba")]  # a regressor: none
    np.testing.assert_allclose(reg_rows.score.to_numpy(), served["hgb"].predict(x.iloc[:10]),
                               atol=1e-9)  # fmt: skip
    # A window that holds nothing: an empty file with the columns, and a note.
    code, _, stderr = cli(pg_settings, "results", "-m", "hgb", "--since", "1h", "--until", "30m",
                          "-o", str(tmp_path / "none.parquet"))  # fmt: skip
    assert code == 0 and "no rows matched" in stderr
    assert pq.read_table(tmp_path / "none.parquet").num_rows == 0


def test_results_refuses_what_it_cannot_do_with_one_clear_line(pg_settings, tmp_path):
    from inferq import migrations

    migrations.upgrade(pg_settings)
    cases = [
        (["results", "nope", "-o", str(tmp_path / "x.parquet")], "no run 'nope'"),
        (["results", "r1", "-o", str(tmp_path / "x.txt")], "cannot tell the format"),
        (["results"], "give a run id"),
        (["results", "r1", "--model", "m"], "not both"),
        (["results", "--model", "m", "--since", "soon"], "is not a duration"),
        (["results", "r1", "--json"], "give --output FILE"),
        (["results", "r1", "-o", str(tmp_path / "missing" / "x.csv")], "does not exist"),
        (
            [
                "score",
                "-m",
                "m",
                "-i",
                "x.csv",
                "--id-column",
                "id",
                "--no-wait",
                "--output",
                "o.csv",
            ],
            "drop --no-wait",
        ),
    ]
    for argv, message in cases:
        code, _, stderr = cli(pg_settings, *argv, timeout=60)
        assert code == 2, (argv, stderr)
        assert message in stderr, (argv, stderr)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".x*"))
