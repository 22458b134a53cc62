"""Hostile or stray messages straight into the Redis queue: refused, never executed."""

import json
import pickle
import time

import numpy as np
import pytest
from inferq.common.db import make_engine
from inferq.models import registry
from inferq.producer import InferenceClient
from kombu import Connection, Exchange, Producer

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


class Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_and_unknown_task_messages_are_refused(pg_settings, regressor_model, tmp_path,
                                                      start_worker):  # fmt: skip
    engine = make_engine(pg_settings)
    registry.register(engine, pg_settings.model_store_dir, regressor_model.path, "reg",
                      "production")  # fmt: skip
    worker = start_worker(pg_settings, concurrency=1)
    marker = tmp_path / "pwned"
    queue = pg_settings.online_queue
    with Connection(pg_settings.broker_url) as conn:
        producer = Producer(conn.channel(), exchange=Exchange("inferq", type="direct"))
        # A task message whose body is a pickle that would run code when loaded.
        producer.publish(
            pickle.dumps(((Exploit(marker),), {}, {})), routing_key=queue,
            content_type="application/x-python-serialize", content_encoding="binary",
            headers={"task": "inferq.score_batch", "id": "evil-1", "argsrepr": "()"},
        )  # fmt: skip
        # A well-formed message for a task nobody registered.
        producer.publish(
            {"hello": "world"}, routing_key=queue, serializer="json",
            headers={"task": "inferq.not_a_task", "id": "stray-1"},
        )  # fmt: skip
    with InferenceClient(pg_settings, engine=engine) as client:
        ids = client.submit("reg", np.asarray(regressor_model.x[:20]))
        results = client.wait(ids, timeout=60)
    assert all(r.ok for r in results)  # the worker kept serving
    time.sleep(1)
    assert not marker.exists(), "a pickle message was deserialized"
    log = worker.output()
    assert "ContentDisallowed" in log or "Refusing to deserialize" in log
    assert "inferq.not_a_task" in log  # reported as unregistered, not run
    assert worker.proc.poll() is None
    engine.dispose()


def test_unwritable_results_are_retried_then_dead_lettered_and_replayed(
    pg_settings, regressor_model, start_worker
):
    """A write that fails for a non-transient reason is never acked away: after a few
    attempts the batch goes to dead_letters with its rows; `replay` scores it once fixed.
    A message whose job ids are unreadable is dead-lettered too, not dropped."""
    import subprocess
    import sys

    from inferq.common import contract
    from inferq.common.celery import create_celery
    from sqlalchemy import text

    from tests.conftest import settings_env
    from tests.integration.checker import wait_until_clean

    engine = make_engine(pg_settings)
    store = pg_settings.model_store_dir
    registry.register(engine, store, regressor_model.path, "reg", "production")
    registry.register(engine, store, regressor_model.path, "blocked", "production")
    with engine.begin() as conn:  # Postgres refuses every result row of model "blocked"
        conn.execute(text("""
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'refused by the test trigger'; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON predictions FOR EACH ROW
            WHEN (NEW.model_name = 'blocked') EXECUTE FUNCTION refuse();
        """))  # fmt: skip
    worker = start_worker(pg_settings, concurrency=1)
    x = np.asarray(regressor_model.x[:10])
    with InferenceClient(pg_settings, engine=engine) as client:
        blocked = client.submit("blocked", x)
        fine = client.submit("reg", x)
        assert all(r.ok for r in client.wait(fine, timeout=60))
        app = create_celery(pg_settings)
        app.send_task(contract.SCORE_BATCH, kwargs={"batch_id": "no-ids", "model": "reg"},
                      queue=pg_settings.online_queue)  # fmt: skip
        deadline = time.monotonic() + 60
        letters = {}
        while time.monotonic() < deadline and len(letters) < 2:
            with engine.connect() as conn:
                letters = {r.batch_id: r for r in conn.execute(text("SELECT * FROM dead_letters"))}
            time.sleep(0.5)
        app.close()
        assert "no-ids" in letters and len(letters) == 2
        unwritable = next(r for b, r in letters.items() if b != "no-ids")
        assert unwritable.reason.startswith("results could not be written after 3 attempts:")
        assert "refused by the test trigger" in unwritable.reason
        assert unwritable.n_rows == 10 and unwritable.model_name == "blocked"
        assert "job ids unreadable" in letters["no-ids"].reason
        assert client.results(blocked) == []  # no row yet, but nothing lost: the letter has them
        with engine.begin() as conn:  # the operator fixes the cause...
            conn.execute(text("DROP TRIGGER refuse ON predictions"))
        env = settings_env(pg_settings)
        listed = subprocess.run([sys.executable, "-m", "inferq", "dead-letters", "list", "--json"],
                                env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 2
        replayed = subprocess.run(  # ...and replays the batch
            [sys.executable, "-m", "inferq", "dead-letters", "replay", unwritable.batch_id],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr
        assert "sent (10 rows" in replayed.stderr
        assert all(r.ok for r in client.wait(blocked, timeout=60))
    counts, _ = wait_until_clean(engine, blocked + fine, timeout=5)
    assert counts.clean
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM dead_letters")) == 1  # no-ids stays
    assert worker.output().count("results not written") == 2  # attempts 1 and 2 retried
    engine.dispose()
