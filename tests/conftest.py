"""Shared fixtures: real Postgres/Redis (skip locally when absent, fail when CI=true),
tiny real scikit-learn models, and real `celery worker` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
from inferq.common.settings import Settings

from inferq.procs import stop_worker

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN_URL = os.environ.get("INFERQ_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("INFERQ_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REPO = Path(__file__).resolve().parent.parent


def unavailable(what: str, exc: BaseException) -> None:
    """Skip locally when a real service is missing; fail in CI, where it must be there."""
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if CI:
        pytest.fail(f"CI=true requires {message}")
    pytest.skip(message)


# ----- real services ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_admin() -> str:
    """Admin URL of the real PostgreSQL server."""
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    """A fresh database `inferq_test_<random>` for this test, dropped afterwards."""
    import psycopg

    name = f"inferq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis db number of its own (empty when taken, flushed afterwards)."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        unavailable("Redis", exc)
    for db in np.random.default_rng().permutation(np.arange(1, 16)).tolist():
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        # SETNX a claim key so two concurrent sessions never share a db.
        if client.dbsize() == 0 and client.set("inferq-test-claim", "1", nx=True, ex=3600):
            break
    else:
        pytest.skip("no free Redis db number (1-15 all in use)")
    yield f"{REDIS_URL}/{db}"
    client.flushdb()


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    """Settings isolated under tmp_path, with queue names unique to this test."""
    tag = uuid.uuid4().hex[:8]
    return Settings(  # type: ignore[arg-type]
        home=tmp_path / "home",
        model_store=tmp_path / "store",
        online_queue=f"online-{tag}",
        bulk_queue=f"bulk-{tag}",
        **kw,
    )


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Embedded-default settings (filesystem broker + SQLite), migrated."""
    from inferq import migrations

    settings = make_settings(tmp_path)
    migrations.upgrade(settings)
    return settings


@pytest.fixture
def pg_settings(tmp_path: Path, pg_url: str, redis_url: str) -> Settings:
    """Settings on the real Redis and a fresh, migrated Postgres database."""
    from inferq import migrations

    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url)
    migrations.upgrade(settings)
    return settings


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for a subprocess that must see the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(
        INFERQ_HOME=str(settings.home_dir),
        INFERQ_MODEL_STORE=str(settings.model_store_dir),
        INFERQ_ONLINE_QUEUE=settings.online_queue,
        INFERQ_BULK_QUEUE=settings.bulk_queue,
        INFERQ_BATCH_SIZE=str(settings.batch_size),
        INFERQ_VISIBILITY_TIMEOUT=str(settings.visibility_timeout),
        INFERQ_TASK_TIME_LIMIT=str(settings.task_time_limit),
        INFERQ_UNACKED_RESTORE_INTERVAL=str(settings.unacked_restore_interval),
        INFERQ_INFLIGHT_LEDGER=str(settings.inflight_ledger).lower(),
        INFERQ_INFLIGHT_STALE_AFTER=str(settings.stale_after),
        INFERQ_RECONCILE_INTERVAL=str(settings.reconcile_interval),
        INFERQ_ONLINE_MAX_BATCH_SIZE=str(settings.online_max_batch_size),
        INFERQ_ONLINE_MAX_DELAY_MS=str(settings.online_max_delay_ms),
        INFERQ_CONSUMER_STALL_SECONDS=str(settings.consumer_stall_seconds),
        INFERQ_LIVENESS_TIMEOUT=str(settings.liveness_timeout),
        INFERQ_BROKER_WAIT_REPLICAS=str(settings.broker_wait_replicas),
        INFERQ_START_CHECK=settings.start_check,
        INFERQ_RELOAD_INTERVAL=str(settings.reload_interval),
        INFERQ_SHADOW_MAX_MS=str(settings.shadow_max_ms),
        INFERQ_ALIAS_CACHE_SECONDS=str(settings.alias_cache_seconds),
    )
    if settings.online_batching:
        env["INFERQ_ONLINE_BATCHING"] = settings.online_batching
    if settings.broker_url:
        env["INFERQ_BROKER_URL"] = settings.broker_url
    if settings.database_url:
        env["INFERQ_DATABASE_URL"] = settings.database_url
    if settings.sentinel_master:
        env["INFERQ_SENTINEL_MASTER"] = settings.sentinel_master
    return env


# ----- tiny real models ------------------------------------------------------------------
@dataclass
class ModelFile:
    """A fitted model dumped to disk, with data to score."""

    path: Path
    model: object
    x: object  # DataFrame or ndarray the model accepts


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def binary_model(models_dir: Path) -> ModelFile:
    """Scaler + logistic regression fitted on a DataFrame (30 named features, 2 classes)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer(as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(data.data, data.target)
    path = models_dir / "binary.joblib"
    joblib.dump(model, path)
    return ModelFile(path, model, data.data)


@pytest.fixture(scope="session")
def multiclass_model(models_dir: Path) -> ModelFile:
    """Random forest on a bare ndarray (4 unnamed features, 3 string classes)."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    labels = np.array(["setosa", "versicolor", "virginica"])[data.target]
    model = RandomForestClassifier(n_estimators=15, random_state=0).fit(data.data, labels)
    path = models_dir / "multiclass.joblib"
    joblib.dump(model, path)
    return ModelFile(path, model, data.data)


@pytest.fixture(scope="session")
def regressor_model(models_dir: Path) -> ModelFile:
    """Ridge regression on 10 unnamed features."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes()
    model = Ridge().fit(data.data, data.target)
    path = models_dir / "regressor.joblib"
    joblib.dump(model, path)
    return ModelFile(path, model, data.data)


# ----- real worker processes -------------------------------------------------------------
class WorkerProcess:
    """A real `celery -A inferq.workers.app worker` subprocess, stopped at teardown."""

    def __init__(self, settings: Settings, log: Path, concurrency: int = 2, name: str = "w"):
        self.log = log
        self.hostname = f"{name}-{uuid.uuid4().hex[:6]}@%h"
        cmd = [
            sys.executable, "-m", "celery", "-A", "inferq.workers.app", "worker",
            f"--concurrency={concurrency}", "--pool=prefork", "--loglevel=INFO",
            f"--queues={settings.online_queue},{settings.bulk_queue}",
            f"--hostname={self.hostname}", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=settings_env(settings),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        """Everything the worker logged so far."""
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until Celery logs 'ready.'; fail with the log if the worker died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        """Stop the worker (warm shutdown); kill its whole process group if it hangs."""
        stop_worker(self.proc)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[object]:
    """Factory: start_worker(settings, concurrency=2) -> ready WorkerProcess."""
    started: list[WorkerProcess] = []

    def _start(settings: Settings, concurrency: int = 2, name: str = "w") -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log", concurrency, name)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield _start
    for worker in started:
        worker.stop()
