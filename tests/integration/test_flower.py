"""Real Flower (`inferq flower`, basic auth) against the real Redis and two real worker nodes."""

from __future__ import annotations

import json

import pytest
from inferq.common import contract
from inferq.models import registry
from inferq.producer import InferenceClient

from tests.conftest import settings_env
from tests.integration.ops_helpers import free_port, http_get, start_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
__all__ = ["start_cli"]  # the fixture, re-exported for pytest

AUTH = ("ops", "flower-test-pw")


def _processed(workers: dict) -> dict[str, int]:
    """Tasks processed per worker node, from Flower's /api/workers (inspect stats)."""
    return {
        name: int((info.get("stats") or {}).get("total", {}).get(contract.SCORE_BATCH, 0))
        for name, info in workers.items()
    }


def test_flower_shows_both_workers_their_counts_and_the_backlog(
    pg_settings, binary_model, start_worker, start_cli
):
    client = InferenceClient(pg_settings)
    registry.register(client.engine, pg_settings.model_store_dir, binary_model.path, "cancer",
                      "production")  # fmt: skip
    alpha = start_worker(pg_settings, concurrency=1, name="alpha")
    beta = start_worker(pg_settings, concurrency=1, name="beta")

    port = free_port()
    env = settings_env(pg_settings) | {"INFERQ_FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}"}
    flower = start_cli(["flower", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    wait_for("Flower to answer", lambda: http_get(f"{base}/healthcheck")[0], lambda s: s == 200, 60)

    # Auth is on: no credentials or a wrong password is refused, the right one works.
    assert http_get(f"{base}/api/workers")[0] == 401
    assert http_get(f"{base}/api/workers", ("ops", "wrong"))[0] == 401
    assert http_get(f"{base}/")[0] == 401
    assert flower.poll() is None

    def workers() -> dict:
        status, body = http_get(f"{base}/api/workers?refresh=1", AUTH, timeout=15)
        assert status == 200, body
        return json.loads(body)

    names = {alpha.hostname.split("@")[0], beta.hostname.split("@")[0]}
    known = wait_for(
        "both workers in Flower", workers, lambda w: {n.split("@")[0] for n in w} >= names, 60
    )
    before = _processed(known)
    assert sum(before.values()) == 0

    # 20 single-message submits: both nodes block on BRPOP, so Redis alternates between them.
    x = binary_model.x.iloc[:50]
    ids = [j for _ in range(20) for j in client.submit("cancer", x)]
    client.wait(ids, timeout=90)
    after = wait_for(
        "processed counts in Flower",
        lambda: _processed(workers()),
        lambda p: sum(p.values()) == 20,
        60,
    )
    assert all(after[n] > 0 for n in after if n.split("@")[0] in names), after

    # Flower's task view: each task says model and version and how many rows it scored (and
    # errors), never the feature values.
    def tasks() -> dict:
        status, body = http_get(f"{base}/api/tasks?limit=100", AUTH, timeout=15)
        assert status == 200, body
        return json.loads(body)

    seen = wait_for(
        "20 finished tasks in Flower",
        tasks,
        lambda t: sum(v.get("state") == "SUCCESS" for v in t.values()) >= 20,
        60,
    )
    for task in (v for v in seen.values() if v.get("state") == "SUCCESS"):
        assert task["name"] == contract.SCORE_BATCH
        assert "model=cancer version=1 rows=50" in task["kwargs"], task["kwargs"]
        assert "'rows': 50" in task["result"] and "'errors': 0" in task["result"], task["result"]
        shown = json.dumps(task)
        assert f"{float(x.iloc[0, 0])!r}" not in shown and "'x':" not in shown

    # Backlog: with every worker stopped, what is published waits in Redis and Flower shows it.
    alpha.stop()
    beta.stop()
    small = InferenceClient(pg_settings.model_copy(update={"batch_size": 10}))
    small.publish(
        small.build_batches("cancer", binary_model.x.iloc[:70]), queue=pg_settings.bulk_queue
    )
    small.publish(small.build_batches("cancer", x.iloc[:5]))  # 1 online message
    small.close()

    def lengths() -> dict[str, int]:
        status, body = http_get(f"{base}/api/queues/length", AUTH)
        assert status == 200, body
        return {q["name"]: q["messages"] for q in json.loads(body)["active_queues"]}

    queued = wait_for(
        "the backlog in /api/queues/length",
        lengths,
        lambda q: q.get(pg_settings.bulk_queue) == 7,
        30,
    )
    assert queued[pg_settings.online_queue] == 1
    status, page = http_get(f"{base}/broker", AUTH)
    assert status == 200 and pg_settings.bulk_queue in page and pg_settings.online_queue in page
    client.close()


def test_flower_refuses_to_start_without_auth(pg_settings, start_cli):
    env = settings_env(pg_settings)
    proc = start_cli(["flower", "--port", str(free_port())], env)
    assert proc.wait(30) == 2
    assert "INFERQ_FLOWER_BASIC_AUTH" in proc.log.read_text()  # type: ignore[attr-defined]


def test_insecure_no_auth_serves_the_api_openly(pg_settings, start_cli):
    port = free_port()
    start_cli(["flower", "--port", str(port), "--insecure-no-auth"], settings_env(pg_settings))
    url = f"http://127.0.0.1:{port}/api/queues/length"
    _, body = wait_for("Flower without auth", lambda: http_get(url), lambda r: r[0] == 200, 60)
    names = {q["name"] for q in json.loads(body)["active_queues"]}
    assert names == {pg_settings.online_queue, pg_settings.bulk_queue}
