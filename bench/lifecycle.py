"""`python -m inferq.bench.lifecycle`: what the model-lifecycle features cost (issue 13).

One invocation against this machine's real Redis and Postgres (a throwaway database and Redis
db, as `python -m inferq.bench`): (1) scikit-learn vs ONNX for a forest and a linear pipeline,
online latency and bulk throughput; (2) bulk throughput with and without a shadow version;
(3) hot reload of a large model under load: time to serve, pool recycling, memory per child.
Prints the results and rewrites the `bench-lifecycle` block of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from inferq.bench.data import FEATURES, make_rows
from inferq.bench.data import _labels as labels  # the main benchmark's target: same forest
from inferq.bench.env import ROOT, Worker, bench_env, env_for
from inferq.bench.lifecycle_report import markdown, write
from inferq.common.settings import Settings
from rich.console import Console
from rich.markdown import Markdown

console = Console()
MB = 2**20
TEXT, NUMBERS = ["c0", "c1"], [f"n{i}" for i in range(18)]
LINEAR_FEATURES = TEXT + NUMBERS
VOCAB = ["lyon", "paris", "berlin", "madrid", "rome", "oslo", "porto", "gent"]


def parse_args() -> argparse.Namespace:
    """Command line; --quick shrinks every size."""
    p = argparse.ArgumentParser(prog="python -m inferq.bench.lifecycle", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pool processes")
    p.add_argument("--rows", type=int, help="bulk rows per run (default 200,000)")
    p.add_argument("--chunk-size", type=int, help="bulk rows per message (default 10,000)")
    p.add_argument("--online-rate", type=float, default=50.0, help="online jobs/s")
    p.add_argument("--online-seconds", type=float, help="per version (default 20)")
    p.add_argument("--big-rows", type=int, help="training rows of the large model (50,000)")
    p.add_argument("--big-trees", type=int, help="trees of the large model (default 60)")
    p.add_argument("--reload-rate", type=float, default=20.0, help="jobs/s during the promote")
    p.add_argument("--alias-cache", type=float, help="reload producer's alias cache (s)")
    p.add_argument("--skip", default="", help="comma list: onnx,shadow,reload")
    p.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="'-' to skip")
    a = p.parse_args()
    a.rows = a.rows or (20_000 if a.quick else 200_000)
    # Quick: 10 chunks, so each child gets past the shadow's first (probe) call.
    a.chunk_size = a.chunk_size or (2_000 if a.quick else 10_000)
    a.online_seconds = a.online_seconds or (6.0 if a.quick else 20.0)
    a.big_rows = a.big_rows or (20_000 if a.quick else 50_000)
    a.big_trees = a.big_trees or (40 if a.quick else 60)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    return a


def linear_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """n rows for the linear pipeline: 2 text categories + 18 numbers, plus a unique `id`."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.choice(VOCAB, n) for c in TEXT})
    for c in NUMBERS:
        frame[c] = rng.normal(size=n)
    frame.insert(0, "id", np.char.add("l", np.arange(n).astype(str)))
    return frame


def train(folder: Path, big_rows: int, big_trees: int) -> dict[str, Path]:
    """Fit and dump the forest, its shadow, the linear pipeline and the large model."""
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, lin = make_rows(20_000, seed=1)[FEATURES], linear_rows(20_000, seed=1)
    y_lin = ((lin.n0 + (lin.c0 == "paris") - (lin.c1 == "rome")) > 0).astype(int)
    prep = ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), TEXT),
                              ("numbers", StandardScaler(), NUMBERS)])  # fmt: skip
    big_x = make_rows(big_rows, seed=2)[FEATURES]
    # 20% flipped labels: fully grown trees end in a leaf per few rows, which makes the
    # model large (~3 MB per tree at 50k rows) while it still fits in seconds.
    flip = np.random.default_rng(0).random(big_rows) < 0.2
    big_y = np.where(flip, 1 - labels(big_x), labels(big_x))
    forest = {"max_depth": 12, "n_jobs": -1}
    models = {
        "forest": RandomForestClassifier(100, random_state=0, **forest).fit(x, labels(x)),
        "shadow": RandomForestClassifier(100, random_state=1, **forest).fit(x, labels(x)),
        "linear": make_pipeline(prep, LogisticRegression(max_iter=500)).fit(
            lin[LINEAR_FEATURES], y_lin),
        "big": ExtraTreesClassifier(big_trees, random_state=0, n_jobs=-1).fit(big_x, big_y),
    }  # fmt: skip
    paths = {}
    for name, model in models.items():
        if hasattr(model, "n_jobs"):
            model.set_params(n_jobs=1)  # parallelism comes from worker processes
        paths[name] = folder / f"{name}.joblib"
        joblib.dump(model, paths[name])
    return paths


