"""What `INFERQ_BROKER_WAIT_REPLICAS` costs a submit: latency with and without Redis WAIT.

`python -m inferq.bench.replicas [--submits 500] [--rows 20]` starts a throwaway Redis
master and one replica on free loopback ports (plain `redis-server`, AOF off, as most
replicated setups run), registers the benchmark's cheap model in a fresh database, and
times `InferenceClient.submit` of ``--rows`` rows, ``--submits`` times, with
`INFERQ_BROKER_WAIT_REPLICAS` 0 and then 1 (nothing consumes: only the enqueue is timed).
Across hosts, add one network round trip to the replica to the WAIT figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis(port: int, folder: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    import redis

    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not start")


def measure(submits: int, rows: int) -> dict[str, Any]:
    """p50/p99 submit latency (ms) with WAIT off and WAIT 1, on one master + one replica."""
    import redis
    from inferq.bench.data import FEATURES, make_rows, train_models
    from inferq.bench.env import bench_env
    from inferq.bench.scenarios import register
    from inferq.producer import InferenceClient

    folder = Path(tempfile.mkdtemp(prefix="inferq-bench-replicas-"))
    master_port, replica_port = _free_port(), _free_port()
    procs = [_redis(master_port, folder)]
    try:
        procs.append(_redis(replica_port, folder, "--replicaof", "127.0.0.1", str(master_port)))
        replica = redis.Redis(port=replica_port)
        while replica.info("replication").get("master_link_status") != "up":
            time.sleep(0.05)
        models = train_models(folder, big_trees=10, big_rows=2_000)
        frame = make_rows(rows, seed=3)[FEATURES]
        out: dict[str, Any] = {"submits": submits, "rows": rows}
        with bench_env() as base:
            register(base, models["cheap"], "bench")
            for wait in (0, 1):
                settings = base.model_copy(update={
                    "broker_url": f"redis://127.0.0.1:{master_port}/0",
                    "broker_wait_replicas": wait, "batch_size": rows})  # fmt: skip
                with InferenceClient(settings) as client:
                    client.submit("bench", frame)  # connect, resolve the alias
                    times = []
                    for _ in range(submits):
                        started = time.perf_counter()
                        client.submit("bench", frame)
                        times.append((time.perf_counter() - started) * 1000)
                times.sort()
                p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
                out[f"wait_{wait}"] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
        return out
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submits", type=int, default=500)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.submits, args.rows), indent=2))


if __name__ == "__main__":
    main()
