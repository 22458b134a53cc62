"""First contact with real services: the `inferq` CLI (a subprocess, as users run it) and the
Python client turn database, broker and settings problems into one line / inferq errors."""

import subprocess
import sys

import pytest
import sqlalchemy.exc
from inferq.common.settings import Settings

from inferq import (
    DatabaseUnavailable,
    EnqueueError,
    InferenceClient,
    SchemaNotReady,
    migrations,
)
from tests.conftest import make_settings, settings_env

pytestmark = pytest.mark.integration

CLOSED_PG = "postgresql://postgres:hunter2@127.0.0.1:1/inferq"  # nothing listens on port 1
CLOSED_REDIS = "redis://:hunter2@127.0.0.1:1/0"


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferq", *args],
        env={**settings_env(settings), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserts exit code 2, no traceback)."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture
def blank_pg(tmp_path, pg_url) -> Settings:
    """A real Postgres database that exists but was never upgraded; embedded broker."""
    return make_settings(tmp_path, database_url=pg_url)


@pytest.mark.parametrize(
    "args",
    [("models", "list"), ("models", "promote", "churn", "1"), ("runs",),
     ("dead-letters", "list"), ("dead-letters", "replay", "--all")],
)  # fmt: skip
def test_never_upgraded_database_is_one_line_naming_the_fix(blank_pg, args):
    line = one_line(cli(blank_pg, *args))
    assert line.startswith(f"error: the database at {blank_pg.database_url} has no inferq tables")
    assert line.endswith("run `inferq db upgrade`")
    assert "does not exist" in line  # which table, for whoever reads the log


def test_debug_adds_the_traceback_above_the_line(blank_pg):
    for out in (cli(blank_pg, "--debug", "models", "list"),
                cli(blank_pg, "models", "list", INFERQ_DEBUG="1")):  # fmt: skip
        assert out.returncode == 2
        assert "Traceback" in out.stderr and "UndefinedTable" in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("error: the database at ")


def test_upgrade_then_the_same_command_works(blank_pg):
    assert cli(blank_pg, "db", "upgrade").returncode == 0
    out = cli(blank_pg, "models", "list")
    assert out.returncode == 0 and "no models registered" in out.stdout


@pytest.mark.parametrize("args", [("models", "list"), ("db", "upgrade"), ("runs",)])
def test_unreachable_database_is_one_line(tmp_path, args):
    line = one_line(cli(make_settings(tmp_path, database_url=CLOSED_PG), *args))
    assert line == (
        "error: cannot reach the database at postgresql://postgres:***@127.0.0.1:1/inferq: "
        "connection refused (check INFERQ_DATABASE_URL and that the server is running)"
    )


def test_database_that_does_not_exist_on_a_real_server(tmp_path, pg_admin):
    url = pg_admin.rsplit("/", 1)[0] + "/inferq_no_such_database"
    line = one_line(cli(make_settings(tmp_path, database_url=url), "models", "list"))
    assert "cannot reach the database at" in line
    assert 'database "inferq_no_such_database" does not exist' in line


def test_scale_with_redis_on_a_closed_port_is_one_line(tmp_path):
    settings = make_settings(tmp_path, broker_url=CLOSED_REDIS)
    for args in (("scale",), ("scale", "--no-inspect", "--json")):
        assert one_line(cli(settings, *args)) == (
            "error: cannot reach the broker at redis://:***@127.0.0.1:1/0: connection refused "
            "(check INFERQ_BROKER_URL and that Redis is running)"
        )


def test_scale_on_a_never_upgraded_database(tmp_path, pg_url, redis_url):
    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url)
    line = one_line(cli(settings, "scale", "--no-inspect"))
    assert "has no inferq tables" in line and "prediction_batches" in line


@pytest.mark.parametrize("args", [("config",), ("scale",), ("models", "list")])
def test_broker_url_without_a_scheme_is_one_line_at_settings_load(tmp_path, args):
    out = cli(make_settings(tmp_path), *args, INFERQ_BROKER_URL="127.0.0.1:6379")
    line = one_line(out)
    assert line.startswith("error: invalid settings: INFERQ_BROKER_URL '127.0.0.1:6379' has no")
    assert "redis://127.0.0.1:6379" in line


# ----- the Python client -------------------------------------------------------------------
def test_client_on_a_never_upgraded_database_raises_schema_not_ready(blank_pg):
    with InferenceClient(blank_pg) as client:
        with pytest.raises(SchemaNotReady, match="run `inferq db upgrade`") as info:
            client.submit("churn", [[1.0, 2.0]])
        assert isinstance(info.value.__cause__, sqlalchemy.exc.ProgrammingError)
        with pytest.raises(SchemaNotReady):
            client.results(["job-1"])
        with pytest.raises(SchemaNotReady):
            client.wait(["job-1"], timeout=1)


def test_client_on_an_unreachable_database_raises_database_unavailable(tmp_path):
    with InferenceClient(make_settings(tmp_path, database_url=CLOSED_PG)) as client:
        with pytest.raises(DatabaseUnavailable) as info:
            client.submit("churn", [[1.0, 2.0]])
        assert info.value.reason == "connection refused"
        assert "hunter2" not in str(info.value)
        with pytest.raises(DatabaseUnavailable):
            client.results(["job-1"])


def test_client_with_an_unreachable_broker_keeps_enqueue_error(tmp_path, regressor_model):
    from inferq.common.db import make_engine
    from inferq.models import registry

    settings = make_settings(tmp_path, broker_url=CLOSED_REDIS)
    migrations.upgrade(settings)
    engine = make_engine(settings)
    registry.register(engine, settings.model_store_dir, regressor_model.path, "reg", "production")
    engine.dispose()
    with InferenceClient(settings, linger_ms=0) as client, pytest.raises(EnqueueError) as info:
        client.submit("reg", regressor_model.x[:3])
    assert info.value.enqueued_job_ids == []
    # the reason is the broker, said in inferq's words (and no password leaks)
    assert "could not enqueue 3 job(s)" in str(info.value)
    assert "Connection refused" in str(info.value) or "connection refused" in str(info.value)
