"""One place that turns foreign failures (SQLAlchemy, psycopg, sqlite3, redis, kombu, pydantic,
Alembic, sockets) into inferq's own errors, with a one-line message that says what to do.

Import-light on purpose: the CLI and the producer import this module on every start, so it
never imports a driver. An exception of a library can only exist once that library has been
imported, so the checks look the library up in ``sys.modules`` instead of importing it.
"""

from __future__ import annotations

import functools
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from inferq.common.errors import (
    BrokerUnavailable,
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    InferqError,
    SchemaNotReady,
)

if TYPE_CHECKING:
    from inferq.common.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

# Postgres SQLSTATEs meaning "the schema is missing or older than this code".
_SCHEMA_STATES = {"42P01", "42703", "42704", "3F000"}  # table, column, object, schema
# SQLSTATE classes meaning "could not get a usable connection": connection exception,
# invalid authorization, invalid catalog (no such database), operator intervention,
# insufficient resources (too many connections).
_UNAVAILABLE_CLASSES = ("08", "28", "3D", "57P", "53")
_SQLITE_SCHEMA = ("no such table", "no such column", "has no column named")
_SCHEMES_WITHOUT_CREDENTIALS = ("sqlite", "filesystem", "memory")
_BARE_PASSWORD_SCHEMES = ("redis", "rediss", "sentinel", "")


# ----- masking -----------------------------------------------------------------------------
def mask_url(url: str) -> str:
    """``url`` with every password replaced by ``***`` (several ``;``-separated URLs too)."""
    return ";".join(_mask_one(part) for part in str(url).split(";"))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme (an invalid setting): anything before an '@' may be a password
        scheme, rest = "", url
    if scheme.lower().startswith(_SCHEMES_WITHOUT_CREDENTIALS):
        return url
    # Up to the LAST '@' before the query: a password may hold an unencoded '@' or '/', and
    # hiding a little too much beats showing part of a password.
    query = re.search(r"[?#]", rest)
    at = rest.rfind("@", 0, query.start() if query else len(rest))
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if not colon and scheme.lower() in _BARE_PASSWORD_SCHEMES:
            user, colon = "", ":"  # redis://secret@host: people put a password there
        rest = f"{user}{':***' if colon else ''}{rest[at:]}"
    rest = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", rest)
    return f"{scheme}{sep}{rest}"


def database_display(url: str) -> str:
    """A results-database URL as shown in messages: masked, driver suffix dropped."""
    return mask_url(re.sub(r"^postgresql\+psycopg2?://", "postgresql://", url))


# ----- translation -------------------------------------------------------------------------
def translate(
    exc: BaseException,
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    broker_url: str | None = None,
) -> InferqError | None:
    """The inferq error that explains ``exc`` (itself if it already is one), or None.

    URLs in messages come from ``database_url`` / ``broker_url`` when given, else from
    ``settings`` (read from the environment when not given); passwords are masked.
    """
    urls = _Urls(settings, database_url, broker_url)
    seen: set[int] = set()
    current: BaseException | None = exc
    # Follow explicit `raise ... from` chains: a wrapper of a driver error is explained by it.
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        found = _translate_one(current, urls)
        if found is not None:
            return found
        current = current.__cause__
    return None


@contextmanager
def translated(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    broker_url: str | None = None,
) -> Iterator[None]:
    """Re-raise foreign database/broker/settings failures inside as inferq errors."""
    try:
        yield
    except InferqError:
        raise
    except Exception as exc:
        new = translate(exc, settings, database_url=database_url, broker_url=broker_url)
        if new is None:
            raise
        raise new from exc


def boundary(method: F) -> F:
    """Decorator for public methods of objects with a ``settings`` attribute: see translated."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with translated(getattr(self, "settings", None)):
            return method(self, *args, **kwargs)

    return cast(F, wrapper)


def one_line(exc: BaseException) -> str:
    """The first non-empty line of ``str(exc)`` (driver messages carry hints and SQL below)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def describe_settings_error(exc: Any) -> str:
    """One line naming every bad ``INFERQ_*`` variable of a pydantic ValidationError."""
    problems = []
    for error in exc.errors():
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        var = "INFERQ_" + "_".join(map(str, error.get("loc", ()))).upper()
        # Model-level checks and our own URL checks already name their variables.
        if error.get("loc") and var not in message:
            message = f"{var}: {message}"
        problems.append(message)
    return "invalid settings: " + "; ".join(problems)


