"""Fault scenarios on real processes: every accepted job ends with exactly one row."""

import os
import signal
import time

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from common.db import make_engine
from common.schema import prediction_batches
from models import registry
from producer import InferenceClient
from tests.integration.checker import wait_until_clean

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture
def fast_recovery(pg_settings):
    """Settings with a short visibility timeout so a killed worker's messages return fast."""
    return pg_settings.model_copy(
        update={"visibility_timeout": 8, "task_time_limit": 6, "unacked_restore_interval": 2}
    )


def _rows(model_file, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    base = model_file.x
    return base.iloc[rng.integers(0, len(base), n)] * rng.normal(1, 0.05, (n, base.shape[1]))


def _committed(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(prediction_batches)).scalar()


def _wait_for_batches(engine, n: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (done := _committed(engine)) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return done


def test_sigkill_of_the_whole_worker_mid_run_loses_nothing(
    fast_recovery, binary_model, start_worker
):
    settings = fast_recovery
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, binary_model.path, "cancer", "production")
    worker = start_worker(settings, concurrency=2)
    with InferenceClient(settings.model_copy(update={"batch_size": 500}), engine=engine) as c:
        accepted = c.submit("cancer", _rows(binary_model, 100_000))  # 200 messages
    assert _wait_for_batches(engine, 20) >= 20
    os.killpg(worker.proc.pid, signal.SIGKILL)  # main process and prefork children at once
    worker.proc.wait(10)
    killed_at, done = time.monotonic(), _committed(engine)
    assert done < 200, "the run finished before the kill; nothing was tested"
    start_worker(settings, concurrency=2)
    counts, _ = wait_until_clean(engine, accepted, timeout=120)
    recovery = time.monotonic() - killed_at
    print(f"recovered {200 - done} messages in {recovery:.1f}s after SIGKILL")
    assert counts.clean and counts.rows == 100_000
    engine.dispose()


def test_sigterm_during_a_run_finishes_or_requeues_in_flight_batches(
    fast_recovery, binary_model, start_worker
):
    settings = fast_recovery
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, binary_model.path, "cancer", "production")
    worker = start_worker(settings, concurrency=2)
    with InferenceClient(settings.model_copy(update={"batch_size": 500}), engine=engine) as c:
        accepted = c.submit("cancer", _rows(binary_model, 50_000))  # 100 messages
    assert _wait_for_batches(engine, 10) >= 10
    worker.proc.send_signal(signal.SIGTERM)  # a deploy: warm shutdown
    assert worker.proc.wait(30) == 0
    assert _committed(engine) < 100, "the run finished before the SIGTERM"
    start_worker(settings, concurrency=2)
    counts, waited = wait_until_clean(engine, accepted, timeout=60)
    assert counts.clean and counts.rows == 50_000
    assert waited < settings.visibility_timeout + 20  # requeued at shutdown, not via timeout
    engine.dispose()
