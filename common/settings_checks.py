"""Checks made when settings load: broker and database URLs, unknown ``INFERQ_*`` variables.

Kept apart from :mod:`inferq.common.settings` so that module stays the list of settings.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable, Mapping

from inferq.common.errors import UnknownSettingWarning

BROKER_SCHEMES = ("redis", "rediss", "sentinel", "filesystem", "memory")
DATABASE_DRIVERS = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgres",
                    "sqlite", "sqlite+pysqlite")  # fmt: skip
#: ``INFERQ_*`` variables that are not settings (test and benchmark service addresses).
NOT_SETTINGS = frozenset(
    {"INFERQ_TEST_PG_URL", "INFERQ_TEST_REDIS_URL", "INFERQ_BENCH_PG_URL", "INFERQ_BENCH_REDIS_URL"}
)


def check_broker_url(url: str) -> None:
    """Raise ValueError naming INFERQ_BROKER_URL unless ``url`` is a broker URL inferq knows."""
    from inferq.common.failures import mask_url

    example = "e.g. redis://:password@localhost:6379/0"
    for part in url.split(";"):  # sentinel://h1:26379;sentinel://h2:26379
        scheme, sep, _rest = part.strip().partition("://")
        if not sep:
            raise ValueError(
                f"INFERQ_BROKER_URL {mask_url(url)!r} has no scheme: write a URL such as "
                f"'redis://{mask_url(part.strip())}' (schemes: {', '.join(BROKER_SCHEMES)})"
            )
        if scheme.lower() not in BROKER_SCHEMES:
            raise ValueError(
                f"INFERQ_BROKER_URL scheme {scheme!r} is not supported: use one of "
                f"{', '.join(BROKER_SCHEMES)}, {example}"
            )
        if scheme.lower() in ("redis", "rediss", "sentinel"):
            from urllib.parse import urlsplit

            try:
                urlsplit(part.strip()).port  # noqa: B018 - parsing it raises for a bad port
            except ValueError:
                raise ValueError(
                    f"INFERQ_BROKER_URL {mask_url(url)!r} has an invalid port, {example}"
                ) from None


def check_database_url(url: str) -> None:
    """Raise ValueError naming INFERQ_DATABASE_URL unless SQLAlchemy can use ``url``."""
    from inferq.common.failures import mask_url
    from sqlalchemy.engine import make_url

    example = "e.g. postgresql://user:password@localhost:5432/inferq"
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a non-numeric port raises here
    except Exception:
        raise ValueError(
            f"INFERQ_DATABASE_URL {mask_url(url)!r} is not a database URL: write one, {example}"
        ) from None
    if parsed.drivername.lower() not in DATABASE_DRIVERS:
        raise ValueError(
            f"INFERQ_DATABASE_URL scheme {parsed.drivername!r} is not supported: use "
            f"postgresql:// ({example}) or sqlite:///path/to/file.db"
        )


_warned: set[str] = set()


def unknown_variables(
    environ: Mapping[str, str], fields: Iterable[str]
) -> list[tuple[str, str | None]]:
    """``INFERQ_*`` names in ``environ`` that are no setting, each with the closest setting."""
    known = sorted(name.upper() for name in fields)
    out = []
    for var in sorted(environ):
        upper = var.upper()  # pydantic-settings matches names case-insensitively
        name = upper.removeprefix("INFERQ_")
        if upper.startswith("INFERQ_") and name not in known and upper not in NOT_SETTINGS:
            # Compare without the shared prefix, or everything looks alike.
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
            out.append((var, f"INFERQ_{close[0]}" if close else None))
    return out


def warn_unknown_variables(fields: Iterable[str], environ: Mapping[str, str] | None = None) -> None:
    """Warn (UnknownSettingWarning) once per process about each unknown ``INFERQ_*`` name."""
    for var, suggestion in unknown_variables(os.environ if environ is None else environ, fields):
        if var in _warned:
            continue
        _warned.add(var)
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        warnings.warn(
            f"unknown setting {var}{hint}; it is ignored", UnknownSettingWarning, stacklevel=3
        )
