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

MODEL_NAME = "churn"
CITIES = ["lyon", "paris", "berlin", "madrid", "rome", "são paulo"]
PLANS = ["free", "basic", "pro"]
NUMBERS = ["tenure_months", "monthly_spend", "support_calls"]


def make_customers(rows: int, seed: int = 0) -> tuple[Any, Any]:
    """A mixed-type table like the ones people score: text categories, integers, a boolean,
    money with a few missing values; and whether each customer churned."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "plan": rng.choice(PLANS, rows, p=[0.5, 0.3, 0.2]),
            "city": rng.choice(CITIES, rows),
            "tenure_months": rng.integers(1, 72, rows),
            "monthly_spend": rng.gamma(2.0, 20.0, rows).round(2),
            "support_calls": rng.poisson(1.5, rows),
            "has_app": rng.random(rows) < 0.6,
        }
    )
    frame.loc[rng.random(rows) < 0.03, "monthly_spend"] = np.nan  # missing, imputed
    logit = (
        1.2 * (frame.plan == "free") - 0.8 * (frame.plan == "pro") - 0.04 * frame.tenure_months
        + 0.5 * frame.support_calls - 0.7 * frame.has_app + 0.4 * (frame.city == "paris")
    )  # fmt: skip
    churned = rng.random(rows) < 1 / (1 + np.exp(-logit.to_numpy(dtype=float)))
    return frame, np.where(churned, "churned", "stayed")


def _train(path: Path) -> tuple[Any, Any]:
    """Fit one-hot (text) + imputer/scaler (numbers) + logistic regression on customers."""
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features, target = make_customers(5000)
    prep = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), ["plan", "city"]),
            ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), NUMBERS),
            ("flags", "passthrough", ["has_app"]),
        ]
    )
    model = make_pipeline(prep, LogisticRegression(max_iter=1000)).fit(features, target)
    joblib.dump(model, path)
    return make_customers(5000, seed=1)


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
    """Train -> register -> start worker -> submit ``rows`` mixed-type rows -> wait -> summarise."""
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
        # NOTE: force: each run trains the same model again, and registers it as a new version
        mv = registry.register(
            engine, settings.model_store_dir, artifact, MODEL_NAME, alias="production", force=True
        )
    console.print(
        f"1. trained and registered [bold]{mv.ref}[/] ({mv.estimator}) as production: "
        f"{mv.schema.describe()}"
    )

    hostname = f"demo-{os.getpid()}@%h"
    worker = start_worker(settings, concurrency, hostname)
    console.print(f"2. started worker pid {worker.pid} ({concurrency} processes)")
    try:
        idx = np.arange(rows) % len(features)
        frame = features.iloc[idx].reset_index(drop=True)
        # Two deliberately broken rows show what an error row looks like; the few missing
        # monthly_spend values are scored (the model imputes them).
        frame = frame.astype({"tenure_months": object})
        frame.loc[7, "tenure_months"] = "n/a"
        frame.loc[11, "monthly_spend"] = np.inf
        keys = [f"customer-{i}" for i in range(rows)]
        with InferenceClient(settings, engine=engine) as client:
            started = time.perf_counter()
            job_ids = client.submit(MODEL_NAME, frame, keys=keys)
            console.print(f"3. submitted {len(job_ids)} rows in {settings.batch_size}-row messages")
            results = client.wait(job_ids, timeout=timeout)
            elapsed = time.perf_counter() - started
    finally:
        stop_worker(worker, grace=20)
    ok = [r for r in results if r.ok]
    truth = np.asarray(target)[idx]
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
