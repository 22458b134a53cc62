"""Migrations and bulk idempotent writes on the real PostgreSQL server."""

import threading

import numpy as np
import pytest
from alembic import command
from inferq.common.contract import Batch
from inferq.common.db import make_engine
from inferq.common.schema import prediction_batches, predictions
from inferq.workers.inference import ScoredBatch, error_batch
from inferq.workers.results import write_results
from sqlalchemy import func, inspect, select, text

from inferq import migrations

pytestmark = pytest.mark.integration


def test_upgrade_head_then_alembic_check_and_downgrade(pg_settings):
    cfg = migrations.alembic_config(pg_settings)
    command.check(cfg)  # raises if the models and the migrations disagree
    engine = make_engine(pg_settings)
    insp = inspect(engine)
    assert {"predictions", "prediction_batches", "model_versions", "model_aliases"} <= set(
        insp.get_table_names()
    )
    indexes = {tuple(ix["column_names"]) for ix in insp.get_indexes("predictions")}
    assert indexes == {("scored_at",), ("key",)}  # + the primary key (job_id, day)
    assert insp.get_pk_constraint("predictions")["constrained_columns"] == ["job_id", "day"]
    cols = {c["name"]: str(c["type"]) for c in insp.get_columns("predictions")}
    assert cols["probabilities"] == "JSONB" and cols["score"] == "DOUBLE PRECISION"
    command.downgrade(cfg, "base")
    assert "predictions" not in inspect(engine).get_table_names()
    command.upgrade(cfg, "head")
    engine.dispose()


def _scored(job_ids, batch_id=None, label="a") -> ScoredBatch:
    n = len(job_ids)
    batch = Batch(model="m", version=1, job_ids=list(job_ids), x=np.zeros((n, 1)))
    if batch_id:
        batch.batch_id = batch_id
    return ScoredBatch(
        batch=batch,
        model_name="m",
        model_version=1,
        ok=np.ones(n, dtype=bool),
        errors={},
        labels=[label] * n,
        scores=np.array([0.1 + i for i in range(n)]),
        proba=np.array([[0.1 + i, 0.9 - i] for i in range(n)]),
        classes=["a", "b"],
    )


def _count(engine, table=predictions):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_copy_write_is_exact_and_redelivery_is_a_noop(pg_settings):
    engine = make_engine(pg_settings)
    scored = _scored([f"j{i}" for i in range(2000)])
    first = write_results(engine, scored, "w1", received_at=0)
    assert (first.n_written, first.duplicate_batch) == (2000, False)
    again = write_results(engine, scored, "w2", received_at=0)
    assert (again.n_written, again.duplicate_batch) == (0, True)
    assert _count(engine) == 2000
    with engine.connect() as conn:
        row = conn.execute(select(predictions).where(predictions.c.job_id == "j7")).one()
        assert row.score == 7.1 and row.probabilities == {"a": 7.1, "b": 0.9 - 7}
        assert row.worker == "w1" and row.batch_id == scored.batch.batch_id
        assert row.row_no == 7  # its position in the message's rows (row_offset 0)
        ledger = conn.execute(select(prediction_batches)).one()
        assert (ledger.n_rows, ledger.n_ok, ledger.n_written) == (2000, 2000, 2000)
    engine.dispose()


def test_resubmitted_job_ids_in_a_new_batch_skip_existing_rows(pg_settings):
    engine = make_engine(pg_settings)
    write_results(engine, _scored(["a", "b"], label="first"), "w", received_at=0)
    report = write_results(engine, _scored(["b", "c", "d"], label="second"), "w", received_at=0)
    assert report.n_written == 2
    with engine.connect() as conn:
        labels = dict(conn.execute(select(predictions.c.job_id, predictions.c.label)).all())
    assert labels == {"a": "first", "b": "first", "c": "second", "d": "second"}
    engine.dispose()


def test_concurrent_duplicate_deliveries_write_once(pg_settings):
    engine = make_engine(pg_settings, pool_size=8)
    scored = _scored([f"j{i}" for i in range(500)], batch_id="same-batch")
    reports, errors = [], []

    def deliver():
        try:
            reports.append(write_results(engine, scored, "w", received_at=0))
        except Exception as exc:  # pragma: no cover - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.duplicate_batch for r in reports) == [False] + [True] * 5
    assert _count(engine) == 500 and _count(engine, prediction_batches) == 1
    engine.dispose()


