"""Online scenarios of issue 7: dynamic batching under many producers, and online latency
while a bulk run floods the workers. Figures come from the results ledger (submit and commit
times per message), never from timing inside the producer."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import itertools
import json
import multiprocessing
import time
from collections import Counter
from typing import Any

import numpy as np
from inferq.bench.data import FEATURES, make_rows
from inferq.bench.env import Worker
from inferq.common.settings import Settings


def _fire(settings_json: str, model: str, n: int, rate: float | None, seed: int) -> int:
    """One producer process: ``n`` single-row submits (one message each), paced or flat out."""
    from inferq.producer import InferenceClient

    settings = Settings.model_validate_json(settings_json)
    x = make_rows(n, seed=seed)[FEATURES].to_numpy()
    with InferenceClient(settings, linger_ms=0) as client:
        client.submit(model, x[:1])  # connections and caches warm
        started = time.perf_counter()
        for i in range(1, n):
            if rate:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            client.submit(model, x[i : i + 1])
    return n


def _reset(settings: Settings) -> None:
    """An empty ledger, results table and broker db: no scenario sees another's leftovers."""
    import redis
    from inferq.common.db import make_engine
    from inferq.common.schema import prediction_batches as pb

    engine = make_engine(settings)
    with engine.begin() as conn:
        conn.execute(pb.delete())
        conn.exec_driver_sql("TRUNCATE predictions")
    engine.dispose()
    client = redis.Redis.from_url(str(settings.broker_url))
    client.flushdb()
    client.set("inferq-bench-claim", "1", ex=7200)  # bench_env's claim on this db
    client.close()


def _ledger(settings: Settings, expected: int, timeout: float) -> list[Any]:
    """Ledger rows of every message once ``expected`` are committed."""
    from inferq.common.db import make_engine
    from inferq.common.schema import prediction_batches as pb
    from sqlalchemy import func, select

    engine = make_engine(settings)
    deadline = time.monotonic() + timeout
    try:
        with engine.connect() as conn:
            while (conn.scalar(select(func.count()).select_from(pb)) or 0) < expected:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only part of {expected} messages committed in {timeout}s")
                time.sleep(0.2)
                conn.rollback()
            names = ("submitted_at", "received_at", "committed_at", "worker", "decode_ms",
                     "predict_ms", "write_ms", "n_rows", "run_id")  # fmt: skip
            cols = [pb.c[name] for name in names]
            rows = list(conn.execute(select(*cols)).all())
        with engine.begin() as conn:  # the next scenario starts from an empty ledger
            conn.execute(pb.delete())
            conn.exec_driver_sql("TRUNCATE predictions")
    finally:
        engine.dispose()
    return rows


def _latency(rows: list[Any]) -> dict[str, float]:
    ms = np.array([(r.committed_at - r.submitted_at).total_seconds() * 1000 for r in rows])
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "max_ms": float(ms.max())}  # fmt: skip


def group_sizes(rows: list[Any]) -> list[int]:
    """Messages per model call: a group's ledger rows share worker, receive and phase times."""
    keys = Counter((r.worker, r.received_at, r.decode_ms, r.predict_ms, r.write_ms) for r in rows)
    return sorted(keys.values())


def histogram(sizes: list[int]) -> list[tuple[str, int]]:
    """How full the model calls were: (messages per call bucket, calls)."""
    edges = [1, 2, 5, 10, 25, 50, 100, 250, 10**9]
    out = []
    for lo, hi in itertools.pairwise(edges):
        label = f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}" if hi < 10**9 else f"≥{lo}"
        out.append((label, sum(lo <= s < hi for s in sizes)))
    return out


