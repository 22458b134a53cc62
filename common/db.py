"""Database engine factory (one per process; engines are not shared across fork)."""

from __future__ import annotations

from typing import Any

from inferq.common.settings import Settings
from sqlalchemy import Engine, create_engine, event


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    """Create the SQLAlchemy engine for the results database described by ``settings``."""
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # NOTE: WAL lets the demo's worker processes write while the client polls.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def is_postgres(engine: Engine) -> bool:
    """True when the engine talks to PostgreSQL (COPY and JSONB available)."""
    return engine.dialect.name == "postgresql"
