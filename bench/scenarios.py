"""The benchmark scenarios. Each returns a dict of measured figures."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from inferq.bench.data import FEATURES
from inferq.bench.env import ROOT, Worker, env_for
from inferq.common.settings import Settings


def register(settings: Settings, path: Path, name: str) -> None:
    """Register a model artifact as `name` with alias production."""
    from inferq.common.db import make_engine
    from inferq.models import registry

    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, path, name, "production")
    engine.dispose()


def in_process(settings: Settings, model_path: Path, parquet: Path, chunk: int,
               name: str = "bench") -> dict[str, Any]:  # fmt: skip
    """(1) The limit: read -> coerce -> predict -> COPY, one process, no queue, same format.

    ``name`` is a registered model whose input schema the rows are coerced to (the same
    typed columns a worker gets); "bench" means an all-number model.
    """
    import joblib
    from inferq.common.contract import Batch
    from inferq.common.db import make_engine
    from inferq.common.rows.coerce import to_columns
    from inferq.models import registry
    from inferq.models.artifacts import inspect_estimator
    from inferq.producer.sources import ParquetSource, rechunk
    from inferq.workers.copybin import copy_payload, copy_rows
    from inferq.workers.inference import ModelInfo, score_batch
    from inferq.workers.preload import limit_threads

    limit_threads()
    model = joblib.load(model_path)
    engine = make_engine(settings)
    meta: Any = inspect_estimator(model) if name == "bench" else registry.find(engine, name)
    info = ModelInfo.of("bench", 1, model, meta)
    schema = info.schema
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_inprocess")
        conn.exec_driver_sql("CREATE TABLE bench_inprocess (LIKE predictions INCLUDING ALL)")
    started = time.perf_counter()
    rows = 0
    source = ParquetSource(parquet)
    features = schema.names if schema.named else FEATURES
    for piece in rechunk(source.chunks(50_000, ["id", *features], "id"), chunk):
        ids = piece["id"].tolist()
        cols = to_columns(piece[features], schema)
        batch = Batch("bench", 1, ids, cols.x, keys=ids, row_errors=cols.errors, text=cols.text,
                      text_positions=schema.text_positions if cols.text else (),
                      width=schema.width if cols.text else None)  # fmt: skip
        scored = score_batch(model, info, batch)
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            payload = copy_payload(scored, "inprocess", dt.datetime.now(dt.UTC))
            copy_rows(cursor, "bench_inprocess", payload)
        rows += len(ids)
    seconds = time.perf_counter() - started
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE bench_inprocess")
    engine.dispose()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def bulk(
    settings: Settings, model: str, parquet: Path, workers: int, chunk: int, run_id: str
) -> dict[str, Any]:
    """(2) `inferq score` over the same file with `workers` worker processes."""
    worker = Worker.inferq(
        settings, workers, f"bulk{workers}", INFERQ_PRELOAD=f"{model}:production"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "inferq", "score", "-m", model, "-i", str(parquet),
             "--id-column", "id", "--chunk-size", str(chunk), "--run-id", run_id, "--json"],
            env=env_for(settings), cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        worker.stop()
    if out.returncode != 0:
        raise RuntimeError(f"inferq score failed: {out.stderr[-2000:]}")
    summary = json.loads(out.stdout)
    rows = summary["scored_ok"] + summary["scored_error"]
    return {"rows": rows, "seconds": summary["seconds"], "rows_per_s": rows / summary["seconds"]}


def naive(settings: Settings, model_path: Path, rows: int, workers: int) -> dict[str, Any]:
    """(3) One Celery task per row, JSON arguments, one INSERT per row (tutorial style)."""
    import psycopg
    from celery import Celery
    from inferq.bench.data import make_rows

    db_url = settings.database_url or ""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS naive_predictions "
                     "(id text PRIMARY KEY, label int, score double precision)")  # fmt: skip
    extra = {"NAIVE_BROKER": settings.broker_url or "", "NAIVE_DB": db_url,
             "NAIVE_MODEL": str(model_path)}  # fmt: skip
    env = env_for(settings, **extra)
    node = f"naive-{int(time.time())}@localhost"
    argv = [sys.executable, "-m", "celery", "-A", "inferq.bench.naive_app", "worker",
            f"--concurrency={workers}", f"--hostname={node}", "--loglevel=WARNING",
            "--without-gossip", "--without-mingle"]  # fmt: skip
    app = Celery("naive", broker=settings.broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    worker = Worker(argv, env, settings.home_dir / "naive.log", node, app)
    worker.wait_ready()
    frame = make_rows(rows, seed=3)
    try:
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for row_id, values in zip(
                frame["id"], frame[FEATURES].to_numpy().tolist(), strict=True
            ):
                app.send_task("naive.predict", args=(row_id, values), producer=producer)
        with psycopg.connect(db_url) as conn:
            count = "SELECT count(*) FROM naive_predictions"
            while (conn.execute(count).fetchone() or (0,))[0] < rows:
                time.sleep(0.05)
        seconds = time.perf_counter() - started
    finally:
        worker.stop()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def online(
    settings: Settings, rate: float, duration: float, workers: int, model: str = "cheap"
) -> dict[str, Any]:
    """(4) Single-row submits at a fixed rate; latency submit -> committed (ledger commit)."""
    from inferq.bench.data import MIXED_FEATURES, make_mixed_rows, make_rows
    from inferq.common.schema import prediction_batches
    from inferq.producer import InferenceClient
    from sqlalchemy import select

    worker = Worker.inferq(settings, workers, "online", INFERQ_PRELOAD=f"{model}:production")
    n = int(rate * duration)
    if model == "mixed":
        frame = make_mixed_rows(n, seed=5)[MIXED_FEATURES]
    else:
        frame = make_rows(n, seed=5)[FEATURES]
    try:
        with InferenceClient(settings) as client:
            client.submit(model, frame.iloc[:20])  # warm up connections
            ids: list[str] = []
            started = time.perf_counter()
            for i in range(n):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                ids += client.submit(model, frame.iloc[i : i + 1])
            achieved = n / (time.perf_counter() - started)
            results = client.wait(ids, timeout=120)
            batches = {r.batch_id for r in results}
            with client.engine.connect() as conn:
                rows = conn.execute(
                    select(
                        prediction_batches.c.submitted_at, prediction_batches.c.committed_at
                    ).where(prediction_batches.c.batch_id.in_(batches))
                ).all()
    finally:
        worker.stop()
    ms = np.array([(c - s).total_seconds() * 1000 for s, c in rows])
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"jobs": n, "rate": achieved, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
            "max_ms": float(ms.max())}  # fmt: skip


def model_memory_mb(model_path: Path) -> float:
    """Resident memory a model takes once loaded (RSS growth of a fresh process)."""
    code = (
        "import joblib, psutil, sklearn.ensemble, sklearn.pipeline, sklearn.linear_model;"
        "p = psutil.Process(); a = p.memory_info().rss;"
        f"m = joblib.load({str(model_path)!r}); print((p.memory_info().rss - a) / 2**20)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def memory(settings: Settings, model: str, model_path: Path, workers: int) -> dict[str, Any]:
    """(5) USS/PSS of the worker parent and children: baseline (small model only), the large
    model preloaded before fork, and the large model loaded in each child."""
    import psutil
    from inferq.bench.data import make_rows
    from inferq.producer import InferenceClient

    out: dict[str, Any] = {"model_mb": model_memory_mb(model_path)}
    configs = (
        ("baseline", "cheap", {"INFERQ_PRELOAD": "cheap:production"}),
        ("preloaded", model, {"INFERQ_PRELOAD": f"{model}:production"}),
        ("per_child", model, {"INFERQ_PRELOAD": ""}),
    )
    for label, scored_model, extra in configs:
        worker = Worker.inferq(settings, workers, f"mem-{label}", **extra)
        try:
            with InferenceClient(settings) as client:
                # Enough messages that every child scores with the model (touching its pages).
                ids = []
                for _ in range(workers * 8):
                    ids += client.submit(scored_model, make_rows(200)[FEATURES])
                client.wait(ids, timeout=600)
            time.sleep(1)
            parent_pid, child_pids = worker.pids()
            parent = psutil.Process(parent_pid).memory_full_info()
            children = [psutil.Process(p).memory_full_info() for p in child_pids]
        finally:
            worker.stop()
        out[label] = {
            "parent_uss_mb": parent.uss / 2**20,
            "parent_pss_mb": parent.pss / 2**20,
            "child_uss_mb": [c.uss / 2**20 for c in children],
            "child_pss_mb": [c.pss / 2**20 for c in children],
        }
    base = max(out["baseline"]["child_uss_mb"])
    out["extra_child_mb"] = max(out["preloaded"]["child_uss_mb"]) - base
    out["extra_child_per_child_load_mb"] = max(out["per_child"]["child_uss_mb"]) - base
    return out
