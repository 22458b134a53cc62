"""`inferq score` end to end: CSV, Parquet and SQL runs, resume after crashes, version pinning,
bad inputs, and online jobs overtaking a bulk flood. Real Redis, Postgres and workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import joblib
import numpy as np
import pandas as pd
import pytest
from inferq.common.db import make_engine
from inferq.common.schema import prediction_batches, predictions, scoring_run_chunks, scoring_runs
from inferq.models import registry
from sqlalchemy import func, select, text

from tests.conftest import REPO, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

N_ROWS = 200_000
FEATURES = [f"f{i}" for i in range(20)]


@pytest.fixture(scope="module")
def bulk_data(tmp_path_factory):
    """200k rows (CSV and Parquet) with a few bad rows, and a cheap model fitted on names."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("bulk")
    rng = np.random.default_rng(7)
    train = pd.DataFrame(rng.normal(size=(4000, 20)), columns=FEATURES)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(
        train, (train.f0 + train.f3 > 0).astype(int)
    )
    joblib.dump(model, folder / "cheap.joblib")
    frame = pd.DataFrame(rng.normal(size=(N_ROWS, 20)), columns=FEATURES)
    frame.insert(0, "customer_id", [f"c{i:07d}" for i in range(N_ROWS)])
    frame["ignored_extra"] = 1  # extra columns are ignored
    frame = frame[["customer_id", "ignored_extra", *FEATURES[::-1]]]  # order does not matter
    frame.to_parquet(folder / "rows.parquet")
    csv = frame.astype({"f5": object})
    csv.loc[[10, 150_001], "f5"] = "oops"  # text in a numeric column
    csv.loc[[77], "f9"] = np.nan  # empty cell
    csv.to_csv(folder / "rows.csv", index=False)
    return {"folder": folder, "model": model, "frame": frame}


def score_cli(settings, *args, timeout=300):
    """Run `inferq score ... --json`; returns (exit code, parsed JSON or None, stderr)."""
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "score", *args, "--json"],
        env=settings_env(settings), cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    try:
        data = json.loads(out.stdout) if out.stdout.strip() else None
    except json.JSONDecodeError:
        data = None
    return out.returncode, data, out.stderr


def _register(settings, path, name="cheap"):
    engine = make_engine(settings)
    mv = registry.register(engine, settings.model_store_dir, path, name, "production")
    engine.dispose()
    return mv


def _run_rows(settings, run_id) -> pd.DataFrame:
    engine = make_engine(settings)
    with engine.connect() as conn:
        rows = pd.read_sql(
            select(predictions.c.key, predictions.c.status, predictions.c.label,
                   predictions.c.score, predictions.c.error, predictions.c.model_version)
            .where(predictions.c.run_id == run_id),
            conn,
        )  # fmt: skip
    engine.dispose()
    return rows


def _check_matches_in_process(rows: pd.DataFrame, frame: pd.DataFrame, model) -> None:
    assert len(rows) == len(frame) and rows.key.is_unique  # exactly one row per input row
    ok = rows[rows.status == "ok"].set_index("key")
    expected = frame.set_index("customer_id").loc[ok.index, FEATURES]
    proba = model.predict_proba(expected)
    assert ok.label.tolist() == [str(v) for v in model.predict(expected)]
    assert np.max(np.abs(ok.score.to_numpy() - proba[:, 1])) <= 1e-12


