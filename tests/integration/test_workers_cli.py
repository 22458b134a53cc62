"""`inferq workers` and `inferq worker`'s pass-through options, against real workers."""

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
from inferq.common import redisconn
from inferq.models import registry

from inferq.procs import stop_worker
from tests.conftest import REPO, settings_env
from tests.integration.ops_helpers import wait_for
from tests.integration.test_faults import _register_cancer

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def inferq(settings, *args, timeout=60):
    """Run the CLI as a user would, with ``settings`` in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "inferq", *args],
        env={**settings_env(settings), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def listed(settings) -> dict[str, dict]:
    """`inferq workers --json` by node name."""
    out = inferq(settings, "workers", "--json")
    assert out.returncode == 0, out.stderr
    return {w["node"]: w for w in json.loads(out.stdout)}


class CliWorker:
    """`inferq worker ...` (the console command, not celery's) as a subprocess."""

    def __init__(self, settings, log, *extra):
        self.log = log
        self.node = f"cli-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
        cmd = [sys.executable, "-m", "inferq", "worker", "-c", "1", "-n", self.node,
               "--without-gossip", "--without-mingle", *extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=settings_env(settings),
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def wait_ready(self):
        wait_for("the CLI worker to be ready", self.log.read_text,
                 lambda text: " ready." in text or self.proc.poll() is not None,
                 timeout=60)  # fmt: skip
        assert self.proc.poll() is None, self.log.read_text()[-3000:]


@pytest.fixture
def fast_liveness(pg_settings):
    """Liveness at its minimum (5 s: a beat every second) so silence shows quickly."""
    return pg_settings.model_copy(update={"liveness_timeout": 5, "reload_interval": 1})


def test_workers_lists_both_nodes_with_models_queues_and_pool_then_the_killed_one_goes_silent(
    fast_liveness, binary_model, regressor_model, start_worker, tmp_path
):
    settings = fast_liveness
    engine = _register_cancer(settings, binary_model)
    other = settings.model_copy(update={"online_queue": f"only-{uuid.uuid4().hex[:6]}"})
    first = start_worker(settings, concurrency=2, name="first")
    # The second comes through `inferq worker` with Celery options passed through.
    second = CliWorker(other, tmp_path / "cli-worker.log", "--max-tasks-per-child", "5",
                       "-O", "fair")  # fmt: skip
    try:
        second.wait_ready()
        nodes = wait_for("two listed workers", lambda: listed(settings),
                         lambda n: len(n) == 2, timeout=15)  # fmt: skip
        a = nodes[first.hostname.replace("%h", os.uname().nodename)]
        b = nodes[second.node]
        assert a["state"] == b["state"] == "live"
        assert a["pid"] == first.proc.pid and b["pid"] == second.proc.pid
        assert a["host"] == b["host"] == os.uname().nodename
        assert a["queues"] == sorted([settings.online_queue, settings.bulk_queue])
        assert b["queues"] == sorted([other.online_queue, other.bulk_queue])
        assert (a["pool"], a["concurrency"], a["processes"]) == ("prefork", 2, 2)
        assert (b["pool"], b["concurrency"], b["processes"]) == ("prefork", 1, 1)
        assert b["max_tasks_per_child"] == 5 and a["max_tasks_per_child"] is None
        for w in (a, b):
            assert w["models"] == [{"model": "cancer@1", "runtime": "sklearn", "role": "serving"}]
            assert 0 <= w["last_heartbeat_seconds"] < 3  # beats every second
            assert w["started_at"] and w["incarnation"].startswith(w["node"] + "/")
        # Celery itself took the pass-through option: its own stats say so.
        stats = celery_stats(settings, second.node)
        assert stats["pool"]["max-tasks-per-child"] == 5

        # Hot reload: a new production model shows on both without a restart.
        registry.register(engine, settings.model_store_dir, regressor_model.path, "reg",
                          "production")  # fmt: skip
        wait_for("the reloaded model on both workers", lambda: listed(settings),
                 lambda n: all({"model": "reg@1", "runtime": "sklearn", "role": "serving"}
                               in w["models"] for w in n.values()), timeout=20)  # fmt: skip

        # SIGKILL the CLI worker (no clean stop): silent, then reaped by the first one.
        os.killpg(second.proc.pid, signal.SIGKILL)
        second.proc.wait(10)
        nodes = wait_for("the killed worker to go silent", lambda: listed(settings),
                         lambda n: n[second.node]["state"] != "live", timeout=20)  # fmt: skip
        assert nodes[second.node]["last_heartbeat_seconds"] >= 5  # silent after 5 s (shown rounded)
        nodes = wait_for("the killed worker to be reaped", lambda: listed(settings),
                         lambda n: n[second.node]["state"] == "reaped", timeout=20)  # fmt: skip
        assert nodes[first.hostname.replace("%h", os.uname().nodename)]["state"] == "live"
        table = inferq(settings, "workers")
        assert table.returncode == 0 and "reaped" in table.stdout and "cancer@1" in table.stdout
        assert "1 live worker(s) of 2 listed" in table.stderr

        # A clean stop removes the worker from the list at once.
        first.stop()
        assert first.hostname.replace("%h", os.uname().nodename) not in listed(settings)
    finally:
        stop_worker(second.proc)
        engine.dispose()


def celery_stats(settings, node):
    """`inspect stats` of one node, through Celery's own remote control."""
    from inferq.common.celery import create_celery

    app = create_celery(settings)
    try:
        return wait_for("inspect stats", lambda: app.control.inspect([node], timeout=3).stats(),
                        lambda s: bool(s), timeout=20)[node]  # fmt: skip
    finally:
        app.close()


def test_a_bogus_worker_option_is_refused_by_celery(pg_settings):
    out = inferq(pg_settings, "worker", "--max-tasks-per-chld", "5")
    assert out.returncode == 2
    assert "celery worker: No such option '--max-tasks-per-chld'" in out.stderr
    assert "Traceback" not in out.stderr


def test_workers_on_the_embedded_broker_asks_the_live_workers(sqlite_settings, tmp_path):
    """No Redis: the answer comes through Celery's remote control (filesystem transport)."""
    worker = CliWorker(sqlite_settings, tmp_path / "fs-worker.log", "--autoscale", "3,1")
    try:
        worker.wait_ready()
        nodes = wait_for("the worker's answer", lambda: listed(sqlite_settings),
                         lambda n: worker.node in n, timeout=20)  # fmt: skip
        w = nodes[worker.node]
        assert (w["source"], w["state"], w["autoscale"]) == ("inspect", "live", [3, 1])
        assert w["last_heartbeat_seconds"] is None and w["pid"] == worker.proc.pid
    finally:
        stop_worker(worker.proc)
    out = inferq(sqlite_settings, "workers", "--timeout", "0.5")
    assert out.returncode == 0 and out.stdout == "" and "no workers" in out.stderr


def test_the_redis_keys_expire_for_a_crashed_worker(fast_liveness):
    """The TTL bounds how long a crashed worker is listed (a hash written as a worker does)."""
    from inferq.workers import nodeinfo

    client = redisconn.broker_client(fast_liveness)
    every, silent, ttl = nodeinfo.timing(fast_liveness.liveness_timeout)
    assert (every, silent, ttl) == (1.0, 5.0, nodeinfo.MIN_TTL)
    assert nodeinfo.timing(0) == (5.0, 15.0, nodeinfo.MIN_TTL)
    script = client.register_script(nodeinfo._PUBLISH_LUA)
    info = {"incarnation": "x@h/1/ab", "node": "x@h", "silent_after": 5.0, "liveness": False}
    script(keys=[nodeinfo.INFO + "x@h/1/ab", nodeinfo.INDEX],
           args=[ttl, "x@h/1/ab", *nodeinfo.fields(info)])  # fmt: skip
    assert 0 < client.ttl(nodeinfo.INFO + "x@h/1/ab") <= ttl
    (node,) = listed(fast_liveness).values()
    assert node["state"] == "live" and node["incarnation"] == "x@h/1/ab"
    client.close()
