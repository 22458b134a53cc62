"""model lifecycle: status, validation checks, serving runtime (ONNX), file format (skops),
shadow versions and their predictions, and the runtime that scored each row

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 17:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # NOTE: constant server defaults and nullable columns are metadata-only changes on
    # Postgres >= 11: nothing is rewritten, even on a large table.
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("status", sa.Text(), nullable=False, server_default="active"))
        batch.add_column(sa.Column("retired_at", TZ, nullable=True))
        batch.add_column(sa.Column("format", sa.Text(), nullable=False, server_default="joblib"))
        batch.add_column(sa.Column("trusted", JSONDoc, nullable=True))
        batch.add_column(sa.Column("checks", JSONDoc, nullable=True))
        batch.add_column(sa.Column("runtime", sa.Text(), nullable=False, server_default="sklearn"))
        batch.add_column(sa.Column("onnx", JSONDoc, nullable=True))
    op.add_column("predictions", sa.Column("runtime", sa.Text(), nullable=True))
    op.create_table(
        "model_shadows",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("since", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name=op.f("fk_model_shadows_name_model_versions"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_model_shadows")),
    )
    op.create_table(
        "shadow_predictions",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("primary_version", sa.Integer(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("probabilities", JSONDoc, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("scored_at", TZ, nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "job_id", "model_name", "model_version", name=op.f("pk_shadow_predictions")
        ),
    )
    op.create_index(
        op.f("ix_shadow_predictions_model_name_scored_at"),
        "shadow_predictions",
        ["model_name", "scored_at"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_shadow_predictions_model_name_scored_at"), "shadow_predictions")
    op.drop_table("shadow_predictions")
    op.drop_table("model_shadows")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("runtime")
    with op.batch_alter_table("model_versions") as batch:
        for column in ("onnx", "runtime", "checks", "trusted", "format", "retired_at", "status"):
            batch.drop_column(column)
