"""input schema and reference sample per model version

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:

    # Nullable: versions registered before keep NULL, which means the all-number schema.
    op.add_column("model_versions", sa.Column("input_schema", _json(), nullable=True))
    op.add_column("model_versions", sa.Column("reference", _json(), nullable=True))


def downgrade() -> None:

    # batch mode: SQLite drops a column by copying the table
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("reference")
        batch.drop_column("input_schema")
