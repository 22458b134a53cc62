"""Database tables (SQLAlchemy Core). `predictions` is a public contract: people query it.

Tables are created only by Alembic migrations (``inferq db upgrade``), never by create_all.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Double,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

# NOTE: a naming convention makes constraint names deterministic, so `alembic check`
# and hand-written migrations agree on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: JSON that is JSONB on Postgres (indexable, queryable with ->>) and JSON elsewhere.
JSONDoc = JSON().with_variant(JSONB(), "postgresql")
TZ = DateTime(timezone=True)
#: Job ids and keys compare byte-wise: cheaper index inserts than a locale's rules, and a
#: run's job ids (``<run token>:<row id>``) are one range of the primary key.
IdText = Text().with_variant(Text(collation="C"), "postgresql")
#: A flat vector of bin counts: bigint[] on Postgres (added element-wise in SQL), JSON elsewhere.
BinCounts = JSON().with_variant(ARRAY(BigInteger()), "postgresql")

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("sha256", Text, nullable=False),
    Column("sklearn_version", Text, nullable=False),
    Column("task", Text, nullable=False),  # 'classifier' | 'regressor' | 'outlier' | 'cluster'
    Column("estimator", Text, nullable=False),  # class name, e.g. 'Pipeline'
    Column("classes", JSONDoc, nullable=True),  # list of labels as strings, classifiers only
    Column("n_features", Integer, nullable=False),
    Column("feature_names", JSONDoc, nullable=True),  # list of str when fitted on a DataFrame
    Column("has_proba", Integer, nullable=False),  # 1 when predict_proba is available
    Column("artifact", Text, nullable=False),  # path relative to the model store
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", TZ, nullable=False),
    # InputSchema.to_json() + "source"/"warnings" (common/rows/schema.py); NULL for versions
    # registered before 0004: they are served as all numbers.
    Column("input_schema", JSONDoc, nullable=True),
    Column("reference", JSONDoc, nullable=True),  # {path, sha256, rows, format} of --reference
    # Lifecycle (0006). 'active' | 'retired': a retired version is never served again.
    Column("status", Text, nullable=False, server_default="active"),
    Column("retired_at", TZ, nullable=True),
    Column("format", Text, nullable=False, server_default="joblib"),  # 'joblib' | 'skops'
    Column("trusted", JSONDoc, nullable=True),  # skops: the types trusted at registration
    Column("checks", JSONDoc, nullable=True),  # the validation gate's result (models/checks.py)
    # What workers serve it with: 'sklearn', or 'onnx' once a parity check passed.
    Column("runtime", Text, nullable=False, server_default="sklearn"),
    Column("onnx", JSONDoc, nullable=True),  # conversion + parity report (models/optimize.py)
    # Drift baseline from the reference sample (common/drift.py): frozen bin edges and the
    # reference share per bin, per feature and for the output; calibration for estimates.
    Column("baseline", JSONDoc, nullable=True),
    # Registry management (0011): free text, KEY=VALUE tags ({"team": "risk"}), who
    # registered it (user@host), when it was archived (archived versions are also retired;
    # `models list` hides them), and how its features differed from production at
    # registration ({"against": "churn@3", "changes": [...]}; NULL: no difference).
    Column("description", Text, nullable=True),
    Column("tags", JSONDoc, nullable=True),
    Column("registered_by", Text, nullable=True),
    Column("archived_at", TZ, nullable=True),
    Column("schema_changes", JSONDoc, nullable=True),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("alias", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", TZ, nullable=False),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)

#: One row per job. Partitioned by ``day`` on Postgres (common/partitions.py): the UTC day
#: its message was submitted on, or its bulk run started on; the primary key includes it, and
#: a job id is unique across days too (workers/results.py). Each row costs Postgres one
#: primary-key insert, a partial key index entry and a BRIN summary (ARCHITECTURE.md).
predictions = Table(
    "predictions",
    metadata,
    Column("job_id", IdText, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("run_id", Text, nullable=True),
    Column("key", IdText, nullable=True),
    Column("model_name", Text, nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("status", Text, nullable=False),  # 'ok' | 'error'
    Column("label", Text, nullable=True),
    Column("score", Double, nullable=True),
    # NULL for a binary classifier's ok rows whose score is P(classes[1]): the other class's
    # probability is 1 - score (the `predictions_full` view and the client fill it in).
    Column("probabilities", JSONDoc, nullable=True),
    Column("error", Text, nullable=True),
    Column("submitted_at", TZ, nullable=False),
    Column("scored_at", TZ, nullable=False),
    Column("worker", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    # Machine-readable kind of an error row (contract.ERROR_CODES); NULL on ok rows and on
    # error rows written before codes existed.
    Column("error_code", Text, nullable=True),
    # 'sklearn' | 'onnx': the runtime that scored the row (NULL before 0006 and on rows no
    # model scored).
    Column("runtime", Text, nullable=True),
    # The row's position in its input (a bulk run: from 0, as row errors count) or in its
    # submit() call (online); `inferq results` orders by it. NULL on rows before 0010.
    Column("row_no", BigInteger, nullable=True),
    # BRIN: rows arrive in time order, so a few bytes per 128 pages narrow a time window.
    Index(None, "scored_at", postgresql_using="brin"),
    Index(None, "key", postgresql_where=text("key IS NOT NULL")),  # feedback joins by key
    postgresql_partition_by="RANGE (day)",
)

#: Exact bin counts per feature and for the output, added by workers in the results'
#: transaction (no feature values stored). Drift for a window is a SUM over these rows.
drift_counts = Table(
    "drift_counts",
    metadata,
    Column("model_name", Text, primary_key=True),
    Column("model_version", Integer, primary_key=True),
    Column("baseline", Text, primary_key=True),  # common.drift.baseline_id of the bin layout
    Column("bucket", TZ, primary_key=True),  # the hour the rows were scored in
    Column("worker", Text, primary_key=True),  # node:pid: one writer per row, no lock waits
    # Every feature's bin counts, then the output's, in Baseline.layout() order.
    Column("counts", BinCounts, nullable=False),
    Index(None, "model_name", "bucket"),  # a window of one model, whatever its versions
)

#: Confidence-based accuracy estimate (CBPE): calibrated P(correct) summed per hour.
accuracy_estimates = Table(
    "accuracy_estimates",
    metadata,
    Column("model_name", Text, primary_key=True),
    Column("model_version", Integer, primary_key=True),
    Column("bucket", TZ, primary_key=True),
    Column("worker", Text, primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("expected_correct", Double, nullable=False),
)

#: Ground truth, joined to predictions by job id or by key, whenever it arrives.
feedback = Table(
    "feedback",
    metadata,
    Column("model_name", Text, primary_key=True),  # '*' = any model (job ids are global)
    Column("ref_kind", Text, primary_key=True),  # 'job' | 'key'
    Column("ref", IdText, primary_key=True),
    Column("label", Text, nullable=True),  # classifiers: the true class, as text
    Column("value", Double, nullable=True),  # regressors: the true value
    Column("loaded_at", TZ, nullable=False),
    Column("source", Text, nullable=True),  # file or "client"
    Index(None, "ref"),
)

#: The version each model's jobs are also scored by, next to the primary (`models shadow`).
model_shadows = Table(
    "model_shadows",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("since", TZ, nullable=False),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)

#: A shadow version's outputs for a job; written in the primary's transaction (a savepoint),
#: so a redelivered message never adds a second one, and a failing shadow write never fails
#: the primary rows.
shadow_predictions = Table(
    "shadow_predictions",
    metadata,
    Column("job_id", IdText, primary_key=True),
    Column("model_name", Text, primary_key=True),
    Column("model_version", Integer, primary_key=True),  # the shadow version
    Column("day", Date, primary_key=True),  # the primary row's message day (partition key)
    Column("primary_version", Integer, nullable=False),  # the version whose row is in predictions
    Column("label", Text, nullable=True),
    Column("score", Double, nullable=True),
    Column("probabilities", JSONDoc, nullable=True),
    Column("error", Text, nullable=True),
    Column("scored_at", TZ, nullable=False),
    Column("worker", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Index(None, "model_name", "scored_at"),
    postgresql_partition_by="RANGE (day)",
)

#: One row per committed message: the idempotency ledger and the lineage/timings of a batch.
#: Partitioned like `predictions`: a redelivered message carries the same day, so it meets
#: its first delivery's row here.
prediction_batches = Table(
    "prediction_batches",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("run_id", Text, nullable=True),
    Column("model_name", Text, nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("worker", Text, nullable=False),
    Column("n_rows", Integer, nullable=False),
    Column("n_ok", Integer, nullable=False),
    Column("n_error", Integer, nullable=False),
    Column("n_written", Integer, nullable=False),  # rows new to `predictions` (not duplicates)
    Column("submitted_at", TZ, nullable=False),
    Column("received_at", TZ, nullable=False),
    Column("committed_at", TZ, nullable=False),
    Column("decode_ms", Double, nullable=False),
    Column("predict_ms", Double, nullable=False),
    Column("write_ms", Double, nullable=False),
    Index(None, "model_name", "committed_at"),
    Index(None, "run_id"),
    postgresql_partition_by="RANGE (day)",
)

#: One row per bulk scoring run (`inferq score`).
scoring_runs = Table(
    "scoring_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("model_name", Text, nullable=False),
    Column("model_version", Integer, nullable=False),  # resolved once, at the start
    Column("source", Text, nullable=False),  # e.g. "csv:/data/x.csv" or "sql:SELECT ..."
    Column("id_column", Text, nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("total_rows", BigInteger, nullable=True),  # known once the input is read
    Column("n_chunks", Integer, nullable=True),
    Column("enqueued", BigInteger, nullable=False),
    Column("scored_ok", BigInteger, nullable=False),
    Column("scored_error", BigInteger, nullable=False),
    Column("status", Text, nullable=False),  # enqueuing | running | done | failed
    Column("error", Text, nullable=True),  # why a run failed
    Column("max_error_rate", Double, nullable=True),
    Column("started_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Column("finished_at", TZ, nullable=True),
    Index(None, "started_at"),
)

#: Per-chunk ledger of a run: what was enqueued; committed = its batch is in prediction_batches.
scoring_run_chunks = Table(
    "scoring_run_chunks",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("chunk_no", Integer, primary_key=True),
    Column("batch_id", Text, nullable=False, unique=True),
    Column("first_row", BigInteger, nullable=False),
    Column("n_rows", Integer, nullable=False),
    Column("enqueued_at", TZ, nullable=False),
    ForeignKeyConstraint(["run_id"], ["scoring_runs.run_id"], ondelete="CASCADE"),
)

#: Messages taken out of circulation (e.g. they killed their worker process every time), with
#: the original payload so their rows can be recovered and re-submitted.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("run_id", Text, nullable=True),
    Column("model_name", Text, nullable=True),
    Column("model_version", Integer, nullable=True),
    Column("n_rows", Integer, nullable=False),
    Column("deliveries", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),  # msgpack of the task kwargs
    Column("created_at", TZ, nullable=False),
)
