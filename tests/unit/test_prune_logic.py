"""`inferq db prune`: which days go, the archive's schema and layout, and a whole prune on the
embedded SQLite backend (tests/integration/test_prune.py does Postgres)."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from inferq.common import partitions, schema
from inferq.common.db import make_engine
from inferq.common.errors import InvalidInput
from inferq.ops import archive as arc
from inferq.ops import prune as ops

from inferq.cli_db import older_than_from
from tests.conftest import make_settings

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


# ----- shared with tests/integration/test_prune.py ---------------------------------------
def seed(engine: sa.Engine, days: dict[dt.date, int]) -> None:
    """``n`` predictions per day (every column kind, NULLs included), one ledger row and one
    shadow row per day, and two registered versions of model ``m`` for the lineage."""
    if engine.dialect.name == "postgresql":
        partitions.ensure(engine, days)
    with engine.begin() as conn:
        if not conn.execute(sa.select(schema.model_versions.c.name)).first():
            conn.execute(sa.insert(schema.model_versions), [
                {"name": "m", "version": v, "sha256": f"sha-{v}", "sklearn_version": "1.9.1",
                 "task": "classifier", "estimator": "Pipeline", "n_features": 2, "has_proba": 1,
                 "artifact": f"m/{v}.joblib", "size_bytes": 10,
                 "created_at": dt.datetime(2026, 1, v, tzinfo=UTC)}
                for v in (1, 2)
            ])  # fmt: skip
        for day, n in days.items():
            at = dt.datetime.combine(day, dt.time(12), tzinfo=UTC)
            rows = [
                {"job_id": f"{day:%Y%m%d}-{i}", "day": day, "run_id": None,
                 "key": f"k{i}" if i % 2 else None, "model_name": "m", "model_version": 1,
                 "status": "ok" if i % 5 else "error", "label": "a" if i % 5 else None,
                 "score": i / 7 if i % 5 else None,
                 "probabilities": {"a": i / 7, "b": 1 - i / 7} if i % 3 else None,
                 "error": None if i % 5 else "bad 'value'\n\\N", "error_code": None,
                 "submitted_at": at, "scored_at": at + dt.timedelta(microseconds=i),
                 "worker": "w1", "batch_id": f"b{day:%Y%m%d}", "runtime": "sklearn"}
                for i in range(n)
            ]  # fmt: skip
            if rows:
                conn.execute(sa.insert(schema.predictions), rows)
            conn.execute(sa.insert(schema.prediction_batches), [{
                "batch_id": f"b{day:%Y%m%d}", "day": day, "run_id": None, "model_name": "m",
                "model_version": 1, "worker": "w1", "n_rows": n, "n_ok": n, "n_error": 0,
                "n_written": n, "submitted_at": at, "received_at": at, "committed_at": at,
                "decode_ms": 1.5, "predict_ms": 2.5, "write_ms": 3.5}])  # fmt: skip
            conn.execute(sa.insert(schema.shadow_predictions), [{
                "job_id": f"{day:%Y%m%d}-0", "model_name": "m", "model_version": 2, "day": day,
                "primary_version": 1, "label": "b", "score": 0.25,
                "probabilities": {"a": 0.75, "b": 0.25}, "error": None, "scored_at": at,
                "worker": "w1", "batch_id": f"b{day:%Y%m%d}"}])  # fmt: skip


def seed_small_tables(engine: sa.Engine, old: dt.datetime, new: dt.datetime) -> None:
    """Hourly drift/accuracy rows and runs (done, running) at ``old`` and at ``new``."""
    with engine.begin() as conn:
        for tag, at in (("old", old), ("new", new)):
            conn.execute(sa.insert(schema.drift_counts), [{
                "model_name": "m", "model_version": 1, "baseline": "b", "bucket": at,
                "worker": "w1", "counts": [1, 2, 3]}])  # fmt: skip
            conn.execute(sa.insert(schema.accuracy_estimates), [{
                "model_name": "m", "model_version": 1, "bucket": at, "worker": "w1", "n": 5,
                "expected_correct": 4.5}])  # fmt: skip
            for status in ("done", "running"):
                run = f"{tag}-{status}"
                conn.execute(sa.insert(schema.scoring_runs), [{
                    "run_id": run, "model_name": "m", "model_version": 1, "source": "csv:x",
                    "id_column": "id", "chunk_size": 10, "enqueued": 10, "scored_ok": 10,
                    "scored_error": 0, "status": status, "started_at": at,
                    "updated_at": at}])  # fmt: skip
                conn.execute(sa.insert(schema.scoring_run_chunks), [{
                    "run_id": run, "chunk_no": 0, "batch_id": f"c-{run}", "first_row": 0,
                    "n_rows": 10, "enqueued_at": at}])  # fmt: skip


def db_rows(engine: sa.Engine, table: str, day: dt.date) -> dict[str, dict]:
    """The rows of ``table`` for ``day`` by id, JSON as Python objects, ``day`` left out."""
    t = arc.TABLES[table]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.day == day)).mappings().all()
    return {_id(r): {k: v for k, v in r.items() if k != "day"} for r in rows}


def file_rows(path) -> dict[str, dict]:
    """An archive file's rows by id, its JSON text parsed."""
    out = {}
    for r in pq.read_table(path).to_pylist():
        if r.get("probabilities") is not None:
            r["probabilities"] = json.loads(r["probabilities"])
        out[_id(r)] = r
    return out


