"""First contact: URL checks when settings load, unknown-variable warnings, translation of
driver errors into inferq's own, `inferq --version` and `inferq config` (no services)."""

import json
import os
import re
import sqlite3
import subprocess
import sys
import warnings

import psycopg
import pytest
import redis.exceptions
import sqlalchemy.exc
from inferq.common import failures, settings_checks
from inferq.common.errors import (
    BrokerUnavailable,
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    InferqError,
    SchemaNotReady,
    UnknownSettingWarning,
)
from inferq.common.failures import boundary, mask_url, translate, translated
from inferq.common.settings import Settings, get_settings
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import ValidationError

from inferq import __version__
from tests.conftest import REPO, settings_env

PG = "postgresql://app:hunter2@db.example:5432/inferq"
BROKER = "redis://:hunter2@redis.example:6379/0"


def run_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "inferq", *args], env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True, check=False)  # fmt: skip


# ----- URL validation --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "localhost:6379",
            r"INFERQ_BROKER_URL 'localhost:6379' has no scheme.*redis://localhost:6379",
        ),
        ("http://localhost:6379", r"INFERQ_BROKER_URL scheme 'http' is not supported.*redis://"),
        ("redis://localhost:port/0", r"INFERQ_BROKER_URL .* invalid port"),
        ("amqp://guest@rabbit//", r"scheme 'amqp' is not supported"),
    ],
)
def test_broker_url_without_a_known_scheme_is_refused_at_load(url, expected):
    with pytest.raises(ValidationError, match=expected):
        Settings(broker_url=url)


@pytest.mark.parametrize(
    "url",
    ["redis://:pw@h:6379/0", "rediss://h:6380/1?ssl_cert_reqs=required", "memory://",
     "sentinel://h1:26379;sentinel://h2:26379", "filesystem://localhost//"],
)  # fmt: skip
def test_supported_broker_urls_load(url):
    assert Settings(broker_url=url, sentinel_master="mymaster").broker_url == url


def test_a_sentinel_url_needs_the_master_name():
    with pytest.raises(ValidationError, match="set INFERQ_SENTINEL_MASTER"):
        Settings(broker_url="sentinel://h1:26379;sentinel://h2:26379")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("db.example/inferq", r"INFERQ_DATABASE_URL 'db.example/inferq' is not a database URL"),
        ("mysql://u@h/x", r"INFERQ_DATABASE_URL scheme 'mysql' is not supported.*postgresql://"),
        ("postgresql://u@h:port/x", r"INFERQ_DATABASE_URL .* is not a database URL"),
    ],
)
def test_bad_database_url_is_refused_at_load(url, expected):
    with pytest.raises(ValidationError, match=expected):
        Settings(database_url=url)


@pytest.mark.parametrize(
    "url", ["postgresql://u:p@h/x", "postgres://u@h/x", "postgresql+psycopg://h/x", "sqlite:///x"]
)
def test_supported_database_urls_load(url):
    assert Settings(database_url=url).database_url == url


