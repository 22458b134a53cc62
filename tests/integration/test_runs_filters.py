"""`inferq runs --model --status --since` on real bulk runs scored by a real worker."""

import json
import time

import pytest
from inferq.models import registry
from inferq.producer import InferenceClient
from inferq.producer.bulk import BulkScorer
from inferq.producer.sources import ParquetSource
from sqlalchemy import text

from tests.integration.test_faults import _register_cancer
from tests.integration.test_workers_cli import inferq

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _ids(settings, *args):
    out = inferq(settings, "runs", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [(r["run_id"], r["status"]) for r in json.loads(out.stdout)]


def test_runs_filters(pg_settings, binary_model, regressor_model, start_worker, tmp_path):
    settings = pg_settings
    engine = _register_cancer(settings, binary_model)
    registry.register(engine, settings.model_store_dir, regressor_model.path, "reg",
                      "production")  # fmt: skip
    for name, model in (("cancer", binary_model), ("reg", regressor_model)):
        frame = model.x[:60] if hasattr(model.x, "iloc") else _frame(model.x[:60])
        frame = frame.reset_index(drop=True)
        frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
        frame.to_parquet(tmp_path / f"{name}.parquet")
    worker = start_worker(settings, concurrency=1)
    client = InferenceClient(settings, engine=engine)
    scorer = BulkScorer(client)

    def run(model, run_id, wait=True):
        r = scorer.prepare(ParquetSource(tmp_path / f"{model}.parquet"), model, "id",
                           run_id=run_id, chunk_size=20)  # fmt: skip
        scorer.enqueue(r)
        if wait:
            assert scorer.wait(run_id, timeout=60).status == "done"

    run("cancer", "old-cancer")
    run("cancer", "new-cancer")
    run("reg", "reg-unwatched", wait=False)  # finishes while nobody looks
    deadline = time.monotonic() + 60
    with engine.connect() as conn:
        while conn.scalar(text("SELECT count(*) FROM prediction_batches WHERE run_id = "
                               "'reg-unwatched'")) < 3 and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.3)
    worker.stop()
    run("cancer", "stuck", wait=False)  # no worker: it stays running
    with engine.begin() as conn:
        stored = conn.scalar(text("SELECT status FROM scoring_runs WHERE run_id = 'reg-unwatched'"))
        conn.execute(text("UPDATE scoring_runs SET started_at = now() - interval '2 days' "
                          "WHERE run_id = 'old-cancer'"))  # fmt: skip
    assert stored == "running"  # the stored status lags: the filter must not trust it

    assert [r for r, _ in _ids(settings)] == ["stuck", "reg-unwatched", "new-cancer",
                                              "old-cancer"]  # fmt: skip
    assert _ids(settings, "--status", "done") == [
        ("reg-unwatched", "done"), ("new-cancer", "done"), ("old-cancer", "done")]  # fmt: skip
    assert _ids(settings, "--status", "running") == [("stuck", "running")]
    assert _ids(settings, "--model", "cancer", "--status", "done", "--since", "24h") == [
        ("new-cancer", "done")]  # fmt: skip
    assert _ids(settings, "--model", "reg@1") == [("reg-unwatched", "done")]
    assert _ids(settings, "--model", "reg@2") == []
    assert _ids(settings, "--model", "cancer", "--limit", "1") == [("stuck", "running")]
    assert _ids(settings, "--status", "failed") == []

    table = inferq(settings, "runs", "--model", "cancer", "--since", "24h")
    assert "new-cancer" in table.stdout and "old-cancer" not in table.stdout
    empty = inferq(settings, "runs", "--status", "failed")
    assert empty.returncode == 0 and empty.stdout == "" and "no runs match" in empty.stderr
    detail = inferq(settings, "runs", "new-cancer")
    assert "run new-cancer: done — 60 of 60 rows scored" in detail.stdout

    bad = inferq(settings, "runs", "--status", "finished")
    assert bad.returncode == 2
    assert "unknown run status 'finished': use one of enqueuing, running, done, failed" in (
        bad.stderr
    )
    bad = inferq(settings, "runs", "--since", "yesterday")
    assert bad.returncode == 2 and "'yesterday' is not a duration" in bad.stderr
    bad = inferq(settings, "runs", "--model", "reg@x")
    assert bad.returncode == 2 and "NAME@VERSION" in bad.stderr
    bad = inferq(settings, "runs", "new-cancer", "--status", "done")
    assert bad.returncode == 2 and "drop them to show run 'new-cancer'" in bad.stderr
    client.close()
    engine.dispose()


def _frame(x):
    import pandas as pd

    return pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
