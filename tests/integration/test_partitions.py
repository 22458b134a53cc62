"""Daily partitions on the real PostgreSQL: created when needed, and one row per job id across
days (redelivery, re-submission, rescore, two writers at once), migration of a populated
database, and the probabilities of binary classifiers rebuilt from the score."""

import datetime as dt
import threading

import numpy as np
import pytest
from alembic import command
from inferq.common import partitions
from inferq.common.contract import Batch, RowError
from inferq.common.db import make_engine
from inferq.common.schema import prediction_batches, predictions
from inferq.producer.results import fetch_results
from inferq.workers.inference import ScoredBatch
from inferq.workers.results import write_group, write_results
from sqlalchemy import func, select, text

from inferq import migrations

pytestmark = pytest.mark.integration


def _at(day: str, clock: str = "12:00:00") -> float:
    return dt.datetime.fromisoformat(f"{day}T{clock}+00:00").timestamp()


def _scored(job_ids, *, submitted_at, label="x", ok=True, **batch_kw) -> ScoredBatch:
    n = len(job_ids)
    batch = Batch(model="m", version=1, job_ids=list(job_ids), x=np.zeros((n, 1)),
                  submitted_at=submitted_at, **batch_kw)  # fmt: skip
    good = np.full(n, ok)
    return ScoredBatch(
        batch=batch, model_name="m", model_version=1, ok=good,
        errors={} if ok else {i: RowError(f"row {i}: broken", "internal") for i in range(n)},
        labels=[label if ok else None] * n, scores=np.where(good, 0.5, np.nan),
        proba=None, classes=None,
    )  # fmt: skip


def _rows(engine, **where):
    stmt = select(predictions.c.job_id, predictions.c.day, predictions.c.label,
                  predictions.c.status).order_by(predictions.c.job_id)  # fmt: skip
    for k, v in where.items():
        stmt = stmt.where(predictions.c[k] == v)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


def _days(engine, table="predictions"):
    with engine.connect() as conn:
        return [p.day for p in partitions.list_partitions(conn, table)]


@pytest.fixture
def engine(pg_settings):
    engine = make_engine(pg_settings)
    yield engine
    engine.dispose()


def test_writes_across_midnight_create_their_partitions_and_land_by_message_day(engine):
    # Far in the future: no partition exists for these days yet.
    before, after = _at("2031-06-30", "23:59:59.5"), _at("2031-07-01", "00:00:00.5")
    assert dt.date(2031, 6, 30) not in _days(engine)
    write_results(engine, _scored(["late"], submitted_at=before), "w", received_at=after)
    group = [_scored(["early"], submitted_at=after), _scored(["late2"], submitted_at=before)]
    write_group(engine, group, "w", received_at=after)
    assert _rows(engine) == [
        ("early", dt.date(2031, 7, 1), "x", "ok"),
        ("late", dt.date(2031, 6, 30), "x", "ok"),
        ("late2", dt.date(2031, 6, 30), "x", "ok"),
    ]
    for table in partitions.PARTITIONED:  # the ledger's and shadows' partitions came along
        assert {dt.date(2031, 6, 30), dt.date(2031, 7, 1)} <= set(_days(engine, table))
    with engine.connect() as conn:  # the rows really are in the day's own partition
        n = conn.execute(text("SELECT count(*) FROM predictions_p20310630")).scalar()
    assert n == 2


def test_ensure_ahead_follows_a_simulated_clock_and_is_idempotent(engine):
    created = partitions.ensure_ahead(engine, ahead=2, now=dt.date(2032, 2, 28))
    want = [dt.date(2032, 2, 27) + dt.timedelta(days=i) for i in range(4)]  # 27th .. 1 March
    assert [d for d in _days(engine) if d.year == 2032] == want
    assert len(created) == 4 * len(partitions.PARTITIONED)
    assert partitions.ensure_ahead(engine, ahead=2, now=dt.date(2032, 2, 28)) == []
    # The next day's round adds one day per table.
    assert len(partitions.ensure_ahead(engine, ahead=2, now=dt.date(2032, 2, 29))) == 3


def test_a_redelivery_after_midnight_writes_nothing(engine):
    scored = _scored([f"j{i}" for i in range(50)], submitted_at=_at("2031-03-01", "23:59:59"))
    assert write_results(engine, scored, "w1", received_at=0).n_written == 50
    # Scored again after midnight (the first worker died before acking): same message day.
    again = write_results(engine, scored, "w2", received_at=_at("2031-03-02", "00:10:00"))
    assert (again.n_written, again.duplicate_batch) == (0, True)
    assert len(_rows(engine)) == 50 and {r[1] for r in _rows(engine)} == {dt.date(2031, 3, 1)}


