"""registry management: description, tags, who registered a version, archive, the schema
changes recorded at registration, and the automatic `latest` alias

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 12:00:00.000000

Nullable columns only: a metadata-only change on Postgres, nothing is rewritten. An archived
version is a retired one with ``archived_at`` set, so no new status value is needed.

Every model gets the ``latest`` alias the registry now maintains (its newest version that is
not retired). A model that already has an alias named ``latest`` keeps it, and from now on
the registry moves it. The downgrade removes every ``latest`` alias (nothing would move them
any more).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
TZ = sa.DateTime(timezone=True)
COLUMNS = ("description", "tags", "registered_by", "archived_at", "schema_changes")

# The newest active version of each model that has no `latest` alias yet (works on SQLite too).
_LATEST = """
INSERT INTO model_aliases (name, alias, version, updated_at)
SELECT mv.name, 'latest', max(mv.version), CURRENT_TIMESTAMP
FROM model_versions mv
WHERE mv.status = 'active'
  AND NOT EXISTS (SELECT 1 FROM model_aliases a WHERE a.name = mv.name AND a.alias = 'latest')
GROUP BY mv.name
"""


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch.add_column(sa.Column("tags", JSONDoc, nullable=True))
        batch.add_column(sa.Column("registered_by", sa.Text(), nullable=True))
        batch.add_column(sa.Column("archived_at", TZ, nullable=True))
        batch.add_column(sa.Column("schema_changes", JSONDoc, nullable=True))
    op.execute(_LATEST)


def downgrade() -> None:
    op.execute("DELETE FROM model_aliases WHERE alias = 'latest'")
    with op.batch_alter_table("model_versions") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
