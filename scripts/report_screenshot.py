"""Screenshot of `inferq report --html`: docs/report.png (re-runnable).

Builds a demo database with a week of realistic traffic: a churn classifier registered with a
held-out reference (drift baseline + calibration for the accuracy estimate), rows scored
through the worker's own path (score_batch -> monitoring counts -> write_results; no queue,
no worker process), each message then moved to its day and hour. One feature drifts from
day 4, another's category mix changes on the last two days, one day has a burst of bad
input. Ground truth arrives late, as it does: most labels for the older days, some for the
last two, none for today. Then `inferq report churn --days 7 --html` runs (its terminal
screen is printed) and headless Chromium photographs the page.

Needs a Postgres server (realised accuracy reads its views; the demo database is created
and dropped) and Debian's `chromium`:

    python scripts/report_screenshot.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--out docs/report.png] [--rows 5000] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DB = "inferq_report_demo"
FEATURES = ["tenure", "monthly_charges", "support_calls", "plan", "region"]
#: Per day, oldest first (today last): mean shift of tenure (in months), plan mix, bad rows.
TENURE_SHIFT = [0, 0, 0, 1, 4, 7, 10]
PLAN_MIX = [[0.6, 0.3, 0.1]] * 5 + [[0.35, 0.35, 0.3]] * 2
BAD_SHARE = [0.002, 0.001, 0.002, 0.015, 0.002, 0.001, 0.002]
VOLUME = [0.95, 1.0, 1.1, 1.05, 0.9, 1.15, 0.45]  # today is not over
LABELLED = [0.9, 0.88, 0.85, 0.8, 0.55, 0.2, 0.0]  # labels arrive days later


def sample(rng: np.random.Generator, n: int, day: int | None = None) -> Any:
    """Customers; ``day`` None: drawn like the reference."""
    import pandas as pd

    shift = TENURE_SHIFT[day] if day is not None else 0
    mix = PLAN_MIX[day] if day is not None else PLAN_MIX[0]
    frame = pd.DataFrame({
        "tenure": rng.gamma(2.0, 12.0, n) + shift,
        "monthly_charges": rng.normal(65, 20, n).clip(10, None),
        "support_calls": rng.poisson(1.2, n),
        "plan": rng.choice(["basic", "pro", "enterprise"], n, p=mix).astype(object),
        "region": rng.choice(["north", "south", "east", "west"], n,
                             p=[0.3, 0.25, 0.25, 0.2]).astype(object),
    })  # fmt: skip
    logit = (-0.06 * frame.tenure + 0.025 * frame.monthly_charges + 0.45 * frame.support_calls
             - 0.8 * (frame.plan == "enterprise") - 0.6)  # fmt: skip
    frame["churned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def build(url: str, home: Path, rows_per_day: int) -> None:
    """Register, baseline, score a week, move it in time, load late labels."""
    import joblib
    from inferq.common import drift
    from inferq.common.db import make_engine
    from inferq.common.settings import Settings
    from inferq.models import gates, registry
    from inferq.producer.client import InferenceClient
    from inferq.producer.feedback import load_pairs
    from inferq.workers import monitor
    from inferq.workers.inference import ModelInfo, score_batch
    from inferq.workers.results import write_results
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sqlalchemy import text

    from inferq import migrations

    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, model_store=home / "store", database_url=url,  # type: ignore[call-arg]
                        batch_size=500)  # fmt: skip
    migrations.upgrade(settings)
    engine = make_engine(settings)
    rng = np.random.default_rng(7)
    train = sample(rng, 8000)
    model = make_pipeline(
        make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
                                (StandardScaler(), FEATURES[:3])),
        LogisticRegression(max_iter=1000),
    ).fit(train[FEATURES], train.churned)  # fmt: skip
    joblib.dump(model, home / "churn.joblib")
    sample(rng, 5000).to_csv(home / "holdout.csv", index=False)  # held out: not the training set
    mv = registry.register(engine, settings.model_store_dir, home / "churn.joblib", "churn",
                           "production", reference=home / "holdout.csv")  # fmt: skip
    mv = gates.baseline_version(engine, settings.model_store_dir, mv, None, "churned")
    estimator = registry.load(settings.model_store_dir, mv)
    info = ModelInfo.of("churn", mv.version, estimator, mv)
    baseline = drift.Baseline.from_json(mv.baseline)
    base_id = drift.baseline_id(mv.baseline)  # what workers/preload.py keeps beside it
    client = InferenceClient(settings, engine=engine)

    now = dt.datetime.now(dt.UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    moves, labels = [], []
    for day in range(7):
        start = midnight - dt.timedelta(days=6 - day)
        # Traffic from 06:00 to 22:00; today only up to a minute ago.
        end = min(start + dt.timedelta(hours=22), now - dt.timedelta(minutes=1))
        first = min(start + dt.timedelta(hours=6), end - dt.timedelta(minutes=30))
        first = max(first, start)
        n = int(rows_per_day * VOLUME[day])
        frame = sample(rng, n, day)
        rows = frame[FEATURES].astype(object)
        bad = rng.random(n) < BAD_SHARE[day]
        rows.loc[bad, "monthly_charges"] = "n/a"  # a producer sending text: error rows
        batches = client.build_batches("churn", rows, version=mv.version,
                                       keys=[f"c{day}-{i}" for i in range(n)])  # fmt: skip
        times = np.sort(rng.uniform(first.timestamp(), end.timestamp(), len(batches)))
        for i, batch in enumerate(batches):
            scored = score_batch(estimator, info, batch)
            scored.runtime = "sklearn"
            scored.monitor = monitor.batch_counts(baseline, base_id, info.schema, scored)
            worker = f"node-{'ab'[i % 2]}:{1000 + day * 100 + i}"
            write_results(engine, scored, worker, received_at=time.time())
            latency = float(rng.lognormal(np.log(180), 0.6)) * (3.0 if day == 3 else 1.0)
            moves.append((worker, dt.datetime.fromtimestamp(times[i], dt.UTC), latency))
            y = frame.churned.to_numpy()[i * 500 : i * 500 + batch.n_rows]
            keep = scored.ok & (rng.random(batch.n_rows) < LABELLED[day])
            labels += [(j, int(t)) for j, t, k in zip(batch.job_ids, y, keep, strict=True) if k]
        print(f"day {start.date()}: {n:,} rows in {len(batches)} messages", flush=True)
    with engine.begin() as conn:
        for worker, committed, latency_ms in moves:
            p = {"w": worker, "c": committed, "b": committed.replace(minute=0, second=0),
                 "s": committed - dt.timedelta(milliseconds=latency_ms)}  # fmt: skip
            conn.execute(text("UPDATE prediction_batches SET committed_at = :c, received_at = :c,"
                              " submitted_at = :s WHERE worker = :w"), p)  # fmt: skip
            conn.execute(text("UPDATE predictions SET scored_at = :c, submitted_at = :s "
                              "WHERE worker = :w"), p)  # fmt: skip
            for table in ("drift_counts", "accuracy_estimates"):
                conn.execute(text(f"UPDATE {table} SET bucket = :b WHERE worker = :w"), p)
    load_pairs(engine, [j for j, _ in labels], [t for _, t in labels], source="demo")
    print(f"loaded {len(labels):,} late labels", flush=True)
    client.close()
    engine.dispose()


def main() -> None:
    """Build the demo database, print the report, write the screenshot."""
    import psycopg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report.png")
    parser.add_argument("--rows", type=int, default=5000, help="rows per (full) day")
    parser.add_argument("--keep", action="store_true", help="keep the demo database and page")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or sys.exit("install Debian's chromium first")
    tmp = Path(tempfile.mkdtemp(prefix="inferq-report-"))
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    url = f"{args.admin_url.rsplit('/', 1)[0]}/{DB}"
    try:
        build(url, tmp / "home", args.rows)
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
        env.update(INFERQ_DATABASE_URL=url, INFERQ_HOME=str(tmp / "home"),
                   INFERQ_MODEL_STORE=str(tmp / "home" / "store"), COLUMNS="110")  # fmt: skip
        page = tmp / "report.html"
        subprocess.run([sys.executable, "-m", "inferq", "report", "churn", "--days", "7",
                        "--html", str(page)], cwd=REPO, env=env, check=True)  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp / 'chrome'}", f"--screenshot={args.out.resolve()}",
             "--window-size=1200,1600", page.resolve().as_uri()],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
        print(f"wrote {args.out}" + (f" (page: {page}, database: {url})" if args.keep else ""))
    finally:
        if not args.keep:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
