"""End to end on real services: producer -> Redis -> `celery worker` (prefork) -> Postgres."""

import numpy as np
import pytest
from inferq.common import contract
from inferq.common.schema import predictions
from inferq.models import registry
from inferq.producer import InferenceClient
from sqlalchemy import func, select

from tests.integration.checker import wait_for_batches

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture
def client(pg_settings):
    c = InferenceClient(pg_settings)
    yield c
    c.close()


def _count(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(predictions)).scalar()


def test_ten_thousand_rows_match_in_process_predictions(
    pg_settings, client, binary_model, start_worker
):
    registry.register(
        client.engine, pg_settings.model_store_dir, binary_model.path, "cancer", "production"
    )
    worker = start_worker(pg_settings, concurrency=2)
    assert "preloaded 1 model(s) before fork: cancer@1" in worker.output()

    rng = np.random.default_rng(42)
    base = binary_model.x
    frame = base.iloc[rng.integers(0, len(base), 10_000)].reset_index(drop=True)
    frame = frame * rng.normal(1.0, 0.05, size=frame.shape)  # distinct rows, same distribution
    frame = frame[frame.columns[::-1]]  # reversed column order: matched by name
    keys = [f"cust-{i}" for i in range(len(frame))]
    job_ids = client.submit("cancer", frame, keys=keys)
    results = client.wait(job_ids, timeout=120)

    model = binary_model.model
    expected_labels = [str(v) for v in model.predict(frame[base.columns])]
    expected_proba = model.predict_proba(frame[base.columns])
    assert [r.job_id for r in results] == job_ids
    assert [r.key for r in results] == keys
    assert all(r.status == "ok" and r.model_name == "cancer" for r in results)
    assert {r.model_version for r in results} == {1}
    assert [r.label for r in results] == expected_labels  # exact
    scores = np.array([r.score for r in results])
    assert np.max(np.abs(scores - expected_proba[:, 1])) <= 1e-12
    probs = np.array([[r.probabilities["0"], r.probabilities["1"]] for r in results])
    assert np.max(np.abs(probs - expected_proba)) <= 1e-12
    assert len({r.batch_id for r in results}) == 10  # 1000-row messages
    assert all(r.worker and r.scored_at >= r.submitted_at for r in results)

    # Re-submitting the same job ids never creates a second row.
    client.submit("cancer", frame, job_ids=job_ids, keys=keys)
    client.submit("cancer", frame.iloc[:500], job_ids=job_ids[:500])
    assert wait_for_batches(client.engine, 12) == 12
    assert _count(client.engine) == 10_000
    assert client.results(job_ids[:3]) == results[:3]  # first result wins, unchanged


def test_bad_rows_get_error_rows_and_the_rest_is_scored(
    pg_settings, client, multiclass_model, regressor_model, start_worker
):
    store = pg_settings.model_store_dir
    registry.register(client.engine, store, multiclass_model.path, "iris", "production")
    registry.register(client.engine, store, regressor_model.path, "diabetes", "production")
    start_worker(pg_settings, concurrency=2)

    rows = multiclass_model.x[:8].tolist()
    rows[1][2] = float("nan")
    rows[3] = rows[3][:3]  # 3 features instead of 4
    rows[4][0] = "abc"
    rows[5][1] = None
    rows[6][3] = float("-inf")
    ids = client.submit("iris", rows, keys=list(range(8)))
    reg_rows = np.array(regressor_model.x[:5], dtype=float)
    reg_rows[2, 3] = np.nan
    reg_ids = client.submit("diabetes", reg_rows)
    results = client.wait(ids + reg_ids, timeout=60)
    by_id = {r.job_id: r for r in results}
    iris = [by_id[i] for i in ids]
    # A random forest takes missing values (probed at registration): rows 1 and 5 are scored.
    statuses = ["ok", "ok", "ok", "error", "error", "ok", "error", "ok"]
    assert [r.status for r in iris] == statuses
    assert iris[3].error == "row 3: expected 4 features, got 3"
    assert iris[4].error == "row 4: column 0 has a non-numeric value 'abc' (text)"
    assert iris[6].error == "row 6: column 3 is -inf"
    good = np.array([rows[i] for i in (0, 1, 2, 5, 7)], dtype=float)  # None -> NaN
    assert [iris[i].label for i in (0, 1, 2, 5, 7)] == multiclass_model.model.predict(good).tolist()
    assert all(r.label is None and r.score is None for r in iris if not r.ok)
    diabetes = [by_id[i] for i in reg_ids]
    # A ridge regression does not: that row is an error row naming why.
    assert diabetes[2].error == (
        "row 2: column 3 is missing, and diabetes@1 does not accept missing values there"
    )
    expected = regressor_model.model.predict(reg_rows[[0, 1, 3, 4]])
    got = np.array([diabetes[i].score for i in (0, 1, 3, 4)])
    assert np.max(np.abs(got - expected)) <= 1e-12


def test_unknown_model_or_malformed_message_gives_error_rows_not_a_crash_loop(
    pg_settings, client, regressor_model, start_worker
):
    registry.register(
        client.engine, pg_settings.model_store_dir, regressor_model.path, "reg", "production"
    )
    worker = start_worker(pg_settings, concurrency=1)

    def send(payload):
        client.app.send_task(contract.SCORE_BATCH, kwargs=payload, queue=pg_settings.online_queue)

    ghost = contract.Batch(model="ghost", version=3, job_ids=["g1", "g2"], x=np.zeros((2, 10)))
    send(contract.encode_batch(ghost))
    wrong_version = contract.Batch(model="reg", version=9, job_ids=["v1"], x=np.zeros((1, 10)))
    send(contract.encode_batch(wrong_version))
    broken = contract.encode_batch(
        contract.Batch(model="reg", version=1, job_ids=["m1", "m2"], x=np.zeros((2, 10)))
    )
    broken["x"] = broken["x"][:-8]
    send(broken)
    fine = client.submit("reg", regressor_model.x[:3])
    results = {r.job_id: r for r in client.wait(["g1", "g2", "v1", "m1", "m2", *fine], 60)}
    assert results["g1"].error.startswith("model ghost@3 unavailable: model 'ghost' version 3")
    assert results["v1"].error.startswith("model reg@9 unavailable")
    assert "message rejected: matrix has 152 bytes, expected 160" in results["m1"].error
    assert all(results[j].ok for j in fine)
    assert worker.proc.poll() is None  # still serving