def test_csv_and_parquet_runs_score_every_row_exactly_once(pg_settings, bulk_data, start_worker):
    _register(pg_settings, bulk_data["folder"] / "cheap.joblib")
    start_worker(pg_settings, concurrency=2)
    folder, frame, model = bulk_data["folder"], bulk_data["frame"], bulk_data["model"]

    code, summary, err = score_cli(pg_settings, "--model", "cheap", "--input",
                                   str(folder / "rows.csv"), "--id-column", "customer_id",
                                   "--run-id", "nightly-csv")  # fmt: skip
    assert code == 0, err
    assert summary["status"] == "done" and summary["total_rows"] == N_ROWS
    assert (summary["scored_ok"], summary["scored_error"]) == (N_ROWS - 3, 3)
    rows = _run_rows(pg_settings, "nightly-csv")
    _check_matches_in_process(rows, frame, model)
    errors = rows[rows.status == "error"].set_index("key").error.to_dict()
    assert errors == {
        "c0000010": "row 10: feature 'f5' (column 5) has a non-numeric value 'oops' (text)",
        "c0000077": "row 77: feature 'f9' (column 9) is missing, and cheap@1 does not accept "
        "missing values there",
        "c0150001": "row 150001: feature 'f5' (column 5) has a non-numeric value 'oops' (text)",
    }

    parquet = str(folder / "rows.parquet")
    code, summary, err = score_cli(
        pg_settings, "-m", "cheap@1", "-i", parquet, "--id-column", "customer_id",
        "--chunk-size", "3000",
    )  # fmt: skip
    assert code == 0, err
    assert summary["status"] == "done" and summary["scored_ok"] == N_ROWS
    assert summary["n_chunks"] == -(-N_ROWS // 3000)
    _check_matches_in_process(_run_rows(pg_settings, summary["run_id"]), frame, model)

    # `inferq runs RUN_ID` shows counts and the error breakdown by message.
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "runs", "nightly-csv", "--json"],
        env=settings_env(pg_settings), capture_output=True, text=True, check=True,
    )  # fmt: skip
    shown = json.loads(out.stdout)
    assert shown["scored_error"] == 3 and shown["status"] == "done"
    assert shown["errors_by_message"] == [
        {"message": "feature 'f5' (column 5) has a non-numeric value 'oops' (text)", "rows": 2},
        {
            "message": "feature 'f9' (column 9) is missing, and cheap@1 does not accept missing "
            "values there",
            "rows": 1,
        },
    ]
    # Re-running a finished run sends nothing and changes nothing.
    code, again, _ = score_cli(pg_settings, "-m", "cheap", "-i", str(folder / "rows.csv"),
                               "--id-column", "customer_id", "--run-id", "nightly-csv")  # fmt: skip
    assert code == 0 and again["finished_at"] == shown["finished_at"]
    assert len(_run_rows(pg_settings, "nightly-csv")) == N_ROWS


def test_sql_source_run(pg_settings, bulk_data, start_worker):
    _register(pg_settings, bulk_data["folder"] / "cheap.joblib")
    start_worker(pg_settings, concurrency=2)
    frame = bulk_data["frame"].iloc[:20_000]
    engine = make_engine(pg_settings)
    frame.to_sql("customers", engine, index=False)
    engine.dispose()
    code, summary, err = score_cli(
        pg_settings, "-m", "cheap:production", "--sql",
        "SELECT * FROM customers WHERE customer_id < 'c0015000' ORDER BY customer_id",
        "--id-column", "customer_id", "--max-error-rate", "0.01",
    )  # fmt: skip
    assert code == 0, err
    assert summary["source"].startswith("sql:SELECT * FROM customers")
    assert summary["scored_ok"] == 15_000 and summary["status"] == "done"
    _check_matches_in_process(
        _run_rows(pg_settings, summary["run_id"]), frame.iloc[:15_000], bulk_data["model"]
    )


PRODUCER_THAT_CRASHES = textwrap.dedent(
    """
    import os, signal
    from inferq.common.settings import get_settings
    from inferq.producer import InferenceClient
    from inferq.producer.bulk import BulkScorer
    from inferq.producer.sources import CsvSource

    scorer = BulkScorer(InferenceClient(get_settings()))
    run = scorer.prepare(CsvSource({path!r}), "cheap", "customer_id", run_id="crashy",
                         chunk_size=500)
    # Die like a SIGKILLed process right after the first group of chunks was published.
    scorer.enqueue(run, lambda progress: os.kill(os.getpid(), signal.SIGKILL))
    """
)


