"""Hostile or stray messages straight into the Redis queue: refused, never executed."""

import pickle
import time

import numpy as np
import pytest
from kombu import Connection, Exchange, Producer

from common.db import make_engine
from models import registry
from producer import InferenceClient

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
