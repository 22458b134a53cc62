"""Broker failover: Redis Sentinel with a master, a replica and three sentinels on loopback.

The master is SIGKILLed in the middle of a run of online submissions; the sentinels promote
the replica; producers, the worker (its consumer, in-flight ledger, delivery cap, liveness)
and the metrics probe follow it. Replication is asynchronous, so an enqueue the master
acknowledged just before dying can be missing on the replica: with
INFERQ_BROKER_WAIT_REPLICAS=1 submit() returns only once the replica has it.
"""

import os
import signal
import statistics
import threading
import time

import numpy as np
import pytest
from inferq.common.db import make_engine
from inferq.common.errors import EnqueueError
from inferq.models import registry
from inferq.ops.metrics import BrokerProbe
from inferq.producer import InferenceClient

from tests.integration.checker import check, wait_until_clean
from tests.integration.instances import SentinelGroup, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SUBMITS, ROWS = 200, 20


@pytest.fixture
def sentinels():
    group = SentinelGroup()
    try:
        group.start()
    except FileNotFoundError as exc:  # pragma: no cover - redis-server is in the CI image
        pytest.skip(str(exc))
    yield group
    group.close()


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["async-replication", "wait-1-replica"])
def test_a_broker_failover_mid_run(pg_settings, binary_model, start_worker, sentinels,
                                   wait_replicas):  # fmt: skip
    settings = pg_settings.model_copy(
        update={
            "broker_url": sentinels.url,
            "sentinel_master": SentinelGroup.MASTER,
            "broker_wait_replicas": wait_replicas,
            "broker_wait_timeout_ms": 500,
            "batch_size": ROWS,
            "visibility_timeout": 8,
            "task_time_limit": 6,
            "unacked_restore_interval": 2,
            "inflight_stale_after": 12,
            "reconcile_interval": 1,
        }
    )
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, binary_model.path, "cancer", "production")
    start_worker(settings, concurrency=2)
    rows = binary_model.x.iloc[np.arange(ROWS)]
    accepted: list[str] = []
    maybe: list[str] = []  # reached the broker but submit() raised: not accepted
    errors: list[str] = []
    latencies: list[float] = []
    old_master = sentinels.master_port()

    def produce(client: InferenceClient) -> None:
        for _ in range(SUBMITS):
            started = time.perf_counter()
            try:
                accepted.extend(client.submit("cancer", rows))
                latencies.append(time.perf_counter() - started)
            except EnqueueError as exc:
                maybe.extend(exc.enqueued_job_ids)
                errors.append(type(exc).__name__)
            time.sleep(0.05)  # ~10 s of submits

    with InferenceClient(settings, engine=engine) as client:
        producer = threading.Thread(target=produce, args=(client,))
        producer.start()
        wait_until("a quarter of the submits", lambda: len(accepted) >= SUBMITS * ROWS // 4, 60)
        os.kill(sentinels.master.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until("the sentinels promote the replica",
                   lambda: sentinels.master_port() != old_master, timeout=60)  # fmt: skip
        failover = time.monotonic() - killed
        # The old master comes back; the sentinels make it the new master's replica.
        sentinels.master.start()
        producer.join(180)
        assert not producer.is_alive()
    counts, _ = wait_until_clean(engine, accepted, timeout=90)
    unexpected = check(engine, accepted + maybe).unexpected  # `maybe` jobs may have rows
    lat = sorted(latencies)
    print(f"failover ({'WAIT 1' if wait_replicas else 'async'}): {counts} (rows of the "
          f"{len(maybe)} jobs of refused submits that reached the broker: not unexpected); "
          f"{len(errors)} "
          f"submit(s) refused during the failover; new master by {failover:.1f} s after the kill; "
          f"clean {time.monotonic() - killed:.1f} s after the kill; submit p50 "
          f"{statistics.median(lat) * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} "
          "ms")  # fmt: skip
    # Submits during the failover are refused at once (WAIT: until a replica is back).
    assert len(accepted) >= SUBMITS * ROWS // 2, "submits did not resume after the failover"
    assert counts.duplicated == 0 and unexpected == 0
    if wait_replicas:
        assert counts.lost == 0, "an acknowledged, replicated enqueue was lost"
    else:
        # Asynchronous replication: a loss is possible but not expected on loopback (the
        # replica is < 1 ms behind). Whatever was lost is counted in the output above.
        assert counts.lost <= ROWS * 2
    depths, _ = BrokerProbe(settings).read()  # the metrics exporter follows the new master
    assert [d.messages for d in depths] == [0, 0]
    engine.dispose()