def register_all(settings: Settings, paths: dict[str, Path], folder: Path) -> dict[str, Any]:
    """Register v1 (production) and v2 (ONNX) of forest and linear, forest@3, big@1 and @2."""
    from inferq.common.db import make_engine
    from inferq.models import gates, registry

    engine, store = make_engine(settings), settings.model_store_dir
    refs = {"forest": folder / "forest_ref.parquet", "linear": folder / "linear_ref.parquet"}
    make_rows(2000, seed=21)[FEATURES].to_parquet(refs["forest"])
    linear_rows(2000, seed=21)[LINEAR_FEATURES].to_parquet(refs["linear"])
    out: dict[str, Any] = {}
    for name, ref in refs.items():
        registry.register(engine, store, paths[name], name, "production", reference=ref)
        mv = registry.register(engine, store, paths[name], name, reference=ref, force=True)
        started = time.perf_counter()
        mv = gates.optimize_version(engine, store, mv, ref)
        report = mv.onnx or {}
        if mv.runtime != "onnx":
            raise RuntimeError(f"{mv.ref} not optimized: {report.get('reason')}")
        out[name] = {"optimize_s": time.perf_counter() - started,
                     "onnx_kb": report["size_bytes"] / 1024,
                     "max_abs_diff": report["parity"]["max_abs_diff"]}  # fmt: skip
    registry.register(engine, store, paths["shadow"], "forest", reference=refs["forest"])
    registry.register(engine, store, paths["big"], "big", "production")
    registry.register(engine, store, paths["big"], "big", force=True)
    engine.dispose()
    return out


def _sql(settings: Settings, query: str, **params: Any) -> list[Any]:
    """Rows of one query (psycopg placeholders) on the bench database."""
    import psycopg

    with psycopg.connect(settings.database_url or "") as conn:
        return conn.execute(query, params).fetchall()


def warm(client: Any, name: str, version: int, rows: Any, workers: int) -> None:
    """Score with ``name@version`` in every child first (ONNX session made, pages touched)."""
    ids: list[str] = []
    for _ in range(workers * 8):
        ids += client.submit(name, rows, version=version)
    client.wait(ids, timeout=600)


def online(client: Any, name: str, version: int, frame: Any, rate: float, secs: float) -> dict:
    """Paced single-row submits of ``name@version``; latency = scored_at - submitted_at."""
    ids: list[str] = []
    started = time.perf_counter()
    for i in range(int(rate * secs)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ids += client.submit(name, frame.iloc[i : i + 1], version=version)
    results = client.wait(ids, timeout=300)
    ms = np.array([(r.scored_at - r.submitted_at).total_seconds() * 1000 for r in results])
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def bulk(settings: Settings, ref: str, parquet: Path, chunk: int, run_id: str) -> dict:
    """`inferq score` of ``ref`` over ``parquet`` against the running worker."""
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "score", "-m", ref, "-i", str(parquet), "--id-column",
         "id", "--chunk-size", str(chunk), "--run-id", run_id, "--json"],
        env=env_for(settings), cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"inferq score {ref} failed: {out.stderr[-2000:]}")
    s = json.loads(out.stdout)
    rows = s["scored_ok"] + s["scored_error"]
    # The model call alone (ledger), to tell the runtime's speed from the pipeline around it.
    q = "SELECT avg(predict_ms) FROM prediction_batches WHERE run_id = %(run)s"
    predict_ms = float(_sql(settings, q, run=run_id)[0][0] or 0)
    return {"rows": rows, "rows_per_s": rows / s["seconds"], "predict_ms": predict_ms}


