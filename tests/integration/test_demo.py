"""`inferq demo`: the main job on a bare machine, and the same command on Redis/Postgres."""

import json
import os
import subprocess
import sys

import psutil
import pytest

from tests.conftest import settings_env

pytestmark = pytest.mark.e2e


def _run_demo(env, cwd, rows=2000):
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferq", "demo", "--json", f"--rows={rows}", "--timeout=120"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(f"--hostname=demo-{proc.pid}@" in a for a in (p.info["cmdline"] or []))
    ]
    assert leftovers == [], "demo left its worker running"
    return json.loads(out)


def _check(summary, rows):
    assert summary["rows"] == rows and summary["ok"] == rows - 2 and summary["errors"] == 2
    assert summary["error_examples"] == [
        "row 7: feature 'tenure_months' (column 2) has a non-numeric value 'n/a' (text)",
        "row 11: feature 'monthly_spend' (column 3) is +inf",
    ]
    assert summary["accuracy"] > 0.65 and summary["rows_per_second"] > 0
    assert summary["workers"] and all(w.startswith("demo-") for w in summary["workers"])


def test_demo_on_a_bare_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env["HOME"] = str(tmp_path)
    summary = _run_demo(env, tmp_path)
    _check(summary, 2000)
    assert summary["model"] == "churn@1"
    assert (tmp_path / ".inferq" / "inferq.db").is_file()  # embedded SQLite
    assert (tmp_path / ".inferq" / "broker" / "queue").is_dir()  # embedded broker
    # A second run registers the next version and still answers every row.
    assert _run_demo(env, tmp_path, rows=500)["model"] == "churn@2"


@pytest.mark.integration
def test_demo_runs_on_redis_and_postgres_when_configured(pg_settings, tmp_path):
    from inferq.common.db import make_engine
    from inferq.common.schema import predictions
    from sqlalchemy import func, select

    summary = _run_demo(settings_env(pg_settings), tmp_path, rows=1500)
    _check(summary, 1500)
    assert not (pg_settings.home_dir / "inferq.db").exists()  # no SQLite fallback
    assert not (pg_settings.home_dir / "broker").exists()  # no filesystem broker
    engine = make_engine(pg_settings)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar() == 1500
    engine.dispose()
