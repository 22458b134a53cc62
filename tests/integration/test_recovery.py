"""Recovery in seconds: a dead worker's messages come back through liveness, not after the
visibility timeout (kept at its production 300 s here), and a worker that was only paused
keeps the exactly-one-row guarantee (workers/liveness.py, RELIABILITY.md)."""

import os
import signal
import time

import pandas as pd
import pytest
import redis
from inferq.common import compat
from inferq.producer import InferenceClient
from inferq.workers import liveness

from tests.integration.checker import committed_batches, wait_for_batches, wait_until_clean
from tests.integration.test_faults import _register_cancer
from tests.integration.test_faults import _rows as _jittered

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

#: A message kombu popped but had not yet recorded when its worker died (the BRPOP window)
#: is the in-flight ledger's to re-send, after this; liveness must beat it by far.
LEDGER_STALE = 60


@pytest.fixture
def production_timeouts(pg_settings):
    """Production visibility timeout and time limit: only liveness can recover in seconds."""
    return pg_settings.model_copy(
        update={
            "visibility_timeout": 300,
            "task_time_limit": 240,
            "liveness_timeout": 15,
            "inflight_stale_after": LEDGER_STALE,
            "reconcile_interval": 5,
        }
    )


def _rows(model_file, n: int) -> pd.DataFrame:
    return _jittered(model_file, n).reset_index(drop=True)


def _reaped(output: str) -> int:
    """Messages a worker's log says it put back for dead workers."""
    return sum(
        int(line.split("taken for dead: ")[1].split(" ")[0])
        for line in output.splitlines()
        if "taken for dead: " in line
    )


def test_a_killed_workers_bulk_run_resumes_in_seconds(
    production_timeouts, binary_model, start_worker, tmp_path
):
    """The issue's scenario: SIGKILL the only worker mid-run, start a new one a second later."""
    from inferq.producer.bulk import BulkScorer
    from inferq.producer.runs import job_ids_for
    from inferq.producer.sources import ParquetSource

    settings = production_timeouts
    engine = _register_cancer(settings, binary_model)
    frame = _rows(binary_model, 60_000)
    frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
    frame.to_parquet(tmp_path / "rows.parquet")
    worker = start_worker(settings, concurrency=2)
    client = InferenceClient(settings, engine=engine)
    scorer = BulkScorer(client)
    run = scorer.prepare(ParquetSource(tmp_path / "rows.parquet"), "cancer", "id",
                         run_id="killed", chunk_size=500)  # fmt: skip
    scorer.enqueue(run)  # 120 messages
    accepted = job_ids_for("killed", frame["id"].tolist())
    assert wait_for_batches(engine, 10) >= 10
    broker = redis.Redis.from_url(settings.broker_url)
    (held_key,) = broker.keys("inferq:held:*")  # the only worker's deliveries

    deadline = time.monotonic() + 10
    while broker.scard(held_key) == 0 and time.monotonic() < deadline:
        time.sleep(0.002)  # kill while it holds messages: the case liveness exists for
    os.killpg(worker.proc.pid, signal.SIGKILL)  # the node is gone: parent and children
    worker.proc.wait(10)
    held = broker.scard(held_key)  # frozen now: what the dead worker took
    killed_at, done = time.monotonic(), committed_batches(engine)
    assert done < 120, "the run finished before the kill; nothing was tested"
    time.sleep(1)
    new = start_worker(settings, concurrency=2)
    counts, _ = wait_until_clean(engine, accepted, timeout=LEDGER_STALE + 60)
    recovered_in = time.monotonic() - killed_at
    print(f"bulk: killed after {done}/120 messages holding {held}; clean {recovered_in:.1f} s "
          f"after the kill; {_reaped(new.output())} requeued by liveness")  # fmt: skip
    assert counts.clean and counts.rows == 60_000
    if held:  # almost always; a kill in the microseconds between two batches holds none
        assert _reaped(new.output()) >= 1, new.output()[-3000:]
    # The visibility timeout is 300 s and the ledger's staleness 60 s: only liveness is this
    # fast (15 s of silence + the new worker's own 15 s of beats before it may reap).
    assert recovered_in < LEDGER_STALE, f"recovered only after {recovered_in:.0f} s"
    client.close()
    engine.dispose()


