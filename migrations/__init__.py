"""Alembic migrations of the inferq database, and helpers to run them from Python / the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from inferq.common.settings import Settings

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(settings: Settings) -> Config:
    """An Alembic Config pointing at these migrations and the settings' database."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("path_separator", "os")
    # NOTE: '%' must be doubled for configparser interpolation (passwords may contain it).
    cfg.set_main_option("sqlalchemy.url", settings.effective_database_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (``inferq db upgrade``)."""
    from alembic import command

    if settings.effective_database_url.startswith("sqlite"):
        settings.home_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext
    from inferq.common.db import make_engine

    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision(settings: Settings) -> str | None:
    """The newest revision shipped with this version of inferq."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def known_revision(settings: Settings, revision: str) -> bool:
    """True when ``revision`` is one of the migrations shipped with this version of inferq."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    try:
        return (
            ScriptDirectory.from_config(alembic_config(settings)).get_revision(revision) is not None
        )
    except CommandError:
        return False
