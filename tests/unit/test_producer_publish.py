"""Producer publishing, checked on the wire with fakeredis (our own logic, no worker)."""

import json

import numpy as np
import pytest
from inferq.common.db import make_engine
from inferq.common.errors import EnqueueError, InvalidInput, ModelNotFound, TooManyRows
from inferq.models import registry
from inferq.producer import InferenceClient

from tests.unit.fakebroker import body, fake_client
from tests.unit.fakebroker import messages as _messages


@pytest.fixture
def client(sqlite_settings, regressor_model, monkeypatch):
    c = fake_client(monkeypatch, sqlite_settings, regressor_model.path, batch_size=4)
    yield c
    c.close()


def test_submit_splits_into_msgpack_messages_with_raw_float_bytes(client, regressor_model):
    x = np.asarray(regressor_model.x[:10])
    ids = client.submit("reg", x, keys=list(range(10)))
    msgs = _messages(client)
    assert len(ids) == 10 and len(set(ids)) == 10
    assert [m["headers"]["task"] for m in msgs] == ["inferq.score_batch"] * 3  # 4 + 4 + 2 rows
    for m in msgs:
        assert m["content-type"] == "application/x-msgpack"
        assert "pickle" not in m["content-type"]
        # Flower/logs see only the summary, never feature values.
        assert m["headers"]["kwargsrepr"].startswith("model=reg version=1 rows=")
        assert m["headers"]["argsrepr"] == "()"
    kwargs = body(msgs[1])
    assert isinstance(kwargs["x"], bytes) and kwargs["shape"] == [4, 10]
    np.testing.assert_array_equal(np.frombuffer(kwargs["x"], "<f8").reshape(4, 10), x[4:8])
    assert kwargs["job_ids"] == ids[4:8] and kwargs["keys"] == ["4", "5", "6", "7"]
    assert kwargs["row_offset"] == 4 and kwargs["version"] == 1


def test_bad_rows_are_enqueued_with_their_messages(client):
    rows = [[0.1] * 10, [0.1] * 9, [0.1] * 9 + ["x"]]
    client.submit("reg", rows)
    (msg,) = _messages(client)
    kwargs = body(msg)
    assert kwargs["err_rows"] == [1, 2]
    assert kwargs["err_msgs"] == [
        "row 1: expected 10 features, got 9",
        "row 2: column 9 has a non-numeric value 'x' (text)",
    ]


def test_submission_errors_raise_before_anything_is_sent(client):
    x = np.zeros((3, 10))
    with pytest.raises(ModelNotFound):
        client.submit("nope", x)
    with pytest.raises(ModelNotFound, match="version 7"):
        client.submit("reg", x, version=7)
    with pytest.raises(InvalidInput, match="0 rows"):
        client.submit("reg", np.zeros((0, 10)))
    with pytest.raises(InvalidInput, match="2 job ids for 3 rows"):
        client.submit("reg", x, job_ids=["a", "b"])
    with pytest.raises(InvalidInput, match="'a' appears more than once"):
        client.submit("reg", x, job_ids=["a", "b", "a"])
    with pytest.raises(InvalidInput, match="2 keys for 3 rows"):
        client.submit("reg", x, keys=[1, 2])
    client.settings = client.settings.model_copy(update={"max_submit_rows": 2})
    with pytest.raises(TooManyRows, match="exceeds the limit of 2 rows"):
        client.submit("reg", x)
    assert _messages(client) == []


def test_broker_failure_is_reported_not_swallowed(sqlite_settings, regressor_model):
    settings = sqlite_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, regressor_model.path, "reg", "production")
    with InferenceClient(settings, engine=engine) as client, pytest.raises(EnqueueError) as info:
        client.submit("reg", np.zeros((2, 10)))
    assert "could not enqueue 2 job(s)" in str(info.value)
    assert info.value.enqueued_job_ids == []


def test_alias_lookups_are_cached_for_the_configured_time(sqlite_settings, regressor_model):
    engine = make_engine(sqlite_settings)
    store = sqlite_settings.model_store_dir
    registry.register(engine, store, regressor_model.path, "reg", alias="production")
    registry.register(engine, store, regressor_model.path, "reg", force=True)
    cached = InferenceClient(sqlite_settings, engine=engine)
    fresh = InferenceClient(sqlite_settings.model_copy(update={"alias_cache_seconds": 0}),
                            engine=engine)  # fmt: skip
    assert cached.resolve("reg").version == fresh.resolve("reg").version == 1
    registry.promote(engine, "reg", 2)
    assert cached.resolve("reg").version == 1  # within alias_cache_seconds
    assert fresh.resolve("reg").version == 2  # 0 = look up every time
    assert cached.resolve("reg", version=2).version == 2  # pinned versions are exact
    cached._aliases.clear()  # TTL elapsed
    assert cached.resolve("reg").version == 2


def test_every_sent_batch_is_recorded_in_the_inflight_ledger(client, regressor_model):
    from inferq.common import inflight

    client.submit("reg", np.asarray(regressor_model.x[:10]))
    msgs = _messages(client)
    recorded = {k.decode() for k in client.fake.hkeys(inflight.BODIES)}
    payloads = [body(m) for m in msgs]
    assert recorded == {p["batch_id"] for p in payloads}
    assert client.fake.zcard(inflight.INDEX) == 3
    # What a re-send needs is there byte for byte, and each message carries its send time.
    first = payloads[0]
    rec = inflight.unpack(first["batch_id"], client.fake.hget(inflight.BODIES, first["batch_id"]))
    assert rec.payload == first and rec.queue == client.settings.online_queue
    queues = {v.decode() for v in client.fake.hvals(inflight.QUEUES)}
    assert queues == {client.settings.online_queue} and client.fake.hlen(inflight.QUEUES) == 3
    assert all(isinstance(m["headers"][inflight.SENT_HEADER], float) for m in msgs)


def test_a_failed_enqueue_leaves_nothing_to_resend(client, monkeypatch):
    from inferq.common import inflight

    def refuse(*_a, **_k):
        raise ConnectionError("broker went away")

    monkeypatch.setattr("inferq.producer.client.send_score", refuse)
    with pytest.raises(EnqueueError):
        client.submit("reg", np.zeros((6, 10)))
    assert client.fake.hlen(inflight.BODIES) == 0 and client.fake.zcard(inflight.INDEX) == 0
    assert client.fake.hlen(inflight.QUEUES) == 0


def test_stale_records_are_resent_only_when_no_longer_queued(client):
    import time

    from inferq.common import inflight

    client.submit("reg", np.zeros((6, 10)))  # two messages, both still queued
    later = time.time() + 3600
    assert inflight.stale(client.fake, later) == []  # the oldest queued is as old as them
    lost = client.fake.rpop(client.settings.online_queue)  # one vanishes (BRPOP + SIGKILL)
    lost_id = body(json.loads(lost))
    assert [r.batch_id for r in inflight.stale(client.fake, later)] == [lost_id["batch_id"]]
    assert inflight.stale(client.fake, time.time() - 3600) == []  # not old enough yet
    client.fake.delete(client.settings.online_queue)  # queue drained, both unanswered
    assert len(inflight.stale(client.fake, later)) == 2
    inflight.forget(client.fake, [lost_id["batch_id"]])  # answered
    assert len(inflight.stale(client.fake, later)) == 1