def test_url_errors_never_show_the_password():
    for kwargs in ({"broker_url": "user:hunter2@redis:6379"},
                   {"database_url": "app:hunter2@db/inferq"},
                   {"database_url": "postgresql://app:hunter2@db:port/inferq"}):  # fmt: skip
        with pytest.raises(ValidationError) as info:
            Settings(**kwargs)
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in failures.describe_settings_error(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (PG, "postgresql://app:***@db.example:5432/inferq"),
        (BROKER, "redis://:***@redis.example:6379/0"),
        ("redis://hunter2@h/0", "redis://:***@h/0"),  # a bare password before '@'
        ("rediss://:p@ss/w@h:6380/0", "rediss://:***@h:6380/0"),  # unencoded '@' and '/'
        ("sentinel://:a1b2@h1:1;sentinel://:a1b2@h2:2", "sentinel://:***@h1:1;sentinel://:***@h2:2"),
        ("postgresql://h/x?password=hunter2&sslmode=require",
         "postgresql://h/x?password=***&sslmode=require"),
        ("app:hunter2@db:5432", "app:***@db:5432"),  # no scheme at all
        ("sqlite:////tmp/a@b/inferq.db", "sqlite:////tmp/a@b/inferq.db"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)  # fmt: skip
def test_mask_url(url, masked):
    assert mask_url(url) == masked


# ----- unknown variables -------------------------------------------------------------------
@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which variables this process already warned about."""
    monkeypatch.setattr(settings_checks, "_warned", set())
    for var in [v for v in os.environ if v.upper().startswith("INFERQ_")]:
        monkeypatch.delenv(var)


def test_unknown_variable_warns_once_with_the_closest_name(monkeypatch, fresh_warnings):
    monkeypatch.setenv("INFERQ_BATCHSIZE", "50")
    with pytest.warns(UnknownSettingWarning) as caught:
        settings = get_settings()
    assert settings.batch_size == 1000  # ignored, hence the warning
    assert [str(w.message) for w in caught] == [
        "unknown setting INFERQ_BATCHSIZE (did you mean INFERQ_BATCH_SIZE?); it is ignored"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        get_settings()
        get_settings()


def test_unknown_variable_without_a_close_name_and_test_variables(monkeypatch, fresh_warnings):
    monkeypatch.setenv("INFERQ_COLOUR", "blue")
    for var in settings_checks.NOT_SETTINGS:
        monkeypatch.setenv(var, "postgresql://x")
    with pytest.warns(UnknownSettingWarning) as caught:
        get_settings()
    assert [str(w.message) for w in caught] == ["unknown setting INFERQ_COLOUR; it is ignored"]


def test_every_inferq_variable_in_the_repository_is_a_setting_or_allowed():
    """A variable documented or used anywhere must not make inferq warn about it."""
    fields = {f"INFERQ_{name.upper()}" for name in Settings.model_fields}
    found: dict[str, str] = {}
    for path in REPO.rglob("*"):
        parts = set(path.relative_to(REPO).parts)
        if not path.is_file() or parts & {".venv", ".git", "build", "inferq.egg-info", ".inferq"}:
            continue
        if path.suffix not in {".py", ".md", ".yml", ".yaml", ".toml", ".ini", ""}:
            continue
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for var in re.findall(r"INFERQ_[A-Z0-9]+(?:_[A-Z0-9]+)*", text):
            found.setdefault(var, str(path.relative_to(REPO)))
    typos = {"INFERQ_BATCHSIZE", "INFERQ_COLOUR"}  # misspelt on purpose (this file, README)
    allowed = fields | settings_checks.NOT_SETTINGS | typos
    unknown = {v: p for v, p in found.items() if v not in allowed}
    assert not unknown, f"INFERQ_* names that are no setting (add to NOT_SETTINGS?): {unknown}"


# ----- translation of foreign errors -----------------------------------------------------
def _sa(kind, orig):
    return kind("SELECT 1", {}, orig)


S = Settings(database_url=PG, broker_url=BROKER)


def test_missing_table_is_schema_not_ready_on_postgres_and_sqlite():
    missing = psycopg.errors.UndefinedTable('relation "model_aliases" does not exist\nLINE 2')
    pg = _sa(sqlalchemy.exc.ProgrammingError, missing)
    lite = _sa(sqlalchemy.exc.OperationalError, sqlite3.OperationalError("no such table: x"))
    for exc, detail in (
        (pg, 'relation "model_aliases" does not exist'),
        (lite, "no such table: x"),
    ):
        err = translate(exc, S)
        assert isinstance(err, SchemaNotReady)
        assert str(err) == (
            "the database at postgresql://app:***@db.example:5432/inferq has no inferq tables or "
            f"is not up to date ({detail}): run `inferq db upgrade`"
        )
    old = _sa(sqlalchemy.exc.ProgrammingError,
              psycopg.errors.UndefinedColumn('column "run_id" does not exist'))  # fmt: skip
    assert isinstance(translate(old, S), SchemaNotReady)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ('connection failed: connection to server at "127.0.0.1", port 1 failed: Connection '
         "refused\n\tIs the server running on that host and accepting TCP/IP connections?",
         "connection refused"),
        ('connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
         'password authentication failed for user "app"',
         'password authentication failed for user "app"'),
        ('connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
         'database "foo" does not exist', 'database "foo" does not exist'),
        ("failed to resolve host 'db.example': [Errno -2] Name or service not known",
         "unknown host db.example"),
        ("connection timeout expired", "timed out"),
    ],
)  # fmt: skip
def test_connection_failures_are_database_unavailable_with_a_short_reason(message, reason):
    err = translate(_sa(sqlalchemy.exc.OperationalError, psycopg.OperationalError(message)), S)
    assert isinstance(err, DatabaseUnavailable) and err.reason == reason
    assert "hunter2" not in str(err) and "\n" not in str(err)
    assert str(err).startswith("cannot reach the database at postgresql://app:***@db.example")


def test_other_database_failures_are_database_errors():
    no_grant = psycopg.errors.InsufficientPrivilege("permission denied for table predictions")
    denied = _sa(sqlalchemy.exc.ProgrammingError, no_grant)
    err = translate(denied, S)
    assert type(err) is DatabaseError and "permission denied for table predictions" in str(err)
    assert "README" in str(err)
    assert type(translate(sqlalchemy.exc.ArgumentError("bad"), S)) is DatabaseError


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (redis.exceptions.ConnectionError("Error 111 connecting to h:1. Connection refused."),
         "connection refused"),
        (redis.exceptions.ConnectionError("Error -2 connecting to redis.example:6379. Name or "
                                          "service not known."), "unknown host redis.example"),
        (redis.exceptions.AuthenticationError("invalid username-password pair"),
         "authentication failed (invalid username-password pair); check the password in the URL"),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), "timed out"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    ],
)  # fmt: skip
def test_broker_failures_are_broker_unavailable(exc, reason):
    err = translate(exc, S)
    assert isinstance(err, BrokerUnavailable) and err.reason == reason
    assert str(err).startswith("cannot reach the broker at redis://:***@redis.example:6379/0: ")


def test_kombu_error_is_explained_by_the_transport_error_inside():
    try:
        try:
            raise redis.exceptions.ConnectionError(
                "Error 111 connecting to h:1. Connection refused."
            )
        except redis.exceptions.ConnectionError as inner:
            raise KombuOperationalError("Error 111 connecting to h:1.") from inner
    except KombuOperationalError as exc:
        err = translate(exc, S)
    assert isinstance(err, BrokerUnavailable) and err.reason == "connection refused"


def test_wrapped_causes_settings_errors_and_unknown_errors():
    refused = _sa(sqlalchemy.exc.OperationalError, psycopg.OperationalError("Connection refused"))
    wrapper = RuntimeError("could not list models")
    wrapper.__cause__ = refused
    assert isinstance(translate(wrapper, S), DatabaseUnavailable)
    with pytest.raises(ValidationError) as info:
        Settings(batch_size="lots")  # type: ignore[arg-type]
    err = translate(info.value, S)
    assert isinstance(err, ConfigError) and str(err).startswith(
        "invalid settings: INFERQ_BATCH_SIZE"
    )
    assert translate(ValueError("a bug"), S) is None
    own = InferqError("already ours")
    assert translate(own, S) is own


def test_translated_and_boundary_raise_inferq_errors_chained_to_the_original():
    lost = _sa(sqlalchemy.exc.OperationalError, psycopg.OperationalError("Connection refused"))
    with pytest.raises(DatabaseUnavailable) as info, translated(database_url="sqlite:///x.db"):
        raise lost
    assert info.value.__cause__ is lost and "sqlite:///x.db" in str(info.value)

    class Client:
        settings = S

        @boundary
        def results(self, fail: BaseException) -> None:
            """Stand-in for a public client method."""
            raise fail

    with pytest.raises(BrokerUnavailable):
        Client().results(redis.exceptions.ConnectionError("Connection refused"))
    with pytest.raises(KeyError):  # not a service failure: left as it is
        Client().results(KeyError("x"))


def test_alembic_errors_are_one_line_database_errors():
    from alembic.util.exc import CommandError

    err = translate(CommandError("Can't locate revision identified by '0099'"), S)
    assert type(err) is DatabaseError and "cannot migrate the database" in str(err)


# ----- the CLI ---------------------------------------------------------------------------
def test_version(tmp_path):
    out = run_cli({"PATH": "/usr/bin:/bin", "INFERQ_HOME": str(tmp_path)}, "--version")
    assert out.returncode == 0 and out.stdout == f"inferq {__version__}\n"


def test_config_shows_every_setting_with_secrets_masked(sqlite_settings):
    env = {**settings_env(sqlite_settings), "INFERQ_FLOWER_BASIC_AUTH": "admin:hunter2",
           "INFERQ_DATABASE_URL": "sqlite:///" + str(sqlite_settings.home_dir / "inferq.db"),
           "INFERQ_BATCHSIZE": "7"}  # fmt: skip
    out = run_cli(env, "config", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    expected = {f"INFERQ_{name.upper()}" for name in Settings.model_fields}
    assert set(data["settings"]) == expected
    assert {"broker", "database", "model_store", "home", "batch_size", "queues"} <= set(data)
    assert data["settings"]["INFERQ_FLOWER_BASIC_AUTH"] == "***"
    assert "INFERQ_FLOWER_BASIC_AUTH" in data["from_environment"]
    assert out.stderr.count("warning: unknown setting INFERQ_BATCHSIZE (did you mean "
                            "INFERQ_BATCH_SIZE?)") == 1  # fmt: skip
    text = run_cli({**env, "INFERQ_BROKER_URL": BROKER}, "config")
    assert text.returncode == 0, text.stderr
    lines = dict(line.split(None, 1) for line in text.stdout.splitlines())
    assert set(lines) == expected
    assert lines["INFERQ_BROKER_URL"] == "redis://:***@redis.example:6379/0"
    assert "hunter2" not in text.stdout + text.stderr
    assert lines["INFERQ_INFLIGHT_LEDGER"] == "true"  # as the variable is written


def test_broker_url_without_scheme_is_one_line_at_load(tmp_path):
    out = run_cli({"INFERQ_HOME": str(tmp_path), "INFERQ_BROKER_URL": "localhost:6379"}, "config")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: invalid settings: INFERQ_BROKER_URL 'localhost:6379' has no scheme: write a URL "
        "such as 'redis://localhost:6379' (schemes: redis, rediss, sentinel, filesystem, memory)"
    ]


def test_sqlite_never_upgraded_is_one_line_with_the_fix(tmp_path):
    out = run_cli({"INFERQ_HOME": str(tmp_path)}, "models", "list")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    assert (
        line.startswith("error: the database at sqlite:///") and "run `inferq db upgrade`" in line
    )


def test_unexpected_errors_are_one_line_exit_1_and_debug_adds_the_traceback(capsys, monkeypatch):
    from inferq import cli

    monkeypatch.delenv("INFERQ_DEBUG", raising=False)
    monkeypatch.setitem(cli._state, "debug", False)
    assert cli._report(KeyError("surprise")) == 1
    err = capsys.readouterr().err
    assert (
        err
        == "error: unexpected KeyError: 'surprise' (run `inferq --debug ...` for the traceback)\n"
    )
    monkeypatch.setenv("INFERQ_DEBUG", "1")
    try:
        raise ConfigError("bad setting")
    except ConfigError as exc:
        assert cli._report(exc) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: bad setting\n")


def test_client_from_env_with_a_bad_url_raises_config_error(monkeypatch, fresh_warnings):
    from inferq import ConfigError as PublicConfigError
    from inferq import InferenceClient

    monkeypatch.setenv("INFERQ_BROKER_URL", "localhost:6379")
    with pytest.raises(PublicConfigError, match="INFERQ_BROKER_URL 'localhost:6379' has no scheme"):
        InferenceClient.from_env()