# ----- internals ---------------------------------------------------------------------------
class _Urls:
    """Masked URLs for messages, computed only when a message needs one."""

    def __init__(self, settings: Settings | None, database: str | None, broker: str | None):
        self._settings, self._database, self._broker = settings, database, broker
        self._secrets: list[str] | None = None

    def _get_settings(self) -> Settings | None:
        if self._settings is None:
            try:
                from inferq.common.settings import get_settings

                self._settings = get_settings()
            except Exception:  # explaining an error must never raise another one
                return None
        return self._settings

    def database(self) -> str:
        if self._database is None:
            s = self._get_settings()
            self._database = (s.database_url or s.effective_database_url) if s else "?"
        return database_display(self._database)

    def broker(self) -> str:
        if self._broker is None:
            s = self._get_settings()
            self._broker = s.effective_broker_url if s else "?"
        return mask_url(self._broker)

    def scrub(self, text: str) -> str:
        """``text`` with any password of the configured URLs replaced (drivers may echo them)."""
        if self._secrets is None:
            self._secrets = []
            s = self._settings
            urls = [self._database, self._broker]
            if s is not None:
                urls += [s.database_url, s.broker_url]
            for url in filter(None, urls):
                for part in url.split(";"):
                    m = re.match(r"^[^:/]*://[^:@/]*:(.+)@", part)
                    if m and len(m.group(1)) >= 3 and m.group(1) != "***":
                        self._secrets.append(m.group(1))
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _translate_one(exc: BaseException, urls: _Urls) -> InferqError | None:
    if isinstance(exc, InferqError):
        return exc
    for check in (_settings_error, _database_error, _broker_error, _migration_error):
        found = check(exc, urls)
        if found is not None:
            return found
    return None


def _settings_error(exc: BaseException, urls: _Urls) -> InferqError | None:
    pydantic_core = sys.modules.get("pydantic_core")
    if pydantic_core is None or not isinstance(exc, pydantic_core.ValidationError):
        return None
    if exc.title != "Settings":
        return None
    return ConfigError(describe_settings_error(exc))


def _database_error(exc: BaseException, urls: _Urls) -> InferqError | None:
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        driver = exc.orig if isinstance(exc.orig, BaseException) else exc
    elif _is_driver_error(exc):
        driver = exc
    elif sa_exc is not None and isinstance(exc, sa_exc.ArgumentError):
        return DatabaseError(f"invalid database URL {urls.database()}: {one_line(exc)}")
    elif sa_exc is not None and isinstance(exc, sa_exc.NoSuchTableError):
        return SchemaNotReady(urls.database(), f"no table {one_line(exc)}")
    elif sa_exc is not None and isinstance(exc, sa_exc.TimeoutError):  # pool exhausted
        return DatabaseUnavailable(urls.database(), urls.scrub(one_line(exc)))
    elif sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError):
        return DatabaseError(f"database error at {urls.database()}: {urls.scrub(one_line(exc))}")
    else:
        return None
    text = urls.scrub(one_line(driver))
    sqlstate = getattr(driver, "sqlstate", None)
    if sqlstate in _SCHEMA_STATES or text.lower().startswith(_SQLITE_SCHEMA):
        return SchemaNotReady(urls.database(), _strip_severity(text))
    sqlite3 = sys.modules.get("sqlite3")
    is_sqlite = sqlite3 is not None and isinstance(driver, sqlite3.Error)
    if getattr(exc, "connection_invalidated", False) or (
        _is_operational(exc, driver)
        and (is_sqlite or sqlstate is None or sqlstate.startswith(_UNAVAILABLE_CLASSES))
    ):
        return DatabaseUnavailable(urls.database(), short_reason(text))
    reason = _strip_severity(text)
    if sqlstate == "42501":  # insufficient_privilege
        reason += " (grant the role the privileges listed in README 'Database')"
    return DatabaseError(f"the database at {urls.database()} refused the operation: {reason}")