def test_online_jobs_of_a_killed_worker_are_answered_by_the_survivor(
    production_timeouts, binary_model, start_worker
):
    settings = production_timeouts.model_copy(update={"batch_size": 50})
    engine = _register_cancer(settings, binary_model)
    doomed = start_worker(settings, concurrency=1, name="doomed")
    survivor = start_worker(settings, concurrency=1, name="survivor")
    with InferenceClient(settings, engine=engine) as client:
        accepted = client.submit("cancer", _rows(binary_model, 5_000))  # 100 messages
        assert wait_for_batches(engine, 10) >= 10
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(10)
        killed_at = time.monotonic()
        counts, _ = wait_until_clean(engine, accepted, timeout=LEDGER_STALE + 60)
        answered_in = time.monotonic() - killed_at
        results = client.results(accepted[-50:])
    print(f"online: every job answered {answered_in:.1f} s after the kill; "
          f"{_reaped(survivor.output())} message(s) requeued by liveness")  # fmt: skip
    assert counts.clean and counts.rows == 5_000
    assert all(r.status == "ok" for r in results)
    assert _reaped(survivor.output()) >= 1, survivor.output()[-3000:]
    assert answered_in < LEDGER_STALE
    engine.dispose()


def test_a_paused_worker_is_taken_for_dead_and_still_writes_each_job_once(
    pg_settings, binary_model, start_worker
):
    """SIGSTOP longer than the liveness timeout, then SIGCONT: slow, not dead.

    The other worker requeues and scores what the paused one held; the paused one then wakes
    up and finishes the same batches. Exactly one row per job all the same.
    """
    settings = pg_settings.model_copy(
        update={"visibility_timeout": 300, "task_time_limit": 240, "liveness_timeout": 6,
                "batch_size": 500}
    )  # fmt: skip
    engine = _register_cancer(settings, binary_model)
    paused = start_worker(settings, concurrency=2, name="paused")
    other = start_worker(settings, concurrency=1, name="other")
    with InferenceClient(settings, engine=engine) as client:
        accepted = client.submit("cancer", _rows(binary_model, 30_000))  # 60 messages
    assert wait_for_batches(engine, 4) >= 4
    os.killpg(paused.proc.pid, signal.SIGSTOP)
    time.sleep(settings.liveness_timeout * 2 + 4)  # silent, taken for dead, work requeued
    os.killpg(paused.proc.pid, signal.SIGCONT)
    wait_until_clean(engine, accepted, timeout=120)
    time.sleep(3)  # let the woken worker finish (and write nothing new)
    counts = wait_until_clean(engine, accepted, timeout=1)[0]
    print(f"paused: {counts}; requeued by liveness: {_reaped(other.output())}")
    assert counts.clean and counts.rows == 30_000
    assert _reaped(other.output()) >= 1, other.output()[-3000:]
    deadline = time.monotonic() + 20
    while "was taken for dead" not in paused.output() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "was taken for dead" in paused.output()  # it noticed, and kept serving
    engine.dispose()


def test_delivery_tags_are_recorded_with_kombus_unacked_entry_and_restored(pg_settings, redis_url):
    """Pins the kombu internals liveness uses: the held set follows kombu's unacked hash
    through append and ack, and kombu's own requeue puts a held message back at the head."""
    from inferq.common.celery import create_celery

    compat.install_redis_hooks()
    app = create_celery(pg_settings)
    queue = pg_settings.online_queue
    held = liveness.HELD + "pin"
    layout = compat.redis_layout()
    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue)
        client = conn.default_channel.client
        for i in range(3):
            simple.put({"n": i})
        compat.record_deliveries_in(held)
        try:
            first, second = simple.get(timeout=5), simple.get(timeout=5)
        finally:
            compat.record_deliveries_in(None)
        tags = {first.delivery_tag, second.delivery_tag}
        assert {t.decode() for t in client.smembers(held)} == tags
        assert {t.decode() for t in client.hkeys(layout.unacked)} == tags
        compat.record_deliveries_in(held)
        first.ack()
        compat.record_deliveries_in(None)
        assert {t.decode() for t in client.smembers(held)} == {second.delivery_tag}
        with app.connection_for_write() as other:  # another worker's reaper
            compat.restore_delivery(other.default_channel, second.delivery_tag)
            compat.restore_delivery(other.default_channel, second.delivery_tag)  # no-op
        assert client.hlen(layout.unacked) == 0
        again = simple.get(timeout=5)
        assert again.payload == second.payload and again.delivery_info["redelivered"]
        again.ack()
        assert simple.get(timeout=5).payload == {"n": 2}  # restored at the head, not twice
        assert client.llen(queue) == 0
        simple.close()


def test_warm_shutdown_always_finishes_short_loop():
    """The shutdown loop (scripts/shutdown_loop.py, 50 runs for the record) in short form:
    SIGTERM while busy scoring ~280 KB jobs ends the worker with exit code 0 every time."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    script = repo / "scripts" / "shutdown_loop.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--runs", "4", "--grace", "30"],
        capture_output=True, text=True, timeout=300, cwd=repo,
    )  # fmt: skip
    print(proc.stdout[-800:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hung: 0" in proc.stdout
