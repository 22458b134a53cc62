"""Alembic environment: metadata from common.schema, URL from inferq settings."""

from __future__ import annotations

from alembic import context
from inferq.common.db import make_engine
from inferq.common.partitions import is_partition_name
from inferq.common.schema import metadata
from inferq.common.settings import get_settings
from sqlalchemy import pool

config = context.config
target_metadata = metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().effective_database_url


def _include(obj: object, name: str | None, kind: str, reflected: bool, _other: object) -> bool:
    """What `alembic check` compares: not the daily partitions (common/partitions.py), which
    are created at run time, nor SQLite's stand-in for the cross-day job id check."""
    if kind == "table" and name and is_partition_name(name):
        return False
    return not (kind == "index" and name == "uq_predictions_job_id")


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations against the live database."""
    settings = get_settings(database_url=_url())
    engine = make_engine(settings, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=_include,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