def test_resume_after_producer_and_worker_crash_keeps_version(pg_settings, bulk_data, start_worker):
    folder = bulk_data["folder"]
    mv1 = _register(pg_settings, folder / "cheap.joblib")
    proc = subprocess.run(
        [sys.executable, "-c", PRODUCER_THAT_CRASHES.format(path=str(folder / "rows.csv"))],
        env=settings_env(pg_settings), cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    engine = make_engine(pg_settings)
    with engine.connect() as conn:
        run = conn.execute(select(scoring_runs).where(scoring_runs.c.run_id == "crashy")).one()
        chunks = conn.execute(select(func.count()).select_from(scoring_run_chunks)).scalar()
    assert run.status == "enqueuing" and run.model_version == mv1.version
    assert 0 < run.enqueued < N_ROWS and chunks * 500 == run.enqueued  # part of the run

    # A worker starts on the backlog and is SIGKILLed (parent and children) mid-run.
    worker = start_worker(pg_settings, concurrency=2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            done = conn.execute(select(func.count()).select_from(prediction_batches)).scalar()
        if done >= 5:
            break
        time.sleep(0.02)
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)
    with engine.connect() as conn:
        done = conn.execute(select(func.count()).select_from(prediction_batches)).scalar()
    assert 5 <= done < N_ROWS // 500

    # A new version is promoted in between: the resumed run must stay on the pinned version.
    registry.register(engine, pg_settings.model_store_dir, folder / "cheap.joblib", "cheap",
                      force=True)  # fmt: skip
    registry.promote(engine, "cheap", 2)

    start_worker(pg_settings, concurrency=2)
    code, summary, err = score_cli(pg_settings, "-m", "cheap", "-i", str(folder / "rows.csv"),
                                   "--id-column", "customer_id", "--run-id", "crashy")  # fmt: skip
    assert code == 0, err
    assert summary["status"] == "done" and summary["model"] == "cheap@1"
    assert (summary["total_rows"], summary["enqueued"]) == (N_ROWS, N_ROWS)
    assert summary["scored_ok"] + summary["scored_error"] == N_ROWS
    rows = _run_rows(pg_settings, "crashy")
    assert len(rows) == N_ROWS and rows.key.is_unique
    assert set(rows.model_version) == {1}
    with engine.connect() as conn:
        stored = conn.execute(select(scoring_runs).where(scoring_runs.c.run_id == "crashy")).one()
        chunk_rows = conn.execute(
            select(func.sum(scoring_run_chunks.c.n_rows)).where(
                scoring_run_chunks.c.run_id == "crashy"
            )
        ).scalar()
    assert (stored.scored_ok, stored.scored_error) == (N_ROWS - 3, 3)
    assert chunk_rows == N_ROWS and stored.n_chunks == N_ROWS // 500
    engine.dispose()


def test_bad_inputs_stop_before_anything_is_enqueued(pg_settings, bulk_data, tmp_path):
    import redis

    _register(pg_settings, bulk_data["folder"] / "cheap.joblib")
    bad = tmp_path / "missing.csv"
    bulk_data["frame"].drop(columns=["f3", "f11"]).iloc[:10].to_csv(bad, index=False)
    header_only = tmp_path / "header.csv"
    header_only.write_text("customer_id," + ",".join(FEATURES) + "\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"\x00\x01 not parquet")
    good = str(bulk_data["folder"] / "rows.parquet")
    cases = [
        (["-m", "cheap", "-i", str(bad)],
         "missing 2 feature column(s) that model 'cheap@1' needs: f3, f11"),
        (["-m", "cheap", "-i", str(empty)], "is empty (no header row)"),
        (["-m", "ghost", "-i", good], "model 'ghost' is not registered"),
        (["-m", "cheap@9", "-i", good], "model 'cheap' version 9 is not registered"),
        (["-m", "cheap", "-i", str(garbage)], "cannot read"),
        (["-m", "cheap", "-i", str(tmp_path / "nope.csv")], "does not exist"),
        (["-m", "cheap", "-i", str(tmp_path / "x.json")], "use a .csv or .parquet file"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = score_cli(pg_settings, *args, "--id-column", "customer_id")
        assert code == 2 and message in " ".join(err.split()), (args, err)
        assert "Traceback" not in err
    engine = make_engine(pg_settings)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(scoring_runs)).scalar() == 0
    # An input with a header but no rows: the run record says why it stopped.
    code, _, err = score_cli(pg_settings, "-m", "cheap", "-i", str(header_only),
                             "--id-column", "customer_id", "--run-id", "empty-run")  # fmt: skip
    assert code == 2 and "has no rows to score" in err
    with engine.connect() as conn:
        run = conn.execute(select(scoring_runs)).one()
    assert (run.run_id, run.status, run.error) == ("empty-run", "failed", "the input has no rows")
    r = redis.Redis.from_url(pg_settings.broker_url)
    assert r.llen(pg_settings.bulk_queue) == 0 and r.llen(pg_settings.online_queue) == 0
    engine.dispose()


def test_online_job_overtakes_a_bulk_flood(pg_settings, bulk_data, start_worker):
    from inferq.producer import InferenceClient

    _register(pg_settings, bulk_data["folder"] / "cheap.joblib")
    code, summary, err = score_cli(pg_settings, "-m", "cheap", "-i",
                                   str(bulk_data["folder"] / "rows.parquet"), "--id-column",
                                   "customer_id", "--chunk-size", "2000", "--no-wait")  # fmt: skip
    assert code == 0 and summary["n_chunks"] == 100, err
    start_worker(pg_settings, concurrency=1)
    engine = make_engine(pg_settings)
    while True:  # the single worker process is busy with the flood
        with engine.connect() as conn:
            if conn.execute(select(func.count()).select_from(prediction_batches)).scalar() >= 3:
                break
        time.sleep(0.01)
    count = text("SELECT count(*) FROM prediction_batches WHERE run_id IS NOT NULL")
    with InferenceClient(pg_settings) as client:
        with engine.connect() as conn:
            before = conn.execute(count).scalar()
        job = client.submit("cheap", bulk_data["frame"][FEATURES].iloc[:1])
        (result,) = client.wait(job, timeout=60)
    with engine.connect() as conn:
        during = conn.execute(
            text("SELECT count(*) FROM prediction_batches WHERE run_id IS NOT NULL "
                 "AND committed_at <= :t"), {"t": result.scored_at},
        ).scalar() - before  # fmt: skip
        left = 100 - conn.execute(count).scalar()
    # The online job waited for the chunk in progress (plus at most one already reserved),
    # not for the ~95 chunks queued before it.
    assert during <= 2, f"{during} bulk chunks were committed while the online job waited"
    assert left > 50, "the flood was over before the online job was checked"
    engine.dispose()


def test_backpressure_bounds_what_a_run_keeps_in_redis(pg_settings, bulk_data, start_worker):
    import redis

    _register(pg_settings, bulk_data["folder"] / "cheap.joblib")
    env = {**settings_env(pg_settings), "INFERQ_BULK_MAX_QUEUED_ROWS": "10000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferq", "score", "-m", "cheap", "-i",
         str(bulk_data["folder"] / "rows.parquet"), "--id-column", "customer_id",
         "--chunk-size", "1000", "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    queue = redis.Redis.from_url(pg_settings.broker_url)
    deadline = time.monotonic() + 90  # start-up and the checks before a run come first
    while queue.llen(pg_settings.bulk_queue) < 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(4)  # no worker yet: the producer must stay stopped after one publish group
    assert proc.poll() is None
    assert queue.llen(pg_settings.bulk_queue) == 50  # 50 x 1000 rows, not 200 messages
    start_worker(pg_settings, concurrency=2)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["status"] == "done" and summary["scored_ok"] == N_ROWS
