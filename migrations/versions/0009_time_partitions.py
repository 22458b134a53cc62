"""time partitions: predictions, prediction_batches and shadow_predictions by day; a cheaper row

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 12:00:00.000000

Each of the three tables is rebuilt with a ``day`` column (the UTC day of ``submitted_at``
for existing rows) in its primary key; on Postgres it is partitioned by RANGE (day), one
partition per day that holds rows plus the next week's (common/partitions.py). The rows are
copied in one statement per table: plan on ~1 minute per 5 million predictions, during which
writes wait (stop the workers, or let them queue, while it runs).

The row also gets cheaper on Postgres: job ids and keys compare byte-wise (COLLATE "C"), the
B-tree on (model_name, scored_at) becomes a BRIN on scored_at, the B-tree on run_id goes (a
bulk run's job ids are one range of the primary key), the key index is partial (only rows
with a key), and new rows of binary classifiers no longer repeat their score in
`probabilities` (the `predictions_full` view adds it back; existing rows keep theirs).

The 0008 views read these tables, so they are dropped first and created again.

SQLite (the embedded default): the same columns, no partitions; a unique index on job_id
keeps a job id unique across days, as the writer's cross-day check does on Postgres.
"""

import datetime as dt
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
TZ = sa.DateTime(timezone=True)
IdText = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
TABLES = ("predictions", "prediction_batches", "shadow_predictions")
_AHEAD = 7

# predictions_full: `predictions` with `probabilities` filled in for the binary classifiers'
# ok rows that store only the score (= P(classes[1])). Same columns, same order.
_PREDICTION_COLUMNS = (
    "job_id", "run_id", "key", "model_name", "model_version", "status", "label", "score",
    "probabilities", "error", "submitted_at", "scored_at", "worker", "batch_id", "error_code",
    "runtime", "day",
)  # fmt: skip
_FULL_PROBA = (
    "CASE WHEN p.probabilities IS NULL AND p.status = 'ok' AND p.score IS NOT NULL "
    "AND mv.has_proba = 1 AND jsonb_array_length(mv.classes) = 2 "
    "THEN jsonb_build_object(mv.classes ->> 0, 1 - p.score, mv.classes ->> 1, p.score) "
    "ELSE p.probabilities END AS probabilities"
)
PREDICTIONS_FULL = f"""
CREATE VIEW predictions_full AS
SELECT {", ".join(_FULL_PROBA if c == "probabilities" else f"p.{c}" for c in _PREDICTION_COLUMNS)}
FROM predictions p
LEFT JOIN model_versions mv ON mv.name = p.model_name AND mv.version = p.model_version
"""


# Creates one day's partition of a partitioned table, as the schema's owner: ATTACH PARTITION
# needs ownership of the parent, and workers run as a least-privilege role (README
# "Database"). Called by common/partitions.ensure; EXECUTE is granted like any privilege.
_LOCK = 0x696E6665727170  # "inferqp": one creator at a time
CREATE_PARTITION_FN = """
CREATE FUNCTION inferq_create_partition(parent text, day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {schema}, pg_temp
SET lock_timeout = '2s'
AS $$
DECLARE
    name text := parent || '_p' || to_char(day, 'YYYYMMDD');
    lo text := day::text;
    hi text := (day + 1)::text;
    acl record;
BEGIN
    IF parent NOT IN ('predictions', 'prediction_batches', 'shadow_predictions') THEN
        RAISE EXCEPTION 'inferq_create_partition: % is not partitioned by day', parent;
    END IF;
    -- One creator at a time, cluster-wide (two would race on the catalog).
    PERFORM pg_advisory_xact_lock({lock});
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Standalone table + CHECK + ATTACH: SHARE UPDATE EXCLUSIVE on the parent, so writers
    -- and readers go on (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE).
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', name, parent);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (day >= %L AND day < %L)',
                   name, name || '_day', lo, hi);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   parent, name, lo, hi);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', name, name || '_day');
    -- Workers COPY straight into the partition: whoever may write the parent may write it.
    FOR acl IN
        SELECT a.privilege_type,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS who
        FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = parent::regclass
    LOOP
        EXECUTE format('GRANT %s ON %I TO %s', acl.privilege_type, name, acl.who);
    END LOOP;
    RETURN true;
END
$$
"""