def producers(
    settings: Settings, model: str, n_producers: int, rows_each: int, workers: int,
    batching: bool, rate: float | None = None, prefill: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """``n_producers`` processes sending single rows (flat out, or ``rate`` each); figures.

    ``prefill``: publish everything first, then start the worker and time the drain — the
    worker's capacity, without producers competing for the same CPUs.
    """
    extra = {"INFERQ_PRELOAD": f"{model}:production",
             "INFERQ_ONLINE_MAX_BATCH_SIZE": str(settings.online_max_batch_size if batching else 1),
             "INFERQ_ONLINE_MAX_DELAY_MS": str(settings.online_max_delay_ms)}  # fmt: skip

    def start() -> Worker:
        return Worker.inferq(settings, workers, f"batching-{int(batching)}", **extra)

    _reset(settings)

    worker = None if prefill else start()
    try:
        ctx = multiprocessing.get_context("spawn")
        started = time.perf_counter()
        with cf.ProcessPoolExecutor(n_producers, mp_context=ctx) as pool:
            sent = sum(pool.map(_fire, [settings.model_dump_json()] * n_producers,
                                [model] * n_producers, [rows_each] * n_producers,
                                [rate] * n_producers, range(100, 100 + n_producers)))  # fmt: skip
        publish_s = time.perf_counter() - started
        ready = dt.datetime.now(dt.UTC)
        if worker is None:
            worker = start()
        rows = _ledger(settings, sent, timeout=900)
    finally:
        if worker is not None:
            worker.stop()
    first = ready if prefill else min(r.submitted_at for r in rows)
    seconds = (max(r.committed_at for r in rows) - first).total_seconds()
    sizes = group_sizes(rows)
    return {
        "producers": n_producers, "rows": sent, "batching": batching, "rate_each": rate,
        "prefill": prefill, "seconds": seconds, "rows_per_s": sent / seconds,
        "publish_s": publish_s, "calls": len(sizes), "mean_group": sent / len(sizes),
        "max_group": max(sizes), "histogram": histogram(sizes),
        "predict_ms_mean": float(np.mean([r.predict_ms for r in rows])),
        **_latency(rows),
    }  # fmt: skip


def flood(
    settings: Settings, workers: int, parquet: Any, rate: float, seconds: float
) -> dict[str, Any]:
    """Online latency (cheap model, ``rate`` jobs/s) alone and while a bulk run floods the
    queue; the bulk chunk's processing time bounds the difference. The bulk run is an
    `inferq score` process of its own, as in production (sharing the online producer's
    process, its reading and encoding would delay the online submits themselves)."""
    import subprocess
    import sys

    from inferq.bench.env import ROOT, env_for

    out: dict[str, Any] = {}
    n = int(rate * seconds)
    for label in ("alone", "with_bulk"):
        _reset(settings)
        worker = Worker.inferq(settings, workers, f"flood-{label}",
                               INFERQ_PRELOAD="cheap:production")  # fmt: skip
        bulk = None
        try:
            if label == "with_bulk":
                bulk = subprocess.Popen(
                    [sys.executable, "-m", "inferq", "score", "-m", "cheap", "-i", str(parquet),
                     "--id-column", "id", "--run-id", f"flood-{int(time.time())}", "--json"],
                    env=env_for(settings), cwd=ROOT, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True,
                )  # fmt: skip
                time.sleep(2.0)  # the bulk queue fills first
            sent = _fire(settings.model_dump_json(), "cheap", n, rate, seed=7)
            chunks = 0
            if bulk is not None:
                stdout, _ = bulk.communicate(timeout=900)
                chunks = int(json.loads(stdout).get("n_chunks") or 0)
            rows = _ledger(settings, sent + chunks, timeout=900)
        finally:
            worker.stop()
            if bulk is not None and bulk.poll() is None:
                bulk.kill()
        online = [r for r in rows if r.run_id is None]
        bulk_rows = [r for r in rows if r.run_id is not None]
        out[label] = _latency(online) | {"jobs": len(online)}
        if bulk_rows:
            took = [(r.committed_at - r.received_at).total_seconds() * 1000 for r in bulk_rows]
            out["bulk_chunk_ms"] = float(np.median(took))
            out["bulk_chunk_rows"] = int(np.median([r.n_rows for r in bulk_rows]))
    return out


def run_all(settings: Settings, workers: int, quick: bool, cheap_parquet: Any,
            online_seconds: float) -> dict[str, Any]:  # fmt: skip
    """The issue-7 scenarios at benchmark size."""
    n_off, n_on = (60, 400) if quick else (500, 2500)
    out: dict[str, Any] = {"max_delay_ms": settings.online_max_delay_ms,
                           "max_batch_size": settings.online_max_batch_size}  # fmt: skip
    out["off"] = producers(settings, "forest", 4, n_off, workers, False, prefill=True)
    out["on"] = producers(settings, "forest", 4, n_on, workers, True, prefill=True)
    quiet = settings.model_copy(update={"task_events": False})
    orig = Worker.inferq

    def no_events(*a: Any, **k: Any) -> Worker:
        return orig(*a, **k, INFERQ_TASK_EVENTS="false")

    Worker.inferq = no_events  # type: ignore[method-assign]
    try:
        out["on_no_events"] = producers(quiet, "forest", 4, n_on, workers, True, prefill=True)
        out["off_no_events"] = producers(quiet, "forest", 4, n_off, workers, False, prefill=True)
    finally:
        Worker.inferq = orig  # type: ignore[method-assign]
    out["paced"] = producers(settings, "forest", 4, int(40 * online_seconds), workers, True,
                             rate=40)  # fmt: skip
    out["flood"] = flood(settings, workers, cheap_parquet, 100, online_seconds)
    return out


def markdown_lines(b: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, bool]]]:
    """BENCHMARKS.md lines and target checks for :func:`run_all`'s figures."""
    lines = [
        "",
        f"Online dynamic batching (forest, 4 producer processes sending single-row messages; "
        f"max batch {b['max_batch_size']} rows, max delay {b['max_delay_ms']:g} ms; throughput "
        "= drain of a pre-published backlog, so producers do not compete for the CPUs; paced = "
        "4 × 40 rows/s live):",
        "",
        "| run | rows | rows/s | model calls | mean / max messages per call | mean predict ms "
        "| p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {"off": "batching off", "on": "batching on", "off_no_events": "off, no task events",
              "on_no_events": "on, no task events", "paced": "on, paced 160 rows/s"}  # fmt: skip
    for key, label in labels.items():
        r = b[key]
        lines.append(
            f"| {label} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['calls']:,} | "
            f"{r['mean_group']:.1f} / {r['max_group']} | {r['predict_ms_mean']:.1f} | "
            f"{r['p50_ms']:,.1f} | {r['p99_ms']:,.1f} |"
        )
    lines += ["", "How full the model calls were (batching on, drain): "
              + ", ".join(f"{label}: {n}" for label, n in b["on"]["histogram"]) + "."]  # fmt: skip
    f = b["flood"]
    lines += ["", f"Online (cheap model, 100 jobs/s) alone: p50 {f['alone']['p50_ms']:.1f} ms, "
              f"p99 {f['alone']['p99_ms']:.1f} ms; during a bulk run: p50 "
              f"{f['with_bulk']['p50_ms']:.1f} ms, p99 {f['with_bulk']['p99_ms']:.1f} ms; one bulk "
              f"chunk ({f.get('bulk_chunk_rows', 0):,} rows) takes "
              f"{f.get('bulk_chunk_ms', 0):.0f} ms."]  # fmt: skip
    ratio = b["on"]["rows_per_s"] / b["off"]["rows_per_s"]
    ratio_quiet = b["on_no_events"]["rows_per_s"] / b["off_no_events"]["rows_per_s"]
    paced = b["paced"]
    bound = b["max_delay_ms"] + 2 * paced["predict_ms_mean"]
    extra = f["with_bulk"]["p99_ms"] - f["alone"]["p99_ms"]
    checks = [
        ("forest, batching on ≥ 10× off", f"{ratio:.1f}× ({ratio_quiet:.1f}× without events)",
         ratio >= 10),
        (f"paced p99 ≤ delay + 2× batch compute ({bound:.0f} ms)", f"{paced['p99_ms']:.1f} ms",
         paced["p99_ms"] <= bound),
        ("online p99 during bulk minus alone ≤ one chunk", f"{extra:+.0f} ms vs "
         f"{f.get('bulk_chunk_ms', 0):.0f} ms", extra <= f.get("bulk_chunk_ms", 0)),
    ]  # fmt: skip
    return lines, checks
