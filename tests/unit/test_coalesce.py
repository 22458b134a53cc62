"""Client-side coalescing: concurrent submits share messages, and nothing is mixed up or lost."""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from inferq.common import contract, inflight
from inferq.common.contract import Batch
from inferq.common.errors import EnqueueError
from inferq.models import registry
from inferq.producer import InferenceClient, coalesce

from tests.unit.fakebroker import fake_client, payloads

THREADS, PER_THREAD = 16, 50


@pytest.fixture
def make(sqlite_settings, regressor_model, monkeypatch):
    """Factory: make(**overrides) -> a fake-broker client (closed at teardown)."""
    made = []

    def _make(**kw):
        made.append(fake_client(monkeypatch, sqlite_settings, regressor_model.path, **kw))
        return made[-1]

    yield _make
    for c in made:
        c.close()


def _matrix(p):
    return np.frombuffer(p["x"], "<f8").reshape(p["shape"])


def _by_job(msgs):
    """job id -> (payload, row index in that message); fails on a job id seen twice."""
    seen = Counter(j for p in msgs for j in p["job_ids"])
    assert not [j for j, n in seen.items() if n > 1], "a job id was sent twice"
    return {j: (p, i) for p in msgs for i, j in enumerate(p["job_ids"])}


def _row(t, i):
    """A row no other (thread, call) sends: mix-ups show."""
    return [float(t), float(i)] + [t * 1000.0 + i] * 8


def test_concurrent_single_row_submits_share_messages_without_mix_ups(make):
    client = make(batch_size=100, linger_ms=10)
    sent: dict[str, tuple[list, str | None, str | None]] = {}  # job id -> (row, key, error)
    lock = threading.Lock()

    def caller(t):
        futures = []
        for i in range(PER_THREAD):
            row: list = _row(t, i)
            key = f"k{t}-{i}" if (t + i) % 3 else None  # some pieces with keys, some without
            error = None
            if i % 7 == 3:  # a bad value: accepted, answered with the producer's error
                row[4] = "oops"
                error = "row 0: column 4 has a non-numeric value 'oops' (text)"
            keys = None if key is None else [key]
            if t % 2:  # half the threads block in submit, half fire submit_async
                ids = client.submit("reg", [row], keys=keys)
            else:
                futures.append((client.submit_async("reg", [row], keys=keys), row, key, error))
                continue
            with lock:
                sent[ids[0]] = (row, key, error)
        for future, row, key, error in futures:
            (job,) = future.result(timeout=10)
            with lock:
                sent[job] = (row, key, error)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(caller, range(THREADS)))

    msgs = payloads(client)
    assert len(sent) == THREADS * PER_THREAD
    assert len(msgs) <= 100, f"{len(msgs)} messages for {len(sent)} submits"
    assert all(p["shape"][0] <= 100 and p["row_offset"] == 0 for p in msgs)
    where = _by_job(msgs)
    assert where.keys() == sent.keys()
    for job, (row, key, error) in sent.items():
        p, i = where[job]
        got = _matrix(p)[i]
        errors = dict(zip(p["err_rows"], p["err_msgs"], strict=True))
        assert errors.get(i) == error
        if error is None:
            np.testing.assert_array_equal(got, np.asarray(row, dtype=float))
        else:
            assert np.isnan(got).all()  # the producer's placeholder for a bad row
        assert (p["keys"][i] if p["keys"] is not None else None) == key


def test_models_and_versions_are_never_merged(make, regressor_model):
    client = make(batch_size=1000, linger_ms=20)
    store = client.settings.model_store_dir
    registry.register(client.engine, store, regressor_model.path, "reg", force=True)  # reg@2
    registry.register(client.engine, store, regressor_model.path, "other", alias="production")
    targets = [("reg", None), ("reg", 2), ("other", None)]
    expected: dict[str, tuple[str, int]] = {}
    lock = threading.Lock()

    def caller(t):
        for i in range(20):
            model, version = targets[(t + i) % 3]
            future = client.submit_async(model, [_row(t, i)], version=version)
            ids = future.result(timeout=10)
            with lock:
                expected[ids[0]] = (model, version or 1)

    with ThreadPoolExecutor(9) as pool:
        list(pool.map(caller, range(9)))
    msgs = payloads(client)
    assert len(msgs) < len(expected)  # merging did happen
    for p in msgs:
        assert {expected[j] for j in p["job_ids"]} == {(p["model"], p["version"])}
    assert sum(len(p["job_ids"]) for p in msgs) == len(expected) == 180