def _is_driver_error(exc: BaseException) -> bool:
    psycopg = sys.modules.get("psycopg")
    sqlite3 = sys.modules.get("sqlite3")
    return (psycopg is not None and isinstance(exc, psycopg.Error)) or (
        sqlite3 is not None and isinstance(exc, sqlite3.Error)
    )


def _is_operational(exc: BaseException, driver: BaseException) -> bool:
    for name in ("sqlalchemy.exc", "psycopg", "sqlite3"):
        module = sys.modules.get(name)
        if module is None:
            continue
        kinds = (module.OperationalError, module.InterfaceError)
        if isinstance(exc, kinds) or isinstance(driver, kinds):
            return True
    return False


def _broker_error(exc: BaseException, urls: _Urls) -> InferqError | None:
    redis_exc = sys.modules.get("redis.exceptions")
    kombu_exc = sys.modules.get("kombu.exceptions")
    if kombu_exc is not None and isinstance(exc, kombu_exc.OperationalError):
        # kombu wraps the transport's error: explain that one when it is there.
        inner = exc.__cause__ or exc.__context__
        if inner is not None and inner is not exc:
            found = _broker_error(inner, urls)
            if found is not None:
                return found
        return BrokerUnavailable(urls.broker(), short_reason(urls.scrub(one_line(exc))))
    if redis_exc is not None and isinstance(exc, redis_exc.RedisError):
        if isinstance(exc, redis_exc.AuthenticationError):
            reason = f"authentication failed ({one_line(exc)}); check the password in the URL"
        elif isinstance(exc, redis_exc.TimeoutError):
            reason = "timed out"
        elif isinstance(exc, redis_exc.ConnectionError):
            reason = short_reason(one_line(exc))
        else:
            reason = f"Redis refused the command: {one_line(exc)}"
        return BrokerUnavailable(urls.broker(), urls.scrub(reason))
    # Raw socket errors only reach here from broker clients: the database drivers wrap theirs.
    if isinstance(exc, ConnectionError | socket.gaierror):
        return BrokerUnavailable(urls.broker(), short_reason(urls.scrub(str(exc) or repr(exc))))
    return None


def _migration_error(exc: BaseException, urls: _Urls) -> InferqError | None:
    alembic_exc = sys.modules.get("alembic.util.exc")
    if alembic_exc is None or not isinstance(exc, alembic_exc.CommandError):
        return None
    hint = ""
    if "locate revision" in str(exc):
        hint = (
            " (a revision this inferq does not ship: a typo, or a database migrated by a newer "
            "inferq; `inferq db current` shows where it is)"
        )
    return DatabaseError(
        f"cannot migrate the database at {urls.database()}: {urls.scrub(one_line(exc))}{hint}"
    )


def _strip_severity(text: str) -> str:
    return re.sub(r"^(FATAL|ERROR|PANIC):\s+", "", text)


def short_reason(text: str) -> str:
    """The essence of a driver's connection error, e.g. ``connection refused``."""
    text = text.strip()
    text = re.sub(r"^(connection failed:\s*)", "", text)
    text = re.sub(r"^connection to server (at|on) .*? failed:\s*", "", text)
    text = _strip_severity(text)
    lowered = text.lower()
    host = re.search(r"(?:resolve host|translate host name|connecting to) ['\"]?([^'\":\s]+)", text)
    if (
        "name or service not known" in lowered
        or "failed to resolve host" in lowered
        or ("nodename nor servname" in lowered or "temporary failure in name resolution" in lowered)
    ):
        return f"unknown host {host.group(1)}" if host else "unknown host"
    if "connection refused" in lowered:
        return "connection refused"
    if "timeout expired" in lowered or "timed out" in lowered:
        return "timed out"
    return text.rstrip(".")