def runtimes(settings: Settings, files: dict[str, Path], args: argparse.Namespace) -> dict:
    """(1) forest and linear, v1 (scikit-learn) and v2 (ONNX): online latency, then bulk."""
    from inferq.producer import InferenceClient

    preload = "forest@1,forest@2,linear@1,linear@2"
    worker = Worker.inferq(settings, args.workers, "onnx", INFERQ_PRELOAD=preload)
    n = int(args.online_rate * args.online_seconds)
    frames = {"forest": make_rows(n, seed=5)[FEATURES],
              "linear": linear_rows(n, seed=5)[LINEAR_FEATURES]}  # fmt: skip
    out: dict[str, Any] = {}
    try:
        with InferenceClient(settings) as client:
            for name, frame in frames.items():
                for v in (1, 2):
                    console.print(f"{name}@{v}: online {args.online_rate:g}/s, then bulk ...")
                    warm(client, name, v, frame.iloc[:50], args.workers)
                    r = online(client, name, v, frame, args.online_rate, args.online_seconds)
                    r["bulk"] = bulk(settings, f"{name}@{v}", files[name], args.chunk_size,
                                     f"rt-{name}-{v}")  # fmt: skip
                    out[f"{name}@{v}"] = r | {"checked": 0, "wrong": 0}
    finally:
        worker.stop()
    # Every row these versions scored must carry the runtime the registry says serves it.
    q = ("SELECT model_name, model_version, runtime, status, count(*) FROM predictions "
         "WHERE model_name IN ('forest', 'linear') GROUP BY 1, 2, 3, 4")  # fmt: skip
    for name, v, rt, status, count in _sql(settings, q):
        out[f"{name}@{v}"]["checked"] += count
        if rt != ("sklearn" if v == 1 else "onnx") or status != "ok":
            out[f"{name}@{v}"]["wrong"] += count
    return out


def shadow_cost(settings: Settings, parquet: Path, args: argparse.Namespace) -> dict:
    """(2) Bulk forest@1 without, then with forest@3 as its shadow."""
    from inferq.common.db import make_engine
    from inferq.models import lifecycle

    engine = make_engine(settings)
    out: dict[str, Any] = {"max_ms": settings.shadow_max_ms}
    try:
        for label, shadow in (("off", None), ("on", 3)):
            lifecycle.set_shadow(engine, "forest", shadow)
            console.print(f"shadow {label}: bulk forest@1 ...")
            # A preloaded model's shadow is preloaded too (workers/preload.py _wanted).
            worker = Worker.inferq(settings, args.workers, f"shadow-{label}",
                                   INFERQ_PRELOAD="forest@1")  # fmt: skip
            try:
                r = bulk(settings, "forest@1", parquet, args.chunk_size, f"shadow-{label}")
            finally:
                worker.stop()
            q = ("SELECT count(*) FROM shadow_predictions s JOIN predictions p USING (job_id) "
                 "WHERE p.run_id = %(run)s")  # fmt: skip
            out[label] = r | {"shadow_rows": _sql(settings, q, run=f"shadow-{label}")[0][0]}
        lifecycle.set_shadow(engine, "forest", None)
    finally:
        engine.dispose()
    return out


def produce(settings: Settings, model: str, rate: float, halt: threading.Event, ids: list[str],
            failed: list[Exception]) -> None:  # fmt: skip
    """One-row submits to ``model``'s production alias at ``rate`` until ``halt`` is set."""
    from inferq.producer import InferenceClient

    x = make_rows(5000, seed=9)[FEATURES].to_numpy()
    with InferenceClient(settings) as client:
        started, i = time.perf_counter(), 0
        while not halt.is_set():
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                halt.wait(delay)
            try:
                ids += client.submit(model, x[i % len(x) : i % len(x) + 1])
            except Exception as exc:  # counted and reported, never fatal
                failed.append(exc)
            i += 1


def _memory(worker: Worker) -> dict[str, Any]:
    """RSS/USS/PSS of the worker's main process and USS/PSS of each pool process (MB)."""
    import psutil

    parent_pid, kids = worker.pids()
    p = psutil.Process(parent_pid).memory_full_info()
    mems = [psutil.Process(k).memory_full_info() for k in kids]
    return {"rss": p.rss / MB, "uss": p.uss / MB, "pss": p.pss / MB, "pids": kids,
            "child_uss": [m.uss / MB for m in mems],
            "child_pss": [m.pss / MB for m in mems]}  # fmt: skip


def _log_events(log: Path, since: dt.datetime) -> dict[str, Any]:
    """From the worker log after ``since``: main-process load time, on-demand child loads."""
    # Celery logs local time; "registry changed" is logged once the main process has loaded.
    out: dict[str, Any] = {"loaded_s": None, "load_s": None, "on_demand": 0}
    line = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+): \w+/[^\]]*\] (.*)"
    for m in re.finditer(line, log.read_text(errors="replace")):
        at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        changed = re.match(r"registry changed: .* in ([\d.]+) s", m.group(2))
        if at >= since and changed and out["loaded_s"] is None:
            out["loaded_s"] = (at - since).total_seconds()
            out["load_s"] = float(changed.group(1))
        out["on_demand"] += at >= since and "on demand in pid" in m.group(2)
    return out