def test_linger_zero_sends_one_message_per_call_in_the_caller_thread(make):
    client = make(linger_ms=0)
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: client.submit("reg", [_row(0, i)]), range(20)))
    future = client.submit_async("reg", [_row(1, 1)])
    assert future.done() and len(future.result()) == 1  # published before returning
    assert len(payloads(client)) == 21
    assert client._coalescer is None  # no thread was started
    assert sorted(j for p in payloads(client) for j in p["job_ids"]) == sorted(
        [i[0] for i in ids] + future.result()
    )


def test_messages_never_exceed_batch_size_and_big_submits_still_split(make):
    client = make(batch_size=4, linger_ms=20)
    sizes = [1, 3, 2, 4, 1, 10, 3, 2, 1, 1, 6, 2]
    with ThreadPoolExecutor(len(sizes)) as pool:
        futures = list(
            pool.map(lambda n: client.submit_async("reg", np.full((n, 10), float(n))), sizes)
        )
    ids = [f.result(timeout=10) for f in futures]
    msgs = payloads(client)
    assert all(1 <= p["shape"][0] <= 4 for p in msgs)
    assert len(msgs) < len(sizes) + 2  # fewer than one per call (plus the splits)
    where = _by_job(msgs)
    for n, job_ids in zip(sizes, ids, strict=True):
        assert len(job_ids) == n
        assert all(_matrix(where[j][0])[where[j][1]][0] == n for j in job_ids)


def test_broker_failure_fails_each_caller_with_its_own_jobs(make, monkeypatch):
    client = make(linger_ms=20, batch_size=100)

    def refuse(*_a, **_k):
        raise ConnectionError("broker went away")

    monkeypatch.setattr("inferq.producer.client.send_score", refuse)
    futures = [client.submit_async("reg", np.zeros((n, 10))) for n in (1, 2, 3)]
    for n, future in zip((1, 2, 3), futures, strict=True):
        with pytest.raises(EnqueueError, match=f"could not enqueue {n} job") as info:
            future.result(timeout=10)
        assert info.value.enqueued_job_ids == []
        assert isinstance(info.value.__cause__, ConnectionError)
    assert client.fake.hlen(inflight.BODIES) == 0 and client.fake.zcard(inflight.INDEX) == 0
    assert payloads(client) == []


def test_a_split_submit_reports_which_of_its_messages_got_through(make, monkeypatch):
    from inferq.common.celery import send_score

    client = make(linger_ms=20, batch_size=4)
    calls = []

    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("blip")
        send_score(*a, **k)

    monkeypatch.setattr("inferq.producer.client.send_score", second_fails)
    future = client.submit_async("reg", np.zeros((10, 10)))  # messages of 4, 4 and 2 rows
    with pytest.raises(EnqueueError, match="could not enqueue 4 job") as info:
        future.result(timeout=10)
    sent = [j for p in payloads(client) for j in p["job_ids"]]
    assert sorted(info.value.enqueued_job_ids) == sorted(sent) and len(sent) == 6
    assert client.fake.hlen(inflight.BODIES) == 2  # only what was sent stays recorded


def test_close_publishes_what_is_pending(make):
    client = make(linger_ms=60_000)  # would wait a minute on its own
    futures = [client.submit_async("reg", [_row(0, i)]) for i in range(3)]
    time.sleep(0.05)
    assert not any(f.done() for f in futures) and payloads(client) == []
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 5
    assert [len(f.result(timeout=0)) for f in futures] == [1, 1, 1]
    (msg,) = payloads(client)
    assert msg["job_ids"] == [f.result()[0] for f in futures]


