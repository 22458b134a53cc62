"""predictions.row_no: each row's position in its input (bulk) or in its submit() call

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 03:00:00.000000

`inferq results RUN_ID -o file` returns a run's rows in input order; the job ids alone
cannot give it (they are the input's ids, in any order). The worker knows each row's number
(the message carries it), so it is written with the row: 8 bytes per row, NULL on rows
written before this revision. Adding a nullable column is a catalogue change only: no
rewrite, no lock held longer than the ALTER itself, and running workers keep working (they
name their COPY columns). `predictions_full` (Postgres) gains the column at its end.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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


def _full_view(extra: tuple[str, ...]) -> str:
    columns = [_FULL_PROBA if c == "probabilities" else f"p.{c}" for c in _PREDICTION_COLUMNS]
    columns += [f"p.{c}" for c in extra]
    return (
        f"CREATE OR REPLACE VIEW predictions_full AS SELECT {', '.join(columns)} "
        "FROM predictions p LEFT JOIN model_versions mv "
        "ON mv.name = p.model_name AND mv.version = p.model_version"
    )


def upgrade() -> None:
    op.add_column("predictions", sa.Column("row_no", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_full_view(("row_no",)))  # OR REPLACE may add columns at the end


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP VIEW IF EXISTS predictions_full")
        op.execute(_full_view(()).replace("CREATE OR REPLACE", "CREATE"))
    op.drop_column("predictions", "row_no")