def test_caller_ids_submitted_again_on_a_later_day_keep_their_first_row(engine):
    ids = ["order-1", "order-2"]
    write_results(engine, _scored(ids, submitted_at=_at("2031-04-01"), label="first",
                                  ids_given=True), "w", received_at=0)  # fmt: skip
    later = _scored([*ids, "order-3"], submitted_at=_at("2031-04-09"), label="second",
                    ids_given=True)  # fmt: skip
    assert write_results(engine, later, "w", received_at=0).n_written == 1
    assert _rows(engine) == [
        ("order-1", dt.date(2031, 4, 1), "first", "ok"),
        ("order-2", dt.date(2031, 4, 1), "first", "ok"),
        ("order-3", dt.date(2031, 4, 9), "second", "ok"),
    ]


def test_a_rescore_on_a_later_day_replaces_the_error_row_where_it_lives(engine):
    write_results(engine, _scored(["e1", "e2"], submitted_at=_at("2031-05-01"), ok=False),
                  "w", received_at=0)  # fmt: skip
    write_results(engine, _scored(["ok1"], submitted_at=_at("2031-05-01"), label="kept"),
                  "w", received_at=0)  # fmt: skip
    rescore = _scored(["e1", "e2", "ok1"], submitted_at=_at("2031-05-20"), label="fixed",
                      rescore=True, ids_given=True)  # fmt: skip
    assert write_results(engine, rescore, "w", received_at=0).n_written == 2
    assert _rows(engine) == [
        ("e1", dt.date(2031, 5, 1), "fixed", "ok"),
        ("e2", dt.date(2031, 5, 1), "fixed", "ok"),
        ("ok1", dt.date(2031, 5, 1), "kept", "ok"),  # an ok row is never replaced
    ]