def _id(r) -> str:
    return r["job_id"] if "job_id" in r else r["batch_id"]


def same_rows(a: dict[str, dict], b: dict[str, dict]) -> bool:
    """Equal rows, timestamps compared as instants (SQLite gives them back naive, in UTC)."""

    def norm(v):
        if isinstance(v, dt.datetime) and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v

    return a.keys() == b.keys() and all(
        {k: norm(v) for k, v in a[i].items()} == {k: norm(v) for k, v in b[i].items()} for i in a
    )


# ----- which days go ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("older_than", "first_kept"),
    [
        (dt.timedelta(days=1), dt.date(2026, 11, 30)),  # cutoff 11-30 10:00: 11-29 goes
        (dt.timedelta(hours=10), dt.date(2026, 12, 1)),  # cutoff 12-01 00:00: 11-30 goes
        (dt.timedelta(hours=10, seconds=1), dt.date(2026, 11, 30)),  # 11-30 23:59:59 stays
        (dt.timedelta(seconds=1), dt.date(2026, 12, 1)),  # never today
    ],
)
def test_a_day_goes_when_all_its_rows_are_older_than_the_cutoff(
    monkeypatch, older_than, first_kept
):
    monkeypatch.setattr(partitions, "today", lambda: dt.date(2026, 12, 1))
    assert ops.cutoff_day(NOW - older_than, NOW) == first_kept


def test_never_today_even_with_a_clock_in_the_future(monkeypatch):
    monkeypatch.setattr(partitions, "today", lambda: dt.date(2026, 12, 1))
    future = NOW + dt.timedelta(days=30)
    assert ops.cutoff_day(future - dt.timedelta(days=1), future) == dt.date(2026, 12, 1)


def test_older_than_must_be_positive(tmp_path):
    engine = make_engine(make_settings(tmp_path))
    with pytest.raises(InvalidInput, match="more than 0"):
        ops.plan(engine, dt.timedelta(0))


def test_older_than_comes_from_the_option_else_the_retention(tmp_path):
    settings = make_settings(tmp_path, retention="90d")
    assert older_than_from("2w", settings) == dt.timedelta(weeks=2)
    assert older_than_from(None, settings) == dt.timedelta(days=90)
    with pytest.raises(InvalidInput, match=r"--older-than .*INFERQ_RETENTION"):
        older_than_from(None, make_settings(tmp_path))
    with pytest.raises(InvalidInput, match="not a duration"):
        older_than_from("90 days", settings)


# ----- archive schema and layout ---------------------------------------------------------
def test_arrow_schema_is_explicit_and_leaves_the_day_to_the_folder():
    s = arc.arrow_schema("predictions")
    assert "day" not in s.names
    assert s.field("job_id").type == pa.string() and not s.field("job_id").nullable
    assert s.field("model_version").type == pa.int32()
    assert s.field("score").type == pa.float64()
    assert s.field("probabilities").type == pa.string()
    assert s.field("probabilities").metadata == {b"inferq.json": b"true"}
    assert s.field("submitted_at").type == pa.timestamp("us", tz="UTC")
    assert arc.arrow_type(sa.BigInteger()) == pa.int64()
    assert arc.arrow_type(sa.Date()) == pa.date32()
    for table in arc.TABLES:  # every column of every partitioned table has a type
        assert len(arc.arrow_schema(table)) == len(arc.TABLES[table].columns) - 1


