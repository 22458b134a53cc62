"""`inferq metrics` (Prometheus exporter) and `inferq scale --json` on real services."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from inferq.models import registry
from inferq.producer import InferenceClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, settings_env
from tests.integration.ops_helpers import free_port, http_get, start_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
__all__ = ["start_cli"]  # the fixture, re-exported for pytest


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(url, timeout=10)
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _scale(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "scale", "--json", "--target-seconds", "60"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_metrics_and_scale_follow_what_was_submitted(
    pg_settings, binary_model, start_worker, start_cli
):
    client = InferenceClient(pg_settings)
    registry.register(client.engine, pg_settings.model_store_dir, binary_model.path, "cancer",
                      "production")  # fmt: skip
    env = settings_env(pg_settings)
    port = free_port()
    start_cli(["metrics", "--port", str(port), "--settle-seconds", "0.5"], env)
    url = f"http://127.0.0.1:{port}/metrics"
    online, bulk = pg_settings.online_queue, pg_settings.bulk_queue
    rows_key = ("inferq_rows_scored_total", (("model", "cancer"), ("queue", online)))
    first = wait_for("the exporter", lambda: _scrape(url), lambda m: bool(m), 30)
    assert first[("inferq_queue_messages", (("queue", online),))] == 0
    assert rows_key not in first  # counters start at zero: nothing committed yet

    # 2,500 online rows, 2 of them unreadable -> 3 messages (1000, 1000, 500), 2 error rows.
    worker = start_worker(pg_settings, concurrency=2)
    frame = binary_model.x.sample(2500, replace=True, random_state=1).reset_index(drop=True)
    frame.iloc[[3, 1700], 0] = np.nan
    client.wait(client.submit("cancer", frame), timeout=90)
    m = wait_for("rows in the exporter", lambda: _scrape(url),
                 lambda m: m.get(rows_key) == 2500, 30)  # fmt: skip
    labels = (("model", "cancer"), ("queue", online))
    assert m[("inferq_error_rows_total", labels)] == 2
    assert m[("inferq_batches_total", labels)] == 3
    assert m[("inferq_batch_rows_count", (("queue", online),))] == 3
    assert m[("inferq_batch_rows_sum", (("queue", online),))] == 2500
    assert m[("inferq_predict_seconds_count", (("model", "cancer"),))] == 3
    assert m[("inferq_up", (("source", "broker"),))] == 1
    assert m[("inferq_up", (("source", "database"),))] == 1

    # With the worker stopped, published messages wait: depth, age and the rows estimate.
    worker.stop()
    small = InferenceClient(pg_settings.model_copy(update={"batch_size": 100}))
    small.publish(small.build_batches("cancer", binary_model.x.iloc[:500]), queue=bulk)
    small.publish(small.build_batches("cancer", binary_model.x.iloc[:200]))
    small.close()
    time.sleep(1.2)
    m = _scrape(url)
    assert m[("inferq_queue_messages", (("queue", bulk),))] == 5
    assert m[("inferq_queue_messages", (("queue", online),))] == 2
    assert 1.0 <= m[("inferq_queue_oldest_age_seconds", (("queue", bulk),))] < 30
    # Online rows/message is measured (2500 rows / 3 messages); bulk has no history: configured.
    assert m[("inferq_queue_rows_estimate", (("queue", online),))] == pytest.approx(2 * 2500 / 3)
    assert m[("inferq_queue_rows_estimate", (("queue", bulk),))] == 5 * pg_settings.bulk_chunk_size
    assert m[("inferq_unacked_messages", ())] == 0

    plan = _scale(env)
    queues = {q["queue"]: q for q in plan["queues"]}
    assert queues[online]["messages"] == 2 and queues[bulk]["messages"] == 5
    assert queues[online]["rows_per_message"] == pytest.approx(2500 / 3)
    rate = queues[online]["rows_per_process_second"]
    assert rate > 0 and queues[bulk]["rows_per_process_second"] is None
    assert queues[online]["process_seconds"] == pytest.approx(2 * 2500 / 3 / rate)
    assert plan["exact"] is False and plan["processes"] >= 1  # bulk backlog, no bulk history
    assert any(bulk in note for note in plan["notes"])
    assert plan["current_processes"] == 0  # no worker running
    client.close()
