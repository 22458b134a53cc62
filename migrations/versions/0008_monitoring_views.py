"""monitoring views: prediction_feedback, model_accuracy_daily, latest_predictions,
model_throughput_hourly (Postgres only)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 09:00:00.000000

Plain views (nothing stored, always current) for analysts. They are not in the SQLAlchemy
metadata, so `alembic check` does not see them. On SQLite (the embedded default of `inferq
demo`) this migration creates nothing: the views use Postgres SQL (DISTINCT ON, FILTER,
percentile_cont, jsonb, intervals) and nobody runs analyst queries against the demo database.

NOTE for later migrations: Postgres refuses to drop or change the type of a column a view
reads. A migration that alters `predictions`, `feedback`, `prediction_batches` or
`model_versions` columns used here must drop these views first and create them again
(adding columns is fine).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PREDICTION_COLUMNS = (
    "job_id", "run_id", "key", "model_name", "model_version", "status", "label", "score",
    "probabilities", "error", "submitted_at", "scored_at", "worker", "batch_id", "error_code",
    "runtime",
)  # fmt: skip
_P = ", ".join(f"p.{c}" for c in _PREDICTION_COLUMNS)
_FEEDBACK = (
    "f.label AS true_label, f.value AS true_value, f.loaded_at AS labelled_at, "
    "f.loaded_at - p.scored_at AS label_delay"
)

# One row per labelled prediction. A job-id label for the job's own model wins over one for
# any model ('*'), and either wins over a key label; a key label applies to every row of that
# model with that key (each time the key was scored, backtests included). The three branches
# are disjoint; each starts from `feedback` and is a plain join or anti-join (hash joins on
# big loads, index probes on small ones), never a per-row subplan.
PREDICTION_FEEDBACK = f"""
CREATE VIEW prediction_feedback AS
SELECT {_P}, {_FEEDBACK}
FROM feedback f
JOIN predictions p ON p.job_id = f.ref AND p.model_name = f.model_name
WHERE f.ref_kind = 'job'
UNION ALL
SELECT {_P}, {_FEEDBACK}
FROM feedback f
JOIN predictions p ON p.job_id = f.ref
WHERE f.ref_kind = 'job' AND f.model_name = '*'
  AND NOT EXISTS (
      SELECT 1 FROM feedback g
      WHERE g.ref_kind = 'job' AND g.ref = p.job_id AND g.model_name = p.model_name)
UNION ALL
SELECT {_P}, {_FEEDBACK}
FROM feedback f
JOIN predictions p ON p.key = f.ref AND p.model_name = f.model_name
WHERE f.ref_kind = 'key'
  AND NOT EXISTS (
      SELECT 1 FROM feedback g
      WHERE g.ref_kind = 'job' AND g.ref = p.job_id AND g.model_name IN ('*', p.model_name))
"""


def _same_label(predicted: str, true_label: str, true_value: str) -> str:
    """SQL: the predicted class text equals the true label, as text or else as numbers
    ('1' and '1.0'). CASE keeps the cast away from text that is not a number."""
    return (
        f"CASE WHEN {predicted} = {true_label} THEN true "
        f"WHEN {true_value} IS NOT NULL "
        rf"AND {predicted} ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$' "
        f"THEN CAST({predicted} AS double precision) = {true_value} "
        "ELSE false END"
    )


_DAY = "CAST(timezone('UTC', {t}) AS date)"

# Per model, version and UTC day of scored_at, every day with ok rows. Accuracy for
# classifiers; ROC AUC for binary classifiers with the rank (Mann-Whitney) formula:
#   AUC = (sum of the positives' ranks - P(P+1)/2) / (P*N),
# ranks of the score ascending, tied scores sharing their average rank; positive class =
# classes[1] (the class `score` is the probability, or decision value, of), rows labelled
# neither class left out, NULL on a day with labels of one class only. MAE and RMSE of score
# vs true value for regressors. label_coverage = labelled / predictions (ok rows).
# One pass over prediction_feedback: per-row flags and ranks (windows partitioned by model,
# version and day, so a WHERE on those is pushed down), then one aggregate.
_LABELLED_ROWS = f"""
SELECT pf.model_name, pf.model_version, {_DAY.format(t="pf.scored_at")} AS day,
       pf.score, pf.true_label, pf.true_value, pf.label_delay, mv.task,
       {_same_label("pf.label", "pf.true_label", "pf.true_value")} AS correct,
       {_same_label("mv.classes ->> 1", "pf.true_label", "pf.true_value")} AS positive,
       coalesce(mv.task = 'classifier' AND jsonb_array_length(mv.classes) = 2
                AND pf.score IS NOT NULL AND pf.true_label IS NOT NULL
                AND ({_same_label("mv.classes ->> 1", "pf.true_label", "pf.true_value")}
                     OR {_same_label("mv.classes ->> 0", "pf.true_label", "pf.true_value")}),
                false) AS ranked
