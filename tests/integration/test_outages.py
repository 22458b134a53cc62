"""Service outages mid-run on throwaway servers: Postgres restarted or down, Redis restarted.

Each scenario runs real processes (its own `postgres` or `redis-server`, a `celery worker`
prefork) and ends with the lost/duplicated/unexpected checker. Timings are the fault tests'
short ones (6 s hard limit, 5 s soft limit, 8 s visibility timeout, 2 s restore sweep).
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from inferq.common.db import make_engine
from inferq.common.errors import EnqueueError
from inferq.models import registry
from inferq.producer import InferenceClient
from sqlalchemy import text

from inferq import migrations
from tests.conftest import make_settings
from tests.integration.checker import check, committed_batches, wait_for_batches, wait_until_clean
from tests.integration.instances import (
    ThrowawayPostgres,
    throwaway_postgres,
    throwaway_redis,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

# consumer_stall_seconds: a consumer that stops fetching after the Redis restart (a Celery
# bug, seen once in CI) is restarted by the watchdog within the test's wait.
# inflight_*: a message Redis lost mid-fetch when it went down is re-sent within seconds.
FAST = {"visibility_timeout": 8, "task_time_limit": 6, "unacked_restore_interval": 2,
        "consumer_stall_seconds": 10, "inflight_stale_after": 12,
        "reconcile_interval": 1}  # fmt: skip
# Celery's log line for a task that called self.retry(): the message was published again
# and this delivery acked (a requeue, as opposed to a retry inside the task).
REQUEUED = re.compile(r"retry: Retry in \d+(\.\d+)?s: .*database unavailable", re.I)
RETRIED = re.compile(r"retr(y|ied|ying).*database unavailable", re.I)


@pytest.fixture
def pg_server():
    """A private PostgreSQL server this test may restart and stop."""
    with throwaway_postgres() as server:
        yield server


@pytest.fixture
def redis_server():
    """A private Redis server (AOF, appendfsync always) this test may stop and start."""
    with throwaway_redis() as server:
        yield server


def _pipeline(tmp_path, start_worker, database_url: str, broker_url: str, model_file, batch: int):
    """Migrated fast-recovery settings, ``model_file`` registered as production "m", a worker."""
    settings = make_settings(
        tmp_path, database_url=database_url, broker_url=broker_url, batch_size=batch, **FAST
    )
    migrations.upgrade(settings)
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, model_file.path, "m", "production")
    return settings, engine, start_worker(settings, concurrency=2)


def _rows(model_file, n: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = model_file.x
    return base.iloc[rng.integers(0, len(base), n)] * rng.normal(1, 0.05, (n, base.shape[1]))


def _error_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM predictions WHERE status <> 'ok'")).scalar()


@contextlib.contextmanager
def _postgres_down(pg: ThrowawayPostgres, worker, at_least: float, evidence: re.Pattern[str]):
    """Postgres down for ``at_least`` seconds and until the worker log shows ``evidence``."""
    started = time.monotonic()
    pg.stop("fast")
    yield
    wait_until(
        f"worker log matches {evidence.pattern!r}",
        lambda: evidence.search(worker.output()) is not None,
        timeout=60,
    )
    # NOTE: the length of the outage is the fault itself, not a wait for a result.
    time.sleep(max(0.0, at_least - (time.monotonic() - started)))
    pg.start()
    print(f"Postgres was down {time.monotonic() - started:.1f}s")


def test_postgres_restart_and_outage_mid_run_lose_and_duplicate_nothing(
    pg_server, redis_url, binary_model, start_worker, tmp_path
):
    """Scenario 4: `pg_ctl restart -m fast` mid-run, then a 6 s stop while jobs keep coming."""
    db = pg_server.create_database("q")
    settings, engine, worker = _pipeline(tmp_path, start_worker, db, redis_url, binary_model, 500)
    with InferenceClient(settings, engine=engine) as client:
        accepted = client.submit("m", _rows(binary_model, 40_000))  # 80 messages
        assert wait_for_batches(engine, 8) >= 8
        pg_server.restart("fast")  # open transactions rolled back, every connection closed
        at_restart = committed_batches(engine)
        assert at_restart < 80, "the run finished before the restart; nothing was tested"
        assert wait_for_batches(engine, at_restart + 4) >= at_restart + 4  # writing again
        # The producer needs only Redis once the version is resolved: keep submitting while
        # Postgres is down, so the workers certainly meet the outage with batches in hand.
        with _postgres_down(pg_server, worker, at_least=6, evidence=RETRIED):
            accepted += client.submit("m", _rows(binary_model, 20_000, seed=4), version=1)
        counts, waited = wait_until_clean(engine, accepted, timeout=90)
    print(f"restart at {at_restart}/80 messages committed; clean {waited:.1f}s after the outage")
    assert counts.clean and counts.rows == 60_000
    assert _error_rows(engine) == 0  # an outage is retried, never answered with error rows
    engine.dispose()


def test_database_down_longer_than_the_retry_budget_requeues_and_commits_once(
    pg_server, redis_url, regressor_model, start_worker, tmp_path
):
    """Scenario 6: Postgres down for soft time limit + 10 s while batches are processed."""
    db = pg_server.create_database("q")
    settings, engine, worker = _pipeline(
        tmp_path, start_worker, db, redis_url, regressor_model, 100
    )
    x = np.asarray(regressor_model.x[:300])
    with InferenceClient(settings, engine=engine) as client:
        client.resolve("m")  # cached: the submit below does not need the database
        outage = settings.soft_time_limit + 10
        with _postgres_down(pg_server, worker, at_least=outage, evidence=REQUEUED):
            accepted = client.submit("m", x, version=1)  # 3 messages, all met by the outage
        counts, waited = wait_until_clean(engine, accepted, timeout=90)
        results = client.wait(accepted, timeout=5)
    log = worker.output()
    print(
        f"{len(REQUEUED.findall(log))} requeue(s) logged; clean {waited:.1f}s after the "
        "database came back"
    )
    assert counts.clean and counts.rows == 300
    assert all(r.ok for r in results)  # retried until written, not turned into error rows
    np.testing.assert_allclose(
        [r.score for r in results], regressor_model.model.predict(x), rtol=0, atol=1e-12
    )
    with engine.connect() as conn:  # each message committed exactly once
        ledger = conn.execute(
            text("SELECT count(*), count(DISTINCT batch_id) FROM prediction_batches")
        ).one()
        letters = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar()
    assert tuple(ledger) == (3, 3) and letters == 0
    assert "Hard time limit" not in log and "WorkerLostError" not in log
    engine.dispose()


@pytest.mark.parametrize("crash", [False, True], ids=["shutdown", "sigkill"])
def test_redis_restart_mid_run_every_accepted_job_is_scored(
    crash, redis_server, pg_url, binary_model, start_worker, tmp_path
):
    """Scenario 5: Redis stopped (SHUTDOWN, or SIGKILL) and started on the same port and AOF.

    Accepted = ids ``submit`` returned, plus ``EnqueueError.enqueued_job_ids``. A submit
    that raised may still have reached Redis (a reply lost with the connection, or a
    publish retried inside kombu): its jobs are *not accepted* — the error says so and asks
    the caller to submit them again — yet they may be scored. So before the resubmission the
    right assertion is: nothing accepted lost or duplicated, and every unexpected row
    belongs to a refused job. After resubmitting the refused jobs with the same ids (what the
    error asks), the checker must be clean over all of them.
    """
    redis_db = f"{redis_server.url}/0"
    settings, engine, worker = _pipeline(
        tmp_path, start_worker, pg_url, redis_db, binary_model, 500
    )
    client = InferenceClient(settings, engine=engine)
    accepted: list[str] = []
    refused: list[str] = []
    errors: list[EnqueueError] = []

    def submit(wave: str, n: int) -> None:
        ids = [f"{wave}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
        try:
            accepted.extend(client.submit("m", _rows(binary_model, n), job_ids=ids))
        except EnqueueError as exc:
            errors.append(exc)
            accepted.extend(exc.enqueued_job_ids)
            refused.extend(sorted(set(ids) - set(exc.enqueued_job_ids)))

    for wave in range(20):
        submit(f"before{wave}", 2000)  # 80 messages
    assert wait_for_batches(engine, 8) >= 8
    redis_server.stop(kill=crash)
    at_stop = committed_batches(engine)
    assert at_stop < 80, "the run finished before Redis stopped; nothing was tested"
    started = time.monotonic()
    submit("down", 1000)
    refused_in = time.monotonic() - started
    assert len(errors) == 1, "a submit while Redis is down must raise EnqueueError"
    message = str(errors[0])
    assert message.startswith("could not enqueue 1000 job(s): ")
    assert "Connection refused" in message or "Error 111" in message
    assert message.endswith("They were not accepted; submit them again.")
    assert errors[0].enqueued_job_ids == [] and len(refused) == 1000
    redis_server.start()
    for wave in range(10):
        submit(f"after{wave}", 2000)  # the producer reconnects by itself
    assert len(errors) == 1, f"a submit failed after Redis came back: {errors[1:]}"
    counts, waited = wait_until_clean(engine, accepted, timeout=90)
    print(
        f"Redis {'SIGKILLed' if crash else 'shut down'} at {at_stop}/80 messages; "
        f"refused submit raised after {refused_in:.1f}s; clean {waited:.1f}s after restart"
    )
    assert counts.lost == counts.duplicated == 0 and counts.rows >= 60_000
    widened = check(engine, accepted + refused)  # unexpected rows are refused jobs only
    assert widened.unexpected == widened.duplicated == 0
    print(f"refused jobs scored anyway (not accepted, no harm): {1000 - widened.lost}")
    accepted += client.submit("m", _rows(binary_model, 1000), job_ids=refused)
    final, _ = wait_until_clean(engine, accepted, timeout=60)
    assert final.clean and final.rows == 61_000
    assert "Connection to broker lost" in worker.output()  # the worker did see the outage
    assert worker.proc.poll() is None
    client.close()
    engine.dispose()


def test_a_write_the_database_always_refuses_is_retried_then_dead_lettered(
    pg_url, redis_url, regressor_model, start_worker, tmp_path
):
    """A non-transient write error (here a trigger raising check_violation for one batch) is
    requeued a few times, then dead-lettered (payload kept, rows recoverable) and answered
    with error rows; the batches around it are written."""
    import msgpack

    settings, engine, worker = _pipeline(
        tmp_path, start_worker, pg_url, redis_url, regressor_model, 100
    )
    with engine.begin() as conn:  # stands for a constraint the results always violate
        conn.execute(text(REFUSE_POISON))
    x = np.asarray(regressor_model.x[:5])
    with InferenceClient(settings, engine=engine) as client:
        before = client.submit("m", x)
        doomed = client.submit("m", x, keys=["a", "b", "poison", "c", "d"])
        after = client.submit("m", x)
        counts, waited = wait_until_clean(engine, before + doomed + after, timeout=60)
        results = {r.job_id: r for r in client.wait(before + doomed + after, timeout=5)}
    print(f"dead-lettered and answered in {waited:.1f}s")
    assert counts.clean
    assert all(results[j].ok for j in before + after)
    (message,) = {results[j].error for j in doomed}
    assert message.startswith(
        f"dead-lettered: results could not be written after {settings.max_deliveries} "
        "attempts: CheckViolation: key 'poison' refused"
    )
    with engine.connect() as conn:
        (letter,) = conn.execute(text("SELECT * FROM dead_letters")).all()
    assert (letter.n_rows, letter.model_name) == (5, "m")
    kept = msgpack.unpackb(letter.payload, raw=False)  # the rows are recoverable
    assert kept["job_ids"] == doomed and kept["keys"][2] == "poison"
    np.testing.assert_array_equal(np.frombuffer(kept["x"], "<f8").reshape(5, 10), x)
    assert worker.output().count("results not written") == settings.max_deliveries - 1


REFUSE_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key = 'poison' AND NEW.status = 'ok' THEN
        RAISE EXCEPTION 'key ''poison'' refused' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON predictions
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""