def _views() -> Any:
    """Migration 0008 (its view definitions); Alembic loads revisions by path, not package."""
    path = Path(__file__).with_name("0008_monitoring_views.py")
    spec = importlib.util.spec_from_file_location("inferq_migration_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _predictions_columns() -> list[Any]:
    return [
        sa.Column("job_id", IdText, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("key", IdText, nullable=True),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("probabilities", JSONDoc, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("submitted_at", TZ, nullable=False),
        sa.Column("scored_at", TZ, nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("runtime", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "day", name="pk_predictions"),
    ]


def _batches_columns() -> list[Any]:
    return [
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("n_ok", sa.Integer(), nullable=False),
        sa.Column("n_error", sa.Integer(), nullable=False),
        sa.Column("n_written", sa.Integer(), nullable=False),
        sa.Column("submitted_at", TZ, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("committed_at", TZ, nullable=False),
        sa.Column("decode_ms", sa.Double(), nullable=False),
        sa.Column("predict_ms", sa.Double(), nullable=False),
        sa.Column("write_ms", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "day", name="pk_prediction_batches"),
    ]


def _shadow_columns() -> list[Any]:
    return [
        sa.Column("job_id", IdText, nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("primary_version", sa.Integer(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("probabilities", JSONDoc, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("scored_at", TZ, nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "job_id", "model_name", "model_version", "day", name="pk_shadow_predictions"
        ),
    ]


_COLUMNS = {
    "predictions": _predictions_columns,
    "prediction_batches": _batches_columns,
    "shadow_predictions": _shadow_columns,
}
# The day of an existing row: its message's submission day (shadow rows: when scored).
_DAY_OF = {
    "predictions": "submitted_at",
    "prediction_batches": "submitted_at",
    "shadow_predictions": "scored_at",
}


def _indexes(postgres: bool) -> None:
    if postgres:
        op.create_index(
            "ix_predictions_scored_at", "predictions", ["scored_at"], postgresql_using="brin"
        )
    else:
        op.create_index("ix_predictions_scored_at", "predictions", ["scored_at"])
        op.create_index("uq_predictions_job_id", "predictions", ["job_id"], unique=True)
    op.create_index(
        "ix_predictions_key", "predictions", ["key"], postgresql_where=sa.text("key IS NOT NULL")
    )
    _indexes_batches_and_shadows()


def _indexes_batches_and_shadows() -> None:
    op.create_index(
        "ix_prediction_batches_model_name_committed_at",
        "prediction_batches",
        ["model_name", "committed_at"],
    )
    op.create_index("ix_prediction_batches_run_id", "prediction_batches", ["run_id"])
    op.create_index(
        "ix_shadow_predictions_model_name_scored_at",
        "shadow_predictions",
        ["model_name", "scored_at"],
    )


def _day_sql(column: str, postgres: bool) -> str:
    return f"CAST(timezone('UTC', {column}) AS date)" if postgres else f"date({column})"


def _partition(table: str, day: dt.date) -> None:
    name = f"{table}_p{day:%Y%m%d}"
    op.execute(
        f"CREATE TABLE {name} PARTITION OF {table} "
        f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + dt.timedelta(days=1)).isoformat()}')"
    )


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        for name in reversed(_views().VIEWS):
            op.execute(f"DROP VIEW IF EXISTS {name}")
    for table in TABLES:
        op.rename_table(table, f"{table}_pre0009")
        # Index names are per schema: the old ones go with the old table.
        for index in sa.inspect(bind).get_indexes(f"{table}_pre0009"):
            op.drop_index(str(index["name"]), table_name=f"{table}_pre0009")
        if postgres:
            op.execute(f"ALTER TABLE {table}_pre0009 DROP CONSTRAINT pk_{table}")
        extra: dict[str, Any] = {"postgresql_partition_by": "RANGE (day)"} if postgres else {}
        op.create_table(table, *_COLUMNS[table](), **extra)
    days: set[dt.date] = set()
    if postgres:
        today = dt.datetime.now(dt.UTC).date()
        days = {today + dt.timedelta(days=i) for i in range(-1, _AHEAD + 1)}
        for table in TABLES:
            day = _day_sql(_DAY_OF[table], postgres)
            found = bind.execute(sa.text(f"SELECT DISTINCT {day} FROM {table}_pre0009"))
            days.update(found.scalars())
        for each in sorted(days):
            for table in TABLES:
                _partition(table, each)
    _indexes(postgres)
    for table in TABLES:
        names = [c.name for c in _COLUMNS[table]() if isinstance(c, sa.Column)]
        old = [n for n in names if n != "day"]
        day = _day_sql(_DAY_OF[table], postgres)
        op.execute(
            f"INSERT INTO {table} ({', '.join(old)}, day) "
            f"SELECT {', '.join(old)}, {day} FROM {table}_pre0009"
        )
        op.drop_table(f"{table}_pre0009")
    if postgres:
        schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
        op.execute(CREATE_PARTITION_FN.format(schema=f'"{schema}"', lock=_LOCK))
        op.execute("REVOKE ALL ON FUNCTION inferq_create_partition(text, date) FROM PUBLIC")
        op.execute('ALTER TABLE feedback ALTER COLUMN ref TYPE text COLLATE "C"')
        for sql in _views().VIEWS.values():
            op.execute(sql)
        op.execute(PREDICTIONS_FULL)


def downgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS inferq_create_partition(text, date)")
        op.execute("DROP VIEW IF EXISTS predictions_full")
        for name in reversed(_views().VIEWS):
            op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute("ALTER TABLE feedback ALTER COLUMN ref TYPE text")
    old_pks = {
        "predictions": ["job_id"],
        "prediction_batches": ["batch_id"],
        "shadow_predictions": ["job_id", "model_name", "model_version"],
    }
    for table in TABLES:
        columns = [
            sa.Column(
                c.name, sa.Text() if c.name in ("job_id", "key") else c.type, nullable=c.nullable
            )
            for c in _COLUMNS[table]()
            if isinstance(c, sa.Column) and c.name != "day"
        ]
        names = [c.name for c in columns]
        for index in sa.inspect(bind).get_indexes(table):
            op.drop_index(str(index["name"]), table_name=table)
        op.rename_table(table, f"{table}_post0009")
        if postgres:
            op.execute(f"ALTER TABLE {table}_post0009 DROP CONSTRAINT pk_{table}")
        op.create_table(
            table, *columns, sa.PrimaryKeyConstraint(*old_pks[table], name=f"pk_{table}")
        )
        op.execute(
            f"INSERT INTO {table} ({', '.join(names)}) "
            f"SELECT {', '.join(names)} FROM {table}_post0009"
        )
        op.execute(f"DROP TABLE {table}_post0009" + (" CASCADE" if postgres else ""))
    op.create_index(
        "ix_predictions_model_name_scored_at", "predictions", ["model_name", "scored_at"]
    )
    op.create_index("ix_predictions_run_id", "predictions", ["run_id"])
    op.create_index("ix_predictions_key", "predictions", ["key"])
    _indexes_batches_and_shadows()
    if postgres:
        for sql in _views().VIEWS.values():
            op.execute(sql)
