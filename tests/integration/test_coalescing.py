"""Coalesced single-row submits from many threads, scored by a real worker: no mix-ups."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from inferq.models import registry
from inferq.producer import InferenceClient

from tests.integration.checker import committed_batches, wait_until_clean

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

THREADS, PER_THREAD = 8, 40


def test_threads_submitting_rows_for_two_models_each_get_their_own_result(
    pg_settings, multiclass_model, regressor_model, start_worker
):
    with InferenceClient(pg_settings, linger_ms=5) as client:
        store = pg_settings.model_store_dir
        registry.register(client.engine, store, multiclass_model.path, "iris", "production")
        registry.register(client.engine, store, regressor_model.path, "diabetes", "production")
        registry.register(client.engine, store, regressor_model.path, "diabetes", force=True)
        start_worker(pg_settings, concurrency=2)

        rng = np.random.default_rng(7)
        iris_x = multiclass_model.x * rng.normal(1.0, 0.05, size=multiclass_model.x.shape)
        diab_x = regressor_model.x * rng.normal(1.0, 0.05, size=regressor_model.x.shape)
        sent: dict[str, tuple[str, int, list]] = {}  # job id -> (model, version, row)
        lock = threading.Lock()

        def caller(t: int) -> None:
            for i in range(PER_THREAD):
                n = t * PER_THREAD + i
                if n % 2:
                    model, version, row = "iris", 1, iris_x[n % len(iris_x)]
                else:
                    model, version, row = "diabetes", 1 + (n // 2) % 2, diab_x[n % len(diab_x)]
                row = row.tolist()
                if n % 13 == 4:  # bad rows ride in merged messages without failing the others
                    row[1] = "n/a"
                elif n % 17 == 5:  # caught by the worker; must still name the caller's row 0
                    row[2] = float("nan")
                job_ids = client.submit(model, [row], version=version)
                with lock:
                    sent[job_ids[0]] = (model, version, row)

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(caller, range(THREADS)))

        counts, _waited = wait_until_clean(client.engine, list(sent), timeout=90)
        assert counts.clean and counts.rows == THREADS * PER_THREAD
        assert committed_batches(client.engine) < len(sent) // 2  # they really were merged

        results = {r.job_id: r for r in client.wait(list(sent), timeout=30)}
        bad = {"n/a": "row 0: column 1 has a non-numeric value 'n/a' (text)"}
        for job, (model, version, row) in sent.items():
            r = results[job]
            assert (r.model_name, r.model_version) == (model, version)
            if row[1] == "n/a":
                assert r.error == bad["n/a"]
            elif row[2] != row[2] and model == "diabetes":  # a ridge refuses missing values
                assert r.error == (
                    f"row 0: column 2 is missing, and {model}@{version} does not accept "
                    "missing values there"
                )
            elif model == "iris":  # a forest takes them (probed at registration)
                assert r.ok and r.label == multiclass_model.model.predict([row])[0]
            else:
                expected = regressor_model.model.predict([row])[0]
                assert r.ok and abs(r.score - expected) <= 1e-9