def test_sql_looking_values_are_stored_literally(pg_settings):
    engine = make_engine(pg_settings)
    nasty = "x'); DROP TABLE predictions; --\t\\N"
    batch = Batch(model="m", version=1, job_ids=["j1"], x=np.zeros((1, 1)), keys=[nasty])
    write_results(engine, error_batch(batch, nasty, code="invalid_value"), "w", received_at=0)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT key, error FROM predictions")).one()
    assert row.key == nasty and row.error == nasty
    engine.dispose()


def test_redelivered_batch_with_different_job_ids_writes_nothing(pg_settings):
    engine = make_engine(pg_settings)
    write_results(engine, _scored(["a", "b"], batch_id="b1"), "w", received_at=0)
    write_results(engine, _scored(["z"], batch_id="other"), "w", received_at=0)
    # Same batch id again, but with one old and one new job id (ids regenerated upstream).
    report = write_results(engine, _scored(["a", "c"], batch_id="b1"), "w", received_at=0)
    assert (report.n_written, report.duplicate_batch) == (0, True)
    report = write_results(engine, _scored(["d", "e"], batch_id="b1"), "w", received_at=0)
    assert (report.n_written, report.duplicate_batch) == (0, True)
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(predictions.c.job_id)).scalars())
    assert ids == ["a", "b", "z"]
    engine.dispose()


def test_copy_round_trips_every_special_character_through_postgres(pg_settings):
    engine = make_engine(pg_settings)
    nasty = ["line\nbreak", "carriage\rreturn", "back\\slash", "quote \"q\" 's'", "tab\tbed"]
    classes = [nasty[2], nasty[3], nasty[0]]  # three classes: probabilities stored as jsonb
    batch = Batch(model="m", version=1, job_ids=["j0", "j1", "j2"], x=np.zeros((3, 1)),
                  keys=[nasty[0], nasty[1], "nul\x00key"])  # fmt: skip
    scored = ScoredBatch(
        batch=batch, model_name="m", model_version=1, ok=np.array([True, True, False]),
        errors={2: nasty[4]}, labels=[classes[0], classes[1], None],
        scores=np.array([0.25, 1 / 3, np.nan]),
        proba=np.array([[0.75, 0.25, 0.0], [2 / 3, 1 / 3, 0.0], [np.nan] * 3]), classes=classes,
    )  # fmt: skip
    write_results(engine, scored, "w\\1", received_at=0)
    with engine.connect() as conn:
        rows = {r.job_id: r for r in conn.execute(select(predictions))}
    assert [rows[j].key for j in ("j0", "j1", "j2")] == [nasty[0], nasty[1], "nul\ufffdkey"]
    assert (rows["j0"].label, rows["j1"].label) == (classes[0], classes[1])
    assert rows["j1"].probabilities == {classes[0]: 2 / 3, classes[1]: 1 / 3, classes[2]: 0.0}
    assert rows["j1"].score == 1 / 3
    assert (rows["j2"].error, rows["j2"].label, rows["j2"].probabilities) == (nasty[4], None, None)
    assert rows["j0"].worker == "w\\1"
    engine.dispose()


def test_group_write_is_one_transaction_and_falls_back_per_message_on_a_redelivery(pg_settings):
    from inferq.workers.results import write_group

    engine = make_engine(pg_settings)
    a, b, c = _scored(["a1", "a2"]), _scored(["b1"]), _scored(["c1", "c2", "c3"])
    reports = write_group(engine, [a, b], "w", received_at=0)
    assert [(r.n_written, r.duplicate_batch) for r in reports] == [(2, False), (1, False)]
    assert len({r.write_ms for r in reports}) == 1  # one transaction for the group
    # b is delivered again inside a new group: the group falls back to per-message writes,
    # b writes nothing, c is written in full.
    reports = write_group(engine, [b, c], "w", received_at=0)
    assert [(r.n_written, r.duplicate_batch) for r in reports] == [(0, True), (3, False)]
    assert _count(engine) == 6 and _count(engine, prediction_batches) == 3
    with engine.connect() as conn:
        per_batch = dict(conn.execute(select(predictions.c.batch_id, func.count())
                                      .group_by(predictions.c.batch_id)).all())  # fmt: skip
    assert per_batch == {a.batch.batch_id: 2, b.batch.batch_id: 1, c.batch.batch_id: 3}
    engine.dispose()