def test_two_writers_of_one_caller_id_on_two_days_at_once_leave_one_row(engine):
    """Without the bucket locks both would miss each other's uncommitted row on another day."""
    ids = [f"c{i}" for i in range(200)]
    partitions.ensure(engine, [dt.date(2031, 8, 1), dt.date(2031, 8, 2)])
    parts = [
        _scored(ids, submitted_at=_at("2031-08-01", "23:59:59"), label="a", ids_given=True),
        _scored(ids, submitted_at=_at("2031-08-02", "00:00:01"), label="b", ids_given=True),
    ]
    start = threading.Barrier(2)
    written: list[int] = []

    def write(part):
        start.wait()
        written.append(write_results(engine, part, "w", received_at=0).n_written)

    threads = [threading.Thread(target=write, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    rows = _rows(engine)
    assert sorted(written) == [0, 200] and len(rows) == 200
    assert len({(r[1], r[2]) for r in rows}) == 1  # all from one writer


def test_a_resumed_runs_chunk_lands_on_the_run_day_and_is_a_noop(engine):
    first = _scored(["t:1", "t:2"], submitted_at=_at("2031-09-01", "23:00:00"), run_id="r",
                    day="2031-09-01")  # fmt: skip
    write_results(engine, first, "w", received_at=0)
    # Resumed two days later: the chunk is sent again with the run's day.
    again = _scored(["t:1", "t:2"], submitted_at=_at("2031-09-03"), run_id="r", day="2031-09-01")
    again.batch.batch_id = first.batch.batch_id
    assert write_results(engine, again, "w", received_at=0).duplicate_batch
    other_chunk = _scored(["t:2", "t:3"], submitted_at=_at("2031-09-03"), run_id="r",
                          day="2031-09-01")  # fmt: skip
    assert write_results(engine, other_chunk, "w", received_at=0).n_written == 1
    assert {r[1] for r in _rows(engine)} == {dt.date(2031, 9, 1)} and len(_rows(engine)) == 3


def test_binary_probabilities_are_not_stored_but_read_back_whole(pg_settings, engine):
    from inferq.common.schema import model_versions

    with engine.begin() as conn:
        conn.execute(model_versions.insert().values(
            name="m", version=1, sha256="0" * 64, sklearn_version="1.9", task="classifier",
            estimator="LogisticRegression", classes=["no", "yes"], n_features=1, has_proba=1,
            artifact="m.joblib", size_bytes=1, created_at=dt.datetime.now(dt.UTC)))  # fmt: skip
    batch = Batch(model="m", version=1, job_ids=["p1", "p2"], x=np.zeros((2, 1)))
    proba = np.array([[0.25, 0.75], [0.875, 0.125]])
    scored = ScoredBatch(batch=batch, model_name="m", model_version=1, ok=np.ones(2, bool),
                         errors={}, labels=["yes", "no"], scores=proba[:, 1], proba=proba,
                         classes=["no", "yes"])  # fmt: skip
    write_results(engine, scored, "w", received_at=0)
    with engine.connect() as conn:
        stored = conn.execute(select(predictions.c.probabilities)).scalars().all()
        full = dict(conn.execute(text("SELECT job_id, probabilities FROM predictions_full")).all())
    assert stored == [None, None]
    assert full == {"p1": {"no": 0.25, "yes": 0.75}, "p2": {"no": 0.875, "yes": 0.125}}
    got = fetch_results(engine, ["p1", "p2"])
    assert got["p1"].probabilities == {"no": 0.25, "yes": 0.75}
    assert got["p2"].probabilities == {"no": 0.875, "yes": 0.125}


def test_upgrade_of_a_populated_database_keeps_every_row(pg_url, tmp_path):
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, database_url=pg_url)
    cfg = migrations.alembic_config(settings)
    command.upgrade(cfg, "0008")
    engine = make_engine(settings)
    day1, day2 = (
        dt.datetime(2026, 1, 5, 23, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 6, 1, 0, tzinfo=dt.UTC),
    )
    with engine.begin() as conn:
        for i in range(300):
            at = day1 if i % 3 else day2
            conn.execute(text(
                "INSERT INTO predictions (job_id, run_id, key, model_name, model_version, status,"
                " label, score, probabilities, submitted_at, scored_at, worker, batch_id)"
                " VALUES (:j, 'r', :k, 'm', 1, 'ok', 'a', 0.5, '{\"a\": 0.5, \"b\": 0.5}', :t, :t,"
                " 'w', :b)"), {"j": f"j{i}", "k": f"k{i}", "t": at, "b": f"b{i % 3}"})  # fmt: skip
        for b, at in (("b0", day2), ("b1", day1), ("b2", day1)):
            conn.execute(text(
                "INSERT INTO prediction_batches (batch_id, run_id, model_name, model_version,"
                " worker, n_rows, n_ok, n_error, n_written, submitted_at, received_at,"
                " committed_at, decode_ms, predict_ms, write_ms) VALUES (:b, 'r', 'm', 1, 'w',"
                " 100, 100, 0, 100, :t, :t, :t, 1, 1, 1)"), {"b": b, "t": at})  # fmt: skip
        conn.execute(text(
            "INSERT INTO feedback (model_name, ref_kind, ref, label, loaded_at)"
            " VALUES ('m', 'key', 'k1', 'a', now())"))  # fmt: skip
    engine.dispose()
    command.upgrade(cfg, "head")
    command.check(cfg)
    engine = make_engine(settings)
    with engine.connect() as conn:
        by_day = dict(conn.execute(
            select(predictions.c.day, func.count()).group_by(predictions.c.day)).all())  # fmt: skip
        assert by_day == {dt.date(2026, 1, 5): 200, dt.date(2026, 1, 6): 100}
        assert conn.execute(select(func.count()).select_from(prediction_batches)).scalar() == 3
        row = conn.execute(select(predictions).where(predictions.c.job_id == "j1")).one()
        assert (row.key, row.probabilities, row.run_id) == ("k1", {"a": 0.5, "b": 0.5}, "r")
        labelled = conn.execute(text("SELECT count(*) FROM prediction_feedback")).scalar()
        assert labelled == 1  # the views came back, on the new tables
    assert {dt.date(2026, 1, 5), dt.date(2026, 1, 6)} <= set(_days(engine))
    # New writes go on working, and a job id from before the upgrade is still unique.
    later = _scored(["j1", "new"], submitted_at=_at("2026-01-20"), ids_given=True)
    assert write_results(engine, later, "w", received_at=0).n_written == 1
    engine.dispose()


def test_a_least_privilege_role_writes_into_a_day_no_partition_exists_for(pg_settings, engine):
    """Workers as README's `inferq_app` role: no ownership, yet a missing day's partition is
    created (by the migration's SECURITY DEFINER function) and written, with the grants of
    its parent."""
    import uuid

    from sqlalchemy.engine import make_url

    role = f"inferq_app_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        database = conn.execute(text("SELECT current_database()")).scalar_one()
        for sql in (
            f"CREATE ROLE {role} LOGIN",
            f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO {role}',
            f"GRANT USAGE ON SCHEMA public TO {role}",
            f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT EXECUTE ON FUNCTION inferq_create_partition(text, date) TO {role}",
        ):
            conn.execute(text(sql))
    url = make_url(pg_settings.effective_database_url).set(username=role, password=None)
    app = make_engine(pg_settings.model_copy(update={"database_url": str(url)}))
    try:
        assert dt.date(2033, 1, 1) not in _days(engine)
        scored = _scored(["lp1", "lp2"], submitted_at=_at("2033-01-01"))
        assert write_results(app, scored, "w", received_at=0).n_written == 2
        again = _scored(["lp1"], submitted_at=_at("2033-01-02"), ids_given=True)  # path 3
        assert write_results(app, again, "w", received_at=0).n_written == 0
        with app.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM predictions_p20330101")).scalar() == 2
        # The role itself may not create tables.
        with pytest.raises(Exception, match=r"must be owner|permission denied"), app.begin() as c:
            c.execute(text("CREATE TABLE predictions_p20330201 (LIKE predictions)"))
    finally:
        app.dispose()
        with engine.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
