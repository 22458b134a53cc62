"""`inferq demo`: the whole pipeline on whatever broker/database the settings name.

With no INFERQ_* variables that is the embedded default (filesystem broker + SQLite under
INFERQ_HOME); with Redis/Postgres configured, the same steps run on them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from inferq.common.settings import Settings
from inferq.procs import stop_worker

MODEL_NAME = "breast-cancer"


def _train(path: Path) -> tuple[Any, Any]:
    """Fit a scaler + logistic regression on scikit-learn's bundled breast cancer data."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer(as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(data.data, data.target)
    joblib.dump(model, path)
    return data.data, data.target


def start_worker(settings: Settings, concurrency: int, hostname: str) -> subprocess.Popen[bytes]:
    """Start `inferq worker` as a subprocess with the same settings."""
    env = dict(os.environ)
    env["INFERQ_HOME"] = str(settings.home_dir)
    env["INFERQ_MODEL_STORE"] = str(settings.model_store_dir)
    log = settings.home_dir / "demo-worker.log"
    return subprocess.Popen(
        [sys.executable, "-m", "inferq", "worker", f"--concurrency={concurrency}",
         f"--hostname={hostname}", "--loglevel=info"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def run_demo(
    settings: Settings, *, rows: int, concurrency: int, timeout: float, quiet: bool = False
) -> dict[str, Any]:
    """Train -> register -> start worker -> submit ``rows`` rows -> wait -> summarise."""
    import numpy as np

    from inferq import migrations
    from inferq.common.db import make_engine
    from inferq.models import registry
    from inferq.producer import InferenceClient

    console = Console(quiet=quiet)
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    where = (
        f"embedded broker at {settings.broker_folder}"
        if settings.embedded_broker
        else "broker " + settings.effective_broker_url.split("@")[-1]
    )
    db = "SQLite " + settings.effective_database_url.removeprefix("sqlite:///")
    if settings.database_url:
        db = "database " + settings.effective_database_url.split("@")[-1]
    console.print(f"[bold]inferq demo[/] — {where}; {db}")

    migrations.upgrade(settings)
    engine = make_engine(settings)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "model.joblib"
        features, target = _train(artifact)
        mv = registry.register(
            engine, settings.model_store_dir, artifact, MODEL_NAME, alias="production"
        )
    console.print(f"1. trained and registered [bold]{mv.ref}[/] ({mv.estimator}) as production")

    hostname = f"demo-{os.getpid()}@%h"
    worker = start_worker(settings, concurrency, hostname)
    console.print(f"2. started worker pid {worker.pid} ({concurrency} processes)")
    try:
        idx = np.arange(rows) % len(features)
        frame = features.iloc[idx].reset_index(drop=True)
        # Two deliberately broken rows show what an error row looks like.
        frame.iloc[7, 0] = np.nan
        frame.iloc[11, 3] = np.inf
        keys = [f"patient-{i}" for i in range(rows)]
        with InferenceClient(settings, engine=engine) as client:
            started = time.perf_counter()
            job_ids = client.submit(MODEL_NAME, frame, keys=keys)
            console.print(f"3. submitted {len(job_ids)} rows in {settings.batch_size}-row messages")
            results = client.wait(job_ids, timeout=timeout)
            elapsed = time.perf_counter() - started
    finally:
        stop_worker(worker, grace=20)
    ok = [r for r in results if r.ok]
    truth = target.to_numpy()[idx]
    correct = sum(int(r.label == str(truth[i])) for i, r in enumerate(results) if r.ok)
    summary = {
        "model": mv.ref,
        "rows": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "seconds": round(elapsed, 3),
        "rows_per_second": round(len(results) / elapsed, 1),
        "accuracy": round(correct / max(1, len(ok)), 4),
        "workers": sorted({r.worker or "" for r in results}),
        "error_examples": [r.error for r in results if not r.ok][:2],
    }
    table = Table("key", "status", "label", "score", "error", title="first results")
    for r in results[:5] + [r for r in results if not r.ok][:2]:
        table.add_row(
            r.key or "",
            r.status,
            r.label or "",
            "" if r.score is None else f"{r.score:.4f}",
            r.error or "",
        )
    console.print(table)
    console.print(
        f"4. {summary['rows']} results ({summary['ok']} ok, {summary['errors']} errors) in "
        f"{elapsed:.2f}s = [bold]{summary['rows_per_second']:.0f} rows/s[/] end to end; "
        f"accuracy on the scored rows {summary['accuracy']:.3f}"
    )
    console.print(
        "Try it in SQL:\n  SELECT label, count(*), avg(score) FROM predictions\n"
        f"  WHERE model_name = '{MODEL_NAME}' AND model_version = {mv.version} "
        "AND status = 'ok' GROUP BY label;"
    )
    engine.dispose()
    return summary