def hot_reload(settings: Settings, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(3) Promote big@2 under load: time to serve, pool recycling, error rows, memory."""
    from inferq.bench.scenarios import model_memory_mb
    from inferq.common.db import make_engine
    from inferq.common.errors import ResultsTimeout
    from inferq.models import lifecycle
    from inferq.producer import InferenceClient

    cache = settings.alias_cache_seconds if args.alias_cache is None else args.alias_cache
    out: dict[str, Any] = {"file_mb": path.stat().st_size / MB, "loaded_mb": model_memory_mb(path),
                           "interval": settings.reload_interval, "alias_cache": cache}  # fmt: skip
    worker = Worker.inferq(settings, args.workers, "reload", INFERQ_PRELOAD="big:production")
    rows, halt = make_rows(200, seed=4)[FEATURES], threading.Event()
    ids: list[str] = []
    failed: list[Exception] = []
    try:
        with InferenceClient(settings) as client:
            warm(client, "big", 1, rows, args.workers)
            time.sleep(1)
            out["before"] = _memory(worker)
            old = set(out["before"]["pids"])
            producer = threading.Thread(target=produce, daemon=True, args=(
                settings.model_copy(update={"alias_cache_seconds": cache}), "big",
                args.reload_rate, halt, ids, failed))  # fmt: skip
            producer.start()
            time.sleep(3)  # steady traffic before the promote
            lifecycle.promote(engine := make_engine(settings), "big", 2)
            engine.dispose()
            t0, wall, local = time.monotonic(), dt.datetime.now(dt.UTC), dt.datetime.now()
            out["recycled_s"] = None
            while time.monotonic() - t0 < 120:
                kids = set(worker.pids()[1])
                if len(kids) == args.workers and not kids & old:
                    out["recycled_s"] = time.monotonic() - t0
                    break
                time.sleep(0.05)
            # Past the producer's alias cache, so v2 rows flow for a while before stopping.
            time.sleep(max(0.0, cache + 3 - (time.monotonic() - t0)))
            halt.set()
            producer.join()
            try:
                results = client.wait(ids, timeout=300)
            except ResultsTimeout:
                results = client.results(ids)
            v2 = [r.scored_at for r in results if r.model_version == 2 and r.scored_at]
            ms = [(r.scored_at - r.submitted_at).total_seconds() * 1000
                  for r in results if r.scored_at and r.submitted_at]  # fmt: skip
            out |= {"jobs": len(ids), "submit_failed": len(failed),
                    "unanswered": len(ids) - len(results),
                    "errors": Counter(r.error_code or "error" for r in results if not r.ok),
                    "versions": dict(sorted(Counter(r.model_version for r in results).items())),
                    "first_v2_s": (min(v2) - wall).total_seconds() if v2 else None,
                    "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                    "max_ms": float(max(ms))}  # fmt: skip
            warm(client, "big", 2, rows, args.workers)
            time.sleep(1)
            out["after"] = _memory(worker)
    finally:
        worker.stop()
    return out | _log_events(worker.log, local)


def main() -> None:
    """Entry point."""
    args = parse_args()
    started = time.time()
    res: dict[str, Any] = {}
    with bench_env() as settings:
        folder = settings.home_dir / "data"
        folder.mkdir(parents=True)
        console.print("training models ...")
        paths = train(folder, args.big_rows, args.big_trees)
        console.print("registering; optimizing v2 to ONNX ...")
        optimized = register_all(settings, paths, folder)
        files = {"forest": folder / "forest.parquet", "linear": folder / "linear.parquet"}
        make_rows(args.rows, seed=11).to_parquet(files["forest"], row_group_size=100_000)
        linear_rows(args.rows, seed=11).to_parquet(files["linear"], row_group_size=100_000)
        if "onnx" not in args.skip:
            res["onnx"] = {"versions": runtimes(settings, files, args), "optimize": optimized}
        if "shadow" not in args.skip:
            res["shadow"] = shadow_cost(settings, files["forest"], args)
        if "reload" not in args.skip:
            console.print("hot reload: promote under load ...")
            res["reload"] = hot_reload(settings, paths["big"], args)
    block = markdown(res, args, time.time() - started)
    console.print(Markdown(block))
    if str(args.output) != "-":
        write(args.output, block)
        console.print(f"written to {args.output}")


if __name__ == "__main__":
    main()
