"""Idempotent result writes on the embedded SQLite backend (same logic as Postgres)."""

import numpy as np
from inferq.common.contract import Batch
from inferq.common.db import make_engine
from inferq.common.schema import prediction_batches, predictions
from inferq.workers.inference import error_batch
from inferq.workers.results import write_results
from sqlalchemy import func, select


def test_redelivery_and_resubmission_never_duplicate(sqlite_settings):
    engine = make_engine(sqlite_settings)
    batch = Batch(model="m", version=1, job_ids=["a", "b"], x=np.zeros((2, 1)), keys=["k1", None])
    first = write_results(engine, error_batch(batch, "boom", code="internal"), "w1", received_at=0)
    again = write_results(engine, error_batch(batch, "boom", code="internal"), "w2", received_at=0)
    other = Batch(model="m", version=1, job_ids=["b", "c"], x=np.zeros((2, 1)))
    mixed = write_results(engine, error_batch(other, "later", code="internal"), "w3", received_at=0)
    assert (first.n_written, first.duplicate_batch) == (2, False)
    assert (again.n_written, again.duplicate_batch) == (0, True)
    assert mixed.n_written == 1
    # The same batch id again with other job ids is still the same (redelivered) batch.
    renamed = Batch(model="m", version=1, job_ids=["x", "y"], x=np.zeros((2, 1)))
    renamed.batch_id = batch.batch_id
    again = write_results(
        engine, error_batch(renamed, "boom", code="internal"), "w4", received_at=0
    )
    assert (again.n_written, again.duplicate_batch) == (0, True)
    with engine.connect() as conn:
        rows = dict(conn.execute(select(predictions.c.job_id, predictions.c.error)).all())
        assert rows == {"a": "boom", "b": "boom", "c": "later"}  # first result wins
        assert conn.execute(select(func.count()).select_from(prediction_batches)).scalar() == 2