def test_archive_path_is_hive_style(tmp_path):
    item = ops.PartitionItem(
        "predictions", "predictions_p20261101", dt.date(2026, 11, 1), 5, True, "attached"
    )
    assert arc.archive_path(tmp_path, item) == (
        tmp_path / "predictions" / "day=2026-11-01" / "predictions_p20261101.parquet"
    )


# ----- a whole prune on SQLite -----------------------------------------------------------
def test_sqlite_prune_archives_then_deletes_old_days_only(sqlite_settings, tmp_path):
    engine = make_engine(sqlite_settings)
    today = partitions.today()
    old, older, recent = (today - dt.timedelta(days=d) for d in (4, 5, 2))
    seed(engine, {older: 7, old: 5, recent: 3, today: 2})
    seed_small_tables(
        engine,
        dt.datetime.now(UTC) - dt.timedelta(days=10),
        dt.datetime.now(UTC) - dt.timedelta(hours=1),
    )
    before = {(t, d): db_rows(engine, t, d) for t in arc.TABLES for d in (older, old)}

    the_plan = ops.plan(engine, dt.timedelta(days=3))
    assert the_plan.days == [older, old]  # recent and today stay
    assert {(p.table, p.rows) for p in the_plan.partitions if p.day == older} == {
        ("predictions", 7), ("prediction_batches", 1), ("shadow_predictions", 1)
    }  # fmt: skip
    assert {t.table: t.rows for t in the_plan.tables} == {
        "drift_counts": 1, "accuracy_estimates": 1, "scoring_runs": 1
    }  # fmt: skip
    assert db_rows(engine, "predictions", older)  # planning changed nothing

    archive = tmp_path / "archive"
    report = ops.prune(engine, the_plan, archive)
    assert all(p.dropped and p.exact for p in report.partitions)
    for (table, day), rows in before.items():
        path = archive / table / f"day={day}" / f"{partitions.partition_name(table, day)}.parquet"
        assert same_rows(file_rows(path), rows), (table, day)
        meta = pq.ParquetFile(path).schema_arrow.metadata
        assert meta[b"inferq.day"] == day.isoformat().encode()
        assert int(meta[b"inferq.rows"]) == len(rows)
        assert db_rows(engine, table, day) == {}
    shadow = archive / "shadow_predictions" / f"day={old}" / f"shadow_predictions_p{old:%Y%m%d}"
    meta = pq.ParquetFile(f"{shadow}.parquet").schema_arrow.metadata
    lineage = json.loads(meta[b"inferq.model_versions"])
    assert [(m["name"], m["version"], m["sha256"]) for m in lineage] == [
        ("m", 1, "sha-1"), ("m", 2, "sha-2")
    ]  # fmt: skip
    # pandas (pyarrow's hive discovery) reads a table's folder as one dataset, day included.
    import pandas as pd

    frame = pd.read_parquet(archive / "predictions")
    assert len(frame) == 12 and set(frame["day"].astype(str)) == {str(older), str(old)}

    assert len(db_rows(engine, "predictions", recent)) == 3
    assert len(db_rows(engine, "predictions", today)) == 2
    with engine.connect() as conn:
        runs = set(conn.execute(sa.select(schema.scoring_runs.c.run_id)).scalars())
        chunks = set(conn.execute(sa.select(schema.scoring_run_chunks.c.run_id)).scalars())
        drift = conn.execute(sa.select(sa.func.count()).select_from(schema.drift_counts))
        assert drift.scalar_one() == 1
    assert runs == chunks == {"old-running", "new-done", "new-running"}
    doc = report.to_dict()
    assert doc["dry_run"] is False and doc["totals"]["partitions"] == 6
    assert doc["days"][0]["partitions"][0]["archive"].endswith(".parquet")

    again = ops.prune(engine, ops.plan(engine, dt.timedelta(days=3)), archive)
    assert again.partitions == []  # nothing left: a rerun is a no-op
