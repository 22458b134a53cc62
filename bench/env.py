"""A throwaway environment for one benchmark invocation: its own Postgres database, Redis db,
queues and folders on the machine's real servers; removed again at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inferq.common.settings import Settings

from inferq.procs import stop_worker

PG_ADMIN = os.environ.get("INFERQ_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("INFERQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def bench_env() -> Iterator[Settings]:
    """Settings pointing at a fresh database + Redis db; everything is dropped afterwards."""
    import psycopg
    import redis

    from inferq import migrations

    tag = uuid.uuid4().hex[:8]
    db = f"inferq_bench_{tag}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    # An empty db of its own (it is flushed at the end): never one a test or user is using.
    redis_db = next(
        n for n in range(15, 0, -1)
        if redis.Redis.from_url(f"{REDIS}/{n}").dbsize() == 0
        and redis.Redis.from_url(f"{REDIS}/{n}").set("inferq-bench-claim", "1", nx=True, ex=7200)
    )  # fmt: skip
    home = Path(tempfile.mkdtemp(prefix="inferq-bench-"))
    settings = Settings(
        home=home,
        database_url=f"{PG_ADMIN.rsplit('/', 1)[0]}/{db}",
        broker_url=f"{REDIS}/{redis_db}",
        online_queue=f"online-{tag}",
        bulk_queue=f"bulk-{tag}",
    )
    migrations.upgrade(settings)
    try:
        yield settings
    finally:
        redis.Redis.from_url(f"{REDIS}/{redis_db}").flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a subprocess that must see ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(
        INFERQ_HOME=str(settings.home_dir),
        INFERQ_BROKER_URL=settings.broker_url or "",
        INFERQ_DATABASE_URL=settings.database_url or "",
        INFERQ_ONLINE_QUEUE=settings.online_queue,
        INFERQ_BULK_QUEUE=settings.bulk_queue,
        **extra,
    )
    return env


class Worker:
    """An `inferq worker` (or any Celery worker command) subprocess."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log: Path, node: str, app: object
    ) -> None:
        self.log, self.node, self.app = log, node, app
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @classmethod
    def inferq(cls, settings: Settings, concurrency: int, name: str, **extra: str) -> Worker:
        """A real inferq worker with ``concurrency`` prefork processes, ready to consume."""
        from inferq.common.celery import create_celery

        node = f"{name}-{uuid.uuid4().hex[:4]}@{socket.gethostname()}"
        argv = [sys.executable, "-m", "inferq", "worker", f"--concurrency={concurrency}",
                f"--hostname={node}", "--loglevel=WARNING"]  # fmt: skip
        log = settings.home_dir / f"{name}.log"
        worker = cls(argv, env_for(settings, **extra), log, node, create_celery(settings))
        worker.wait_ready()
        return worker

    def wait_ready(self, timeout: float = 120) -> None:
        """Block until the worker answers a control ping (it is consuming)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.app.control.ping(destination=[self.node], timeout=0.5):  # type: ignore[attr-defined]
                return
            if self.proc.poll() is not None:
                text = self.log.read_text(errors="replace")
                raise RuntimeError(f"worker exited:\n{text[-2000:]}")
        raise RuntimeError(f"worker {self.node} did not answer a ping in {timeout}s")

    def pids(self) -> tuple[int, list[int]]:
        """(parent pid, prefork children pids) of the Celery worker."""
        import psutil

        parent = psutil.Process(self.proc.pid)
        return parent.pid, [c.pid for c in parent.children()]

    def stop(self) -> None:
        """Warm shutdown, then kill the process group."""
        stop_worker(self.proc)
