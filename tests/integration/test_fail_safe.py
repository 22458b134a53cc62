"""Fail safe (issue 11): a worker that cannot serve a model for a reason of its own
environment never answers its jobs with error rows; they wait for a worker that can. Error
rows written by earlier versions for such reasons can be scored again. Real Redis, Postgres
and `celery worker` processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import redis
from inferq.common.db import make_engine
from inferq.common.errors import InvalidInput
from inferq.common.schema import predictions
from inferq.models import registry
from inferq.producer import InferenceClient
from inferq.producer.bulk import BulkScorer
from inferq.producer.sources import CsvSource
from inferq.workers.health import parked, read_reports
from sqlalchemy import func, select, update

from tests.conftest import REPO, WorkerProcess, settings_env
from tests.integration.checker import check

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _rows(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                select(predictions.c.status, func.count()).group_by(predictions.c.status)
            ).all()
        )


def _csv(binary_model, folder, n: int) -> tuple[str, pd.DataFrame]:
    frame = binary_model.x.iloc[:n].reset_index(drop=True).copy()
    frame.insert(0, "id", [f"r{i:04d}" for i in range(n)])
    path = folder / "rows.csv"
    frame.to_csv(path, index=False)
    return str(path), frame


def _start_refused(settings, log) -> tuple[int, str]:
    """Start a worker that is expected to refuse: (exit code, what it printed)."""
    worker = WorkerProcess(settings, log, concurrency=1, name="refused")
    try:
        code = worker.proc.wait(timeout=60)
    finally:
        worker.stop()
    return code, worker.output()


def test_a_worker_with_the_wrong_model_store_refuses_to_start(pg_settings, binary_model, tmp_path):
    engine = make_engine(pg_settings)
    registry.register(
        engine, pg_settings.model_store_dir, binary_model.path, "cancer", "production"
    )
    wrong = pg_settings.model_copy(update={"model_store": tmp_path / "not-the-store"})
    code, out = _start_refused(wrong, tmp_path / "refused.log")
    assert code == 3, out[-2000:]
    assert "cannot serve cancer@1 on this worker" in out
    assert "is not in this worker's model store" in out and "INFERQ_MODEL_STORE" in out
    assert "refusing to start: none of the 1 model version(s)" in out
    assert _rows(engine) == {}
    engine.dispose()


def test_jobs_wait_for_a_worker_that_can_serve_them(
    pg_settings, binary_model, tmp_path, start_worker
):
    engine = make_engine(pg_settings)
    registry.register(
        engine, pg_settings.model_store_dir, binary_model.path, "cancer", "production"
    )
    # Started anyway (INFERQ_START_CHECK=off), as after a store that broke while running.
    wrong = pg_settings.model_copy(
        update={"model_store": tmp_path / "not-the-store", "start_check": "off"}
    )
    bad = start_worker(wrong, concurrency=1, name="bad")
    assert "cannot serve cancer@1 on this worker" in bad.output()

    csv_path, frame = _csv(binary_model, tmp_path, 250)
    with InferenceClient(pg_settings, engine=engine) as client:
        online = [
            j for i in range(0, 60, 20) for j in client.submit("cancer", frame.iloc[i : i + 20])
        ]
        scorer = BulkScorer(client)
        run = scorer.prepare(CsvSource(csv_path), "cancer", "id", run_id="failsafe", chunk_size=100)
        scorer.enqueue(run)

        # The bad worker takes each message, cannot load the model, parks it: never answers.
        with redis.Redis.from_url(pg_settings.broker_url) as r:
            deadline = time.monotonic() + 30
            while len(parked(r)) < 6 and time.monotonic() < deadline:  # 3 online + 3 chunks
                time.sleep(0.1)
            held = parked(r)
            (report,) = read_reports(r)
        assert len(held) == 6 and {p.ref for p in held} == {"cancer@1"}
        assert all(p.by == bad.hostname.replace("%h", socket.gethostname()) for p in held)
        assert "not in this worker's model store" in held[0].reason
        assert report["model"] == "cancer@1" and report["worker"].startswith("bad-")
        assert "not in this worker's model store" in report["reason"]
        time.sleep(3)  # the bad worker never claims what it cannot serve
        assert _rows(engine) == {}
        assert "parked until a worker can serve it" in bad.output()

        started = time.monotonic()
        good = start_worker(pg_settings, concurrency=2, name="good")
        results = client.wait(online, timeout=120)
        done = scorer.wait("failsafe", timeout=120)
        print(
            f"every parked job answered {time.monotonic() - started:.1f} s after the "
            "healthy worker was started"
        )
        assert "claimed 6 parked message(s) this worker can serve: cancer@1" in good.output()
    assert [r.status for r in results] == ["ok"] * 60
    assert (done.status, done.scored_ok, done.scored_error) == ("done", 250, 0)
    assert _rows(engine) == {"ok": 310}
    assert check(engine, [*online, *(r.job_id for r in _all(engine, "failsafe"))]).clean
    engine.dispose()


def _all(engine, run_id: str):
    with engine.connect() as conn:
        return conn.execute(
            select(predictions.c.job_id).where(predictions.c.run_id == run_id)
        ).all()


LEGACY = (
    "model cancer@1 unavailable: refusing to load /elsewhere/cancer/1/model.joblib: file "
    "mismatch (expected sha256 5041dbd0faef..., found no file)"
)


def test_rescore_errors_replaces_error_rows_of_earlier_versions(
    pg_settings, binary_model, tmp_path, start_worker
):
    """A run answered by a pre-0.2 worker that could not load the model: every row an error.
    `inferq score --rescore-errors` scores it again; the row whose data is bad stays an error."""
    from inferq.workers.inference import error_batch
    from inferq.workers.results import write_results

    engine = make_engine(pg_settings)
    registry.register(
        engine, pg_settings.model_store_dir, binary_model.path, "cancer", "production"
    )
    csv_path, frame = _csv(binary_model, tmp_path, 250)
    frame = frame.astype({"mean radius": object})
    frame.loc[123, "mean radius"] = "oops"  # this row's data is the problem
    frame.to_csv(csv_path, index=False)

    with InferenceClient(pg_settings, engine=engine) as client:
        scorer = BulkScorer(client)
        run = scorer.prepare(CsvSource(csv_path), "cancer", "id", run_id="legacy", chunk_size=100)
        sent = []
        client.publish = lambda batches, **_: sent.extend(batches)  # type: ignore[method-assign]
        scorer.enqueue(run)
        for batch in sent:  # what the old worker wrote for every job: no error code yet
            legacy = error_batch(batch, LEGACY, code="internal")
            write_results(engine, legacy, "old@host:1", received_at=time.time())
        with engine.begin() as conn:  # rows written before codes existed carry none
            conn.execute(update(predictions).values(error_code=None))
        assert scorer.progress("legacy").scored_error == 250

    start_worker(pg_settings, concurrency=2)
    argv = [sys.executable, "-m", "inferq", "score", "-m", "cancer", "-i", csv_path,
            "--id-column", "id", "--run-id", "legacy", "--rescore-errors", "--json",
            "--timeout", "120"]  # fmt: skip
    env = settings_env(pg_settings)
    out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["status"], summary["scored_ok"], summary["scored_error"]) == ("done", 249, 1)
    with engine.connect() as conn:
        rows = conn.execute(
            select(predictions.c.key, predictions.c.status, predictions.c.error,
                   predictions.c.batch_id)
            .where(predictions.c.run_id == "legacy")
        ).all()  # fmt: skip
    assert len(rows) == 250  # replaced, never added
    bad = [r for r in rows if r.status == "error"]
    assert [r.key for r in bad] == ["r0123"]
    assert bad[0].error.startswith("row 123: ") and "mean radius" in bad[0].error
    assert all("~" in r.batch_id for r in rows)  # lineage: scored by the rescore pass

    again = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scored_ok"] == 249
    assert _rows(engine) == {"ok": 249, "error": 1}

    # Online: a caller fixes a bad row and submits it again under the same job id.
    with InferenceClient(pg_settings, engine=engine) as client:
        rows = binary_model.x.iloc[:3].astype(object).copy()
        rows.iloc[1, 0] = "n/a"
        ids = ["online-a", "online-b", "online-c"]
        first = client.wait(client.submit("cancer", rows, job_ids=ids), timeout=60)
        assert [r.status for r in first] == ["ok", "error", "ok"]
        with pytest.raises(InvalidInput, match="needs the job_ids"):
            client.submit("cancer", binary_model.x.iloc[:3], rescore_errors=True)
        client.submit("cancer", binary_model.x.iloc[:3], job_ids=ids, rescore_errors=True)
        deadline = time.monotonic() + 60
        while client.results(ids)[1].status != "ok" and time.monotonic() < deadline:
            time.sleep(0.2)
        second = client.results(ids)
    assert [r.status for r in second] == ["ok"] * 3
    assert second[0] == first[0] and second[2] == first[2]  # ok rows are never replaced
    assert second[1].score == pytest.approx(binary_model.model.predict_proba(
        binary_model.x.iloc[1:2])[0, 1], abs=1e-12)  # fmt: skip
    assert _rows(engine) == {"ok": 252, "error": 1}
    engine.dispose()


def test_a_worker_on_a_database_never_upgraded_refuses_to_start(pg_url, redis_url, tmp_path):
    """It could not write a single result: one line that says what to do, exit code 2."""
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url)
    code, out = _start_refused(settings, tmp_path / "unmigrated.log")
    assert code == 2, out[-2000:]
    assert "refusing to start: the database at" in out and "run `inferq db upgrade`" in out
    assert "Traceback" not in out

    # Upgraded, but not to the migration this worker's code writes to: refused the same way
    # (it would dead-letter every batch), naming both revisions.
    from inferq import migrations

    migrations.upgrade(settings, "0004")
    code, out = _start_refused(settings, tmp_path / "behind.log")
    assert code == 2, out[-2000:]
    head = migrations.head_revision(settings)
    assert f"it is at migration 0004, this worker needs {head}" in out
