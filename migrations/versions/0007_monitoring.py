"""monitoring: drift baselines, exact per-batch bin counts, accuracy estimates, feedback

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 18:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
TZ = sa.DateTime(timezone=True)
#: One flat vector of bin counts (common/drift.py Baseline.layout): bigint[] on Postgres.
Counts = sa.JSON().with_variant(ARRAY(sa.BigInteger()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("baseline", JSONDoc, nullable=True))
    # One row per (version, baseline, hour, worker process): a batch adds its counts to its
    # own process's row (worker = node:pid), so two transactions never wait for one row, and
    # a window is a SUM over hours x processes rows, whatever the number of predictions.
    op.create_table(
        "drift_counts",
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("baseline", sa.Text(), nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("counts", Counts, nullable=False),
        sa.PrimaryKeyConstraint(
            "model_name", "model_version", "baseline", "bucket", "worker",
            name=op.f("pk_drift_counts"),
        ),
    )  # fmt: skip
    op.create_index(
        op.f("ix_drift_counts_model_name_bucket"), "drift_counts", ["model_name", "bucket"]
    )
    op.create_table(
        "accuracy_estimates",
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("bucket", TZ, nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("expected_correct", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint(
            "model_name", "model_version", "bucket", "worker",
            name=op.f("pk_accuracy_estimates"),
        ),
    )  # fmt: skip
    op.create_table(
        "feedback",
        sa.Column("model_name", sa.Text(), nullable=False),  # '*': any model (job ids)
        sa.Column("ref_kind", sa.Text(), nullable=False),  # 'job' | 'key'
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("loaded_at", TZ, nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("model_name", "ref_kind", "ref", name=op.f("pk_feedback")),
    )
    op.create_index(op.f("ix_feedback_ref"), "feedback", ["ref"])
    op.create_index(op.f("ix_predictions_key"), "predictions", ["key"])


def downgrade() -> None:
    op.drop_index(op.f("ix_predictions_key"), "predictions")
    op.drop_index(op.f("ix_feedback_ref"), "feedback")
    op.drop_table("feedback")
    op.drop_table("accuracy_estimates")
    op.drop_index(op.f("ix_drift_counts_model_name_bucket"), "drift_counts")
    op.drop_table("drift_counts")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("baseline")
