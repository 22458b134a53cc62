"""Worker-side dynamic batching on real processes: many producers, merged model calls, and
every job still gets exactly its own result."""

import concurrent.futures as cf
import multiprocessing
import re
import threading

import joblib
import numpy as np
import pytest
from inferq.common.db import make_engine
from inferq.common.settings import Settings
from inferq.models import registry
from inferq.producer import InferenceClient
from sqlalchemy import text

from tests.integration.checker import wait_until_clean

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

#: (model, version) each producer thread cycles through; cancer@1 and @2 are different fits.
TARGETS = [("cancer", 1), ("iris", 1), ("cancer", 2)]
ROWS_PER_THREAD = 24


def _produce(settings_json: str, proc: int, threads: int) -> list[tuple[str, str, int, int, bool]]:
    """One producer process: threads each submitting single rows through their own client."""
    from sklearn.datasets import load_breast_cancer, load_iris  # test side only

    settings = Settings.model_validate_json(settings_json)
    data = {"cancer": load_breast_cancer().data, "iris": load_iris().data}
    sent: list[tuple[str, str, int, int, bool]] = []
    lock = threading.Lock()

    def run(t: int) -> None:
        with InferenceClient(settings, linger_ms=0) as client:  # merging is the worker's job
            for k in range(ROWS_PER_THREAD):
                model, version = TARGETS[(proc + t + k) % len(TARGETS)]
                row = (proc * 97 + t * 31 + k * 7) % len(data[model])
                x = data[model][row : row + 1].copy()
                bad = (t + k) % 11 == 0
                if bad:
                    x[0, 1] = np.nan
                job = f"p{proc}-t{t}-{k}"
                client.submit(model, x, version=version, job_ids=[job], keys=[job])
                with lock:
                    sent.append((job, model, version, row, bad))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sent


@pytest.fixture
def batching_settings(pg_settings):
    return pg_settings.model_copy(update={"online_max_batch_size": 64, "online_max_delay_ms": 20})


def _register_models(settings, binary_model, multiclass_model, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    engine = make_engine(settings)
    store = settings.model_store_dir
    registry.register(engine, store, binary_model.path, "cancer", "production")
    y = binary_model.model.predict(binary_model.x)
    v2 = make_pipeline(StandardScaler(), LogisticRegression(C=0.001)).fit(binary_model.x, y)
    joblib.dump(v2, tmp_path / "cancer-v2.joblib")
    registry.register(engine, store, tmp_path / "cancer-v2.joblib", "cancer")
    registry.register(engine, store, multiclass_model.path, "iris", "production")
    return engine, {("cancer", 1): binary_model.model, ("cancer", 2): v2,
                    ("iris", 1): multiclass_model.model}  # fmt: skip


def test_concurrent_single_rows_are_merged_and_each_job_gets_its_own_result(
    batching_settings, binary_model, multiclass_model, start_worker, tmp_path
):
    from sklearn.datasets import load_breast_cancer, load_iris

    settings = batching_settings
    engine, fitted = _register_models(settings, binary_model, multiclass_model, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(3, mp_context=ctx) as pool:
        futures = [pool.submit(_produce, settings.model_dump_json(), p, 4) for p in range(3)]
        sent = [s for f in futures for s in f.result(timeout=300)]
    worker = start_worker(settings, concurrency=1)
    assert len(sent) == 3 * 4 * ROWS_PER_THREAD
    jobs = [s[0] for s in sent]
    counts, _ = wait_until_clean(engine, jobs, timeout=90)
    print(f"dynamic batching, 3 processes x 4 threads: {counts}")
    assert counts.clean

    data = {"cancer": load_breast_cancer().data, "iris": load_iris().data}
    with InferenceClient(settings, engine=engine) as client:
        results = {r.job_id: r for r in client.results(jobs)}
    for job, model, version, row, bad in sent:
        r = results[job]
        assert (r.model_name, r.model_version, r.key) == (model, version, job)
        if bad and model == "cancer":  # a scaler + logistic regression refuses missing values
            assert r.status == "error" and "row 0:" in r.error and "missing" in r.error, r.error
            continue
        est = fitted[(model, version)]
        x = data[model][row : row + 1].copy()
        if bad:  # the forest takes them (probed at registration): scored, merged with others
            x[0, 1] = np.nan
        if model == "cancer":  # a pipeline fitted on a DataFrame: give it one
            import pandas as pd

            x = pd.DataFrame(x, columns=binary_model.x.columns)
        assert r.ok and r.label == str(est.predict(x)[0])
        assert r.probabilities == pytest.approx(
            dict(zip(map(str, est.classes_), est.predict_proba(x)[0], strict=True)), abs=1e-12
        )

    # Merging happened, and every message kept its own ledger row (Flower counts it too).
    groups = [int(n) for n in re.findall(r"group of (\d+) messages, \d+ rows", worker.output())]
    print(f"groups: {len(groups)}, messages merged: {sum(groups)} of {len(sent)}")
    assert groups and max(groups) > 1
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM prediction_batches")) == len(sent)
    engine.dispose()


def test_a_child_killed_mid_group_loses_nothing(pg_settings, start_worker, tmp_path):
    """A message that SIGKILLs its process, merged with good ones: the group dies, the good
    messages are answered one by one, the poison one ends in dead_letters."""
    from tests.killer_model import register_killer

    settings = pg_settings.model_copy(update={"online_max_batch_size": 64,
                                              "online_max_delay_ms": 200})  # fmt: skip
    engine, x = register_killer(settings, tmp_path, seed=1)
    rows = x[:30].copy()
    rows[17, 0] = 666
    # linger_ms=0: one message per row, so the worker-side batcher does all the merging.
    with InferenceClient(settings, engine=engine, linger_ms=0) as client:
        with cf.ThreadPoolExecutor(10) as threads:  # 30 single-row messages, then a worker
            jobs = list(threads.map(lambda i: client.submit("killer", rows[i : i + 1])[0],
                                    range(30)))  # fmt: skip
        worker = start_worker(settings, concurrency=1)
        results = {r.job_id: r for r in client.wait(jobs, timeout=180)}
    counts, _ = wait_until_clean(engine, jobs, timeout=5)
    print(f"child killed mid-group: {counts}")
    assert counts.clean
    bad = {i: results[j].error for i, j in enumerate(jobs) if i != 17 and not results[j].ok}
    assert not bad, bad
    assert results[jobs[17]].error.startswith("dead-lettered: delivered")
    log = worker.output()
    assert "lost its process" in log  # a group did die, and was taken apart
    assert worker.proc.poll() is None
    engine.dispose()