FROM prediction_feedback pf
LEFT JOIN model_versions mv ON mv.name = pf.model_name AND mv.version = pf.model_version
WHERE pf.status = 'ok'
"""
_RANKED_ROWS = f"""
SELECT l.*,
       CASE WHEN l.ranked THEN
           rank() OVER (PARTITION BY l.model_name, l.model_version, l.day, l.ranked
                        ORDER BY l.score)
           + (count(*) OVER (PARTITION BY l.model_name, l.model_version, l.day, l.ranked,
                                          l.score) - 1) / 2.0
       END AS avg_rank
FROM ({_LABELLED_ROWS}) l
"""
_P_N = (
    "count(*) FILTER (WHERE ranked AND positive)",
    "count(*) FILTER (WHERE ranked AND NOT positive)",
)
MODEL_ACCURACY_DAILY = f"""
CREATE VIEW model_accuracy_daily AS
SELECT s.model_name, s.model_version, s.day, s.predictions,
       coalesce(l.labelled, 0) AS labelled,
       CAST(coalesce(l.labelled, 0) AS double precision) / s.predictions AS label_coverage,
       l.label_delay_median,
       l.accuracy,
       l.roc_auc,
       l.mae,
       l.rmse
FROM (
    SELECT model_name, model_version, {_DAY.format(t="scored_at")} AS day,
           count(*) AS predictions
    FROM predictions
    WHERE status = 'ok'
    GROUP BY 1, 2, 3
) s
LEFT JOIN (
    SELECT model_name, model_version, day,
           count(*) AS labelled,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY label_delay) AS label_delay_median,
           CASE WHEN task = 'classifier' THEN CAST(avg(CASE WHEN correct THEN 1 ELSE 0 END)
               FILTER (WHERE true_label IS NOT NULL) AS double precision) END AS accuracy,
           CASE WHEN {_P_N[0]} > 0 AND {_P_N[1]} > 0 THEN CAST(
               (sum(avg_rank) FILTER (WHERE ranked AND positive)
                - {_P_N[0]} * ({_P_N[0]} + 1) / 2.0) / ({_P_N[0]} * {_P_N[1]})
               AS double precision) END AS roc_auc,
           CASE WHEN task = 'regressor' THEN avg(abs(score - true_value)) END AS mae,
           CASE WHEN task = 'regressor' THEN sqrt(avg((score - true_value) ^ 2)) END AS rmse
    FROM ({_RANKED_ROWS}) r
    GROUP BY model_name, model_version, day, task
) l ON l.model_name = s.model_name AND l.model_version = s.model_version AND l.day = s.day
"""

# The newest row (ok or error) of each key of each model: ties on scored_at broken by
# submitted_at, then job id, so the answer is stable.
LATEST_PREDICTIONS = f"""
CREATE VIEW latest_predictions AS
SELECT DISTINCT ON (p.model_name, p.key) {_P}
FROM predictions p
WHERE p.key IS NOT NULL
ORDER BY p.model_name, p.key, p.scored_at DESC, p.submitted_at DESC, p.job_id DESC
"""

# Per model, version and UTC hour of commit: messages, rows, ok and error rows,
# rows_per_second over the whole hour (the current hour is not over: it reads low),
# percentiles of the end-to-end latency of a message (submitted -> committed) in ms, and the
# mean model time per message.
_LATENCY_MS = "CAST(extract(epoch FROM committed_at - submitted_at) AS double precision) * 1000"
MODEL_THROUGHPUT_HOURLY = f"""
CREATE VIEW model_throughput_hourly AS
SELECT model_name, model_version,
       timezone('UTC', date_trunc('hour', timezone('UTC', committed_at))) AS hour,
       count(*) AS messages,
       sum(n_rows) AS rows,
       sum(n_ok) AS ok,
       sum(n_error) AS errors,
       CAST(sum(n_rows) AS double precision) / 3600 AS rows_per_second,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY {_LATENCY_MS}) AS latency_p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY {_LATENCY_MS}) AS latency_p95_ms,
       avg(predict_ms) AS predict_ms_mean
FROM prediction_batches
GROUP BY 1, 2, 3
"""

VIEWS = {  # in creation order; dropped in reverse
    "prediction_feedback": PREDICTION_FEEDBACK,
    "model_accuracy_daily": MODEL_ACCURACY_DAILY,
    "latest_predictions": LATEST_PREDICTIONS,
    "model_throughput_hourly": MODEL_THROUGHPUT_HOURLY,
}


def _postgres() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgres():
        return  # SQLite: no views (see the module docstring)
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    if not _postgres():
        return
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
