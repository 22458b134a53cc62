"""Reproduce the warm-shutdown hang (RELIABILITY.md, "Known limits") in a loop.

Each run: a fresh Postgres database and a free Redis db number (claimed like the tests'
``redis_url`` fixture), migrated; the breast-cancer LogisticRegression pipeline registered
as production "cancer"; a real ``celery -A inferq.workers.app worker --pool=prefork``
started like tests/conftest.py's WorkerProcess; ~20,000 rows submitted in 500-row messages;
SIGTERM to the worker's main process at ``--moment`` (busy: after a few batches committed;
ready: right after ' ready.'; idle: after every batch committed); then the time to exit.
A run still alive after ``--grace`` s gets py-spy dumps of the main process and every child,
``ps`` and thread lists and the log tail saved to /tmp/shutdown_hangs/, then SIGKILL.

    .venv/bin/python scripts/shutdown_loop.py --runs 50 [--grace 30] [--moment busy|ready|idle]
        [--concurrency 2] [--app MODULE]  (a module that imports inferq.workers.app and patches)
Exit status 1 when any run hung.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
HANGS = Path("/tmp/shutdown_hangs")

from tests.conftest import PG_ADMIN_URL, REDIS_URL, make_settings, settings_env  # noqa: E402
from tests.integration.checker import committed_batches as committed  # noqa: E402


def fit_model(folder: Path) -> tuple[Path, object]:
    """Scaler + LogisticRegression on breast cancer, dumped with joblib; (path, features)."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer(as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    joblib.dump(model.fit(data.data, data.target), folder / "binary.joblib")
    return folder / "binary.joblib", data.data


def rows(base, n: int):
    import numpy as np  # as tests/integration/test_faults.py's _rows

    rng = np.random.default_rng(3)
    return base.iloc[rng.integers(0, len(base), n)] * rng.normal(1, 0.05, (n, base.shape[1]))


def claim_redis_db():
    """A Redis db number nobody uses (SETNX claim key, as tests/conftest.py does)."""
    import redis

    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        if client.dbsize() == 0 and client.set("inferq-test-claim", "1", nx=True, ex=3600):
            return f"{REDIS_URL}/{db}", client
    raise SystemExit("no free Redis db number (1-15 all in use)")


def sh(cmd: list[str], timeout: float = 30) -> str:
    try:  # a dump that fails must not stop the report
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        return out.stdout + out.stderr
    except Exception as exc:
        return f"{cmd[0]} failed: {exc}\n"


def dump_hang(run: int, main_pid: int, log: Path) -> Path:
    """py-spy stacks of the main process (native) and its children (locals), ps, log tail."""
    HANGS.mkdir(exist_ok=True)
    children = sh(["pgrep", "-P", str(main_pid)]).split()
    parts = [f"# run {run}: main pid {main_pid}, children {children}\n"]
    pids = ["--pid", str(main_pid), "--ppid", str(main_pid)]
    parts.append(sh(["ps", "-L", "-o", "pid,ppid,tid,stat,wchan:20,cmd", *pids]))
    py_spy = str(Path(sys.executable).parent / "py-spy")
    # --locals on the children: a job read mid-body shows its size and remaining bytes.
    for pid, flag in [(str(main_pid), "--native"), *((c, "--locals") for c in children)]:
        parts.append(
            f"\n## py-spy dump {flag} --pid {pid}\n" + sh([py_spy, "dump", flag, "--pid", pid])
        )
    parts.append("\n## worker log tail\n" + log.read_text(errors="replace")[-8000:])
    out = HANGS / f"hang-{time.strftime('%Y%m%d-%H%M%S')}-run{run}.txt"
    out.write_text("\n".join(parts))
    return out


def one_run(run: int, args: argparse.Namespace, model_path: Path, x) -> tuple[float | None, int]:
    """One scenario; (seconds from SIGTERM to exit or None if it hung, exit code)."""
    import psycopg
    from inferq.common.db import make_engine
    from inferq.models import registry
    from inferq.producer import InferenceClient

    from inferq import migrations

    tmp = Path(tempfile.mkdtemp(prefix="shutdown-loop-"))
    name = f"inferq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_url, rclient = claim_redis_db()
    proc, engine = None, None
    try:
        settings = make_settings(
            tmp, database_url=f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", broker_url=redis_url,
            visibility_timeout=8, task_time_limit=6, unacked_restore_interval=2,
            inflight_stale_after=12, reconcile_interval=1,
        )  # fmt: skip
        migrations.upgrade(settings)
        engine = make_engine(settings)
        registry.register(engine, settings.model_store_dir, model_path, "cancer", "production")
        log = tmp / "worker.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", args.app, "worker",
            f"--concurrency={args.concurrency}", "--pool=prefork", "--loglevel=INFO",
            f"--queues={settings.online_queue},{settings.bulk_queue}",
            f"--hostname=loop-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=REPO, env=settings_env(settings), stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        if args.moment != "ready":
            with InferenceClient(settings.model_copy(update={"batch_size": 500}),
                                 engine=engine) as client:  # fmt: skip
                client.submit("cancer", rows(x, args.rows))
            want = args.rows // 500 if args.moment == "idle" else args.batches
            deadline = time.monotonic() + 60
            while committed(engine) < want and time.monotonic() < deadline:
                time.sleep(0.01)
        done = committed(engine)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            code = proc.wait(args.grace)
            took: float | None = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            took, code = None, -999
            print(f"run {run}: HUNG, dump in {dump_hang(run, proc.pid, log)}", flush=True)
        print(f"run {run}: {done} batches committed at SIGTERM, exit "
              f"{'HUNG' if took is None else f'{took:.2f}s'} code {code}", flush=True)  # fmt: skip
        return took, code
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if engine is not None:
            engine.dispose()
        rclient.flushdb()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the scenario ``--runs`` times; print a summary; 1 if any run hung."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--grace", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--batches", type=int, default=3, help="committed before SIGTERM (busy)")
    p.add_argument("--moment", choices=["busy", "ready", "idle"], default="busy")
    p.add_argument("--app", default="inferq.workers.app", help="Celery app (try a patched one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model_path, x = fit_model(Path(folder))
        results = [one_run(i + 1, args, model_path, x) for i in range(args.runs)]
    times = [t for t, _ in results if t is not None]
    hung = len(results) - len(times)
    codes = {c: sum(1 for _, k in results if k == c) for c in {k for _, k in results}}
    print(f"\nruns {len(results)}, finished within {args.grace:.0f}s: {len(times)}, hung: {hung}")
    if times:
        print(f"exit time: median {statistics.median(times):.2f}s, max {max(times):.2f}s, "
              f"min {min(times):.2f}s")  # fmt: skip
    print(f"exit codes (-999 = hung): {codes}")
    return 1 if hung else 0


if __name__ == "__main__":
    sys.exit(main())
