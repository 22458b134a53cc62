"""`inferq score` checks before it enqueues, and gives up when nothing consumes its queue
(issue 17). Real Redis, Postgres, `celery worker` processes and scikit-learn models."""

from __future__ import annotations

import json
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
import redis
from inferq.common.db import make_engine
from inferq.common.schema import scoring_runs
from inferq.models import registry
from inferq.producer.runs import job_ids_for
from sqlalchemy import func, select

from tests.conftest import REPO, settings_env
from tests.integration.checker import check

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def score(settings, *args, timeout=180):
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "score", *args], env=settings_env(settings), cwd=REPO,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return out.returncode, out.stdout, out.stderr


@pytest.fixture
def model(pg_settings, tmp_path):
    """A registered pipeline with a number, an integer and a category feature."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(2)
    train = pd.DataFrame({"spend": rng.gamma(2, 5, 300), "age": rng.integers(18, 80, 300),
                          "city": rng.choice(["lyon", "oslo"], 300)})  # fmt: skip
    fitted = make_pipeline(
        ColumnTransformer([("c", OneHotEncoder(), ["city"])], remainder="passthrough"),
        LogisticRegression(max_iter=300),
    ).fit(train, train.age > 40)
    joblib.dump(fitted, tmp_path / "m.joblib")
    engine = make_engine(pg_settings)
    registry.register(engine, pg_settings.model_store_dir, tmp_path / "m.joblib", "shop",
                      "production")  # fmt: skip
    engine.dispose()
    return train


def _nothing_sent(settings) -> None:
    engine = make_engine(settings)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(scoring_runs)).scalar() == 0
    engine.dispose()
    assert redis.Redis.from_url(settings.broker_url).llen(settings.bulk_queue) == 0


def test_repeated_ids_and_a_text_column_refuse_the_run_before_anything_is_sent(
    pg_settings, tmp_path, model
):
    rows = model.head(120).copy()
    rows.insert(0, "id", [f"r{i}" for i in range(120)])
    rows.loc[[30, 97], "id"] = "r5"
    rows.to_csv(tmp_path / "dup.csv", index=False)
    code, _, stderr = score(pg_settings, "-m", "shop", "-i", str(tmp_path / "dup.csv"),
                            "--id-column", "id")  # fmt: skip
    assert code == 2, stderr
    assert "1 id(s) in column 'id' appear on more than one row: 'r5' at rows 5, 30, 97" in stderr
    _nothing_sent(pg_settings)

    bad = model.head(50).copy()
    bad.insert(0, "id", range(50))
    bad["age"] = "unknown"  # the whole column
    bad.to_parquet(tmp_path / "bad.parquet")
    code, _, stderr = score(pg_settings, "-m", "shop", "-i", str(tmp_path / "bad.parquet"),
                            "--id-column", "id")  # fmt: skip
    assert code == 2, stderr
    assert "column 'age' holds text, not numbers (e.g. 'unknown'" in stderr
    assert "Nothing was enqueued" in stderr
    _nothing_sent(pg_settings)


def test_no_worker_warns_then_gives_up_and_the_same_command_resumes(
    pg_settings, tmp_path, model, start_worker
):
    rows = model.head(300).copy()
    rows.insert(0, "id", [f"k{i}" for i in range(300)])
    rows.to_csv(tmp_path / "in.csv", index=False)
    argv = ["-m", "shop", "-i", str(tmp_path / "in.csv"), "--id-column", "id", "--run-id",
            "night", "--chunk-size", "100"]  # fmt: skip
    code, _, stderr = score(pg_settings, *argv, "--stall-timeout", "4")
    assert code == 1, stderr
    assert f"warning: no live worker consumes queue '{pg_settings.bulk_queue}'" in stderr
    assert "warning: no row scored for" in stderr and "is a worker consuming queue" in stderr
    assert "no row of run night scored for 4s" in stderr and "--run-id night resumes" in stderr
    start_worker(pg_settings, concurrency=1)
    code, stdout, stderr = score(pg_settings, *argv, "--json")
    assert code == 0, stderr
    assert "no live worker" not in stderr
    summary = json.loads(stdout)
    assert summary["status"] == "done" and summary["scored_ok"] == 300
    engine = make_engine(pg_settings)
    report = check(engine, job_ids_for("night", [f"k{i}" for i in range(300)]))
    assert report.clean, report  # one row per row, though the chunks were sent twice
    engine.dispose()