def test_a_bug_in_the_flush_thread_fails_every_pending_future(make, monkeypatch):
    client = make(linger_ms=20)

    def broken(_pieces):
        raise RuntimeError("bug")

    fixed = coalesce.merge
    monkeypatch.setattr(coalesce, "merge", broken)
    futures = [client.submit_async("reg", [_row(0, i)]) for i in range(3)]
    for f in futures:
        with pytest.raises(EnqueueError, match="RuntimeError: bug"):
            f.result(timeout=10)
    monkeypatch.setattr(coalesce, "merge", fixed)
    assert len(client.submit("reg", [_row(0, 9)])) == 1  # a new flush thread took over


def test_merge_concatenates_rows_keys_and_errors():
    a = Batch("m", 1, ["a1", "a2"], np.ones((2, 3)), keys=["x", "y"], row_errors={1: "row 1: e"},
              submitted_at=20.0, row_offset=4, run_id="r")  # fmt: skip
    b = Batch("m", 1, ["b1"], np.zeros((1, 3)), submitted_at=10.0)
    c = Batch("m", 1, ["c1", "c2"], np.full((2, 3), 2.0), row_errors={0: "row 0: f"})
    merged = coalesce.merge([a, b, c])
    assert merged.job_ids == ["a1", "a2", "b1", "c1", "c2"]
    np.testing.assert_array_equal(merged.x[:, 0], [1, 1, 0, 2, 2])
    assert merged.keys == ["x", "y", None, None, None]
    assert merged.row_errors == {1: "row 1: e", 3: "row 0: f"}
    assert (merged.submitted_at, merged.row_offset, merged.run_id) == (10.0, 0, None)
    assert merged.batch_id not in {a.batch_id, b.batch_id, c.batch_id}
    assert coalesce.merge([b]) is b  # a lone piece is sent exactly as built
    assert coalesce.merge([b, c]).keys is None


def test_pieces_with_bad_rows_merge_and_keep_their_callers_row_numbers():
    """Row numbers travel on the wire (common/rows/merge.py): any pieces can share a message,
    and the worker still names each bad row as its caller knows it."""
    x = np.zeros((3, 2))
    x[1, 0] = np.nan
    a = Batch("m", 1, ["a", "b", "c"], x, row_offset=40)
    b = Batch("m", 1, ["d"], np.zeros((1, 2)), row_errors={0: "row 0: text"})
    merged = contract.decode_batch(contract.encode_batch(coalesce.merge([a, b])))
    assert [merged.row_number(i) for i in range(4)] == [40, 41, 42, 0]
    assert merged.row_errors == {3: "row 0: text"}


def test_lazy_resources_are_created_once_under_concurrency(sqlite_settings, monkeypatch):
    made = []

    def slow_engine(settings):
        made.append(1)
        time.sleep(0.05)
        return object()

    monkeypatch.setattr("inferq.producer.client.make_engine", slow_engine)
    client = InferenceClient(sqlite_settings)
    with ThreadPoolExecutor(8) as pool:
        engines = list(pool.map(lambda _: client.engine, range(8)))
    assert len(made) == 1 and len({id(e) for e in engines}) == 1


def test_a_lone_caller_is_not_made_to_linger(make):
    """A blocking submit with the client to itself is published at once, whatever the linger;
    while something waits to be merged, the next submit joins it instead."""
    client = make(linger_ms=60_000)
    started = time.monotonic()
    (job,) = client.submit("reg", [_row(0, 0)])
    assert time.monotonic() - started < 5
    assert [m["job_ids"] for m in payloads(client)] == [[job]]
    pending = client.submit_async("reg", [_row(0, 1)])  # opens a bucket (60 s linger)
    joined = threading.Thread(target=client.submit, args=("reg", [_row(0, 2)]))
    joined.start()
    time.sleep(0.1)
    assert joined.is_alive() and not pending.done()  # waiting to be merged, not sent alone
    client.close()
    joined.join(5)
    assert len(payloads(client)) == 2 and len(payloads(client)[1]["job_ids"]) == 2
