"""bulk scoring runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 12:13:00.670744
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "scoring_runs",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("id_column", sa.Text(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("total_rows", sa.BigInteger(), nullable=True),
        sa.Column("n_chunks", sa.Integer(), nullable=True),
        sa.Column("enqueued", sa.BigInteger(), nullable=False),
        sa.Column("scored_ok", sa.BigInteger(), nullable=False),
        sa.Column("scored_error", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("max_error_rate", sa.Double(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_scoring_runs")),
    )
    op.create_index(
        op.f("ix_scoring_runs_started_at"), "scoring_runs", ["started_at"], unique=False
    )
    op.create_table(
        "scoring_run_chunks",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("chunk_no", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("first_row", sa.BigInteger(), nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["scoring_runs.run_id"],
            name=op.f("fk_scoring_run_chunks_run_id_scoring_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "chunk_no", name=op.f("pk_scoring_run_chunks")),
        sa.UniqueConstraint("batch_id", name=op.f("uq_scoring_run_chunks_batch_id")),
    )
    op.create_index(
        op.f("ix_prediction_batches_run_id"), "prediction_batches", ["run_id"], unique=False
    )


def downgrade() -> None:

    op.drop_index(op.f("ix_prediction_batches_run_id"), table_name="prediction_batches")
    op.drop_table("scoring_run_chunks")
    op.drop_index(op.f("ix_scoring_runs_started_at"), table_name="scoring_runs")
    op.drop_table("scoring_runs")
