"""`inferq models compare`: a shadow version against the primary, from the results store.

Reads `shadow_predictions` joined to `predictions` on the job id (both keyed by it), so the
comparison covers exactly the rows both versions scored, online and bulk alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import Engine, text


@dataclass(frozen=True, slots=True)
class Comparison:
    """One (primary version, shadow version) pair over a window."""

    model: str
    primary_version: int
    shadow_version: int
    rows: int  # rows with a shadow result
    both_ok: int  # rows both scored
    primary_errors: int
    shadow_errors: int
    label_rows: int  # rows where both have a label
    label_agreement: float | None
    score_rows: int  # rows where both have a score
    score_diff_mean: float | None
    score_diff_p95: float | None
    score_diff_max: float | None
    first: dt.datetime | None
    last: dt.datetime | None
    #: Rows with ground truth (`inferq feedback`), and both versions' metrics on them;
    #: None without labels (or on SQLite, which has no prediction_feedback view).
    labelled: int = 0
    primary_accuracy: float | None = None
    shadow_accuracy: float | None = None
    primary_mae: float | None = None
    shadow_mae: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        data["first"] = self.first.isoformat() if self.first else None
        data["last"] = self.last.isoformat() if self.last else None
        return data


_PG = """
SELECT p.model_version AS primary_version, s.model_version AS shadow_version,
       count(*) AS rows,
       count(*) FILTER (WHERE p.status = 'ok' AND s.error IS NULL) AS both_ok,
       count(*) FILTER (WHERE p.status <> 'ok') AS primary_errors,
       count(*) FILTER (WHERE s.error IS NOT NULL) AS shadow_errors,
       count(*) FILTER (WHERE p.label IS NOT NULL AND s.label IS NOT NULL) AS label_rows,
       avg(CASE WHEN p.label = s.label THEN 1.0 ELSE 0.0 END)
           FILTER (WHERE p.label IS NOT NULL AND s.label IS NOT NULL) AS label_agreement,
       count(*) FILTER (WHERE p.score IS NOT NULL AND s.score IS NOT NULL) AS score_rows,
       avg(abs(p.score - s.score)) AS score_diff_mean,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY abs(p.score - s.score)) AS score_diff_p95,
       max(abs(p.score - s.score)) AS score_diff_max,
       min(s.scored_at) AS first, max(s.scored_at) AS last
FROM shadow_predictions s
JOIN predictions p ON p.job_id = s.job_id AND p.model_name = s.model_name
WHERE s.model_name = :model AND s.scored_at >= :since
GROUP BY p.model_version, s.model_version
ORDER BY s.model_version, p.model_version
"""

_ROWS = """
SELECT p.model_version, s.model_version, p.status, s.error, p.label, s.label, p.score,
       s.score, s.scored_at
FROM shadow_predictions s
JOIN predictions p ON p.job_id = s.job_id AND p.model_name = s.model_name
WHERE s.model_name = :model AND s.scored_at >= :since
"""


# Both versions against the ground truth loaded so far (the prediction_feedback view joins
# labels by job id or key); labels compare as text, regressors by absolute error.
_FEEDBACK = """
SELECT pf.model_version AS primary_version, s.model_version AS shadow_version,
       count(*) AS labelled,
       avg(CASE WHEN pf.label = pf.true_label THEN 1.0 ELSE 0.0 END)
           FILTER (WHERE pf.true_label IS NOT NULL AND pf.label IS NOT NULL) AS primary_accuracy,
       avg(CASE WHEN s.label = pf.true_label THEN 1.0 ELSE 0.0 END)
           FILTER (WHERE pf.true_label IS NOT NULL AND s.label IS NOT NULL) AS shadow_accuracy,
       avg(abs(pf.score - pf.true_value)) FILTER (WHERE pf.label IS NULL) AS primary_mae,
       avg(abs(s.score - pf.true_value)) FILTER (WHERE s.label IS NULL) AS shadow_mae
FROM shadow_predictions s
JOIN prediction_feedback pf ON pf.job_id = s.job_id AND pf.model_name = s.model_name
WHERE s.model_name = :model AND s.scored_at >= :since AND pf.status = 'ok' AND s.error IS NULL
GROUP BY 1, 2
"""


def compare(engine: Engine, model: str, since: dt.datetime) -> list[Comparison]:
    """Label agreement and score differences of every shadow of ``model`` since ``since``,
    and both versions' metrics where ground truth was loaded."""
    params = {"model": model, "since": since}
    with engine.connect() as conn:
        if conn.dialect.name != "postgresql":
            return _in_python(model, list(conn.execute(text(_ROWS), params).all()))
        found = [
            Comparison(model=model, **{k: _num(v) for k, v in r._mapping.items()})
            for r in conn.execute(text(_PG), params)
        ]
        truth = {
            (int(r.primary_version), int(r.shadow_version)): {
                k: _num(v)
                for k, v in r._mapping.items()
                if k not in ("primary_version", "shadow_version")
            }
            for r in conn.execute(text(_FEEDBACK), params)
        }
    return [replace(c, **truth.get((c.primary_version, c.shadow_version), {})) for c in found]


def _num(value: Any) -> Any:
    """Decimals from Postgres' avg() as floats."""
    return float(value) if value is not None and type(value).__name__ == "Decimal" else value


def _in_python(model: str, rows: list[Any]) -> list[Comparison]:
    """The same aggregates for SQLite (no percentile_cont): the embedded demo's small tables."""
    import numpy as np

    groups: dict[tuple[int, int], list[Any]] = {}
    for r in rows:
        groups.setdefault((int(r[0]), int(r[1])), []).append(r)
    out = []
    for (pv, sv), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        labels = [(r[4], r[5]) for r in rs if r[4] is not None and r[5] is not None]
        diffs = np.array([abs(r[6] - r[7]) for r in rs if r[6] is not None and r[7] is not None])
        times = [r[8] for r in rs]
        out.append(
            Comparison(
                model=model,
                primary_version=pv,
                shadow_version=sv,
                rows=len(rs),
                both_ok=sum(1 for r in rs if r[2] == "ok" and r[3] is None),
                primary_errors=sum(1 for r in rs if r[2] != "ok"),
                shadow_errors=sum(1 for r in rs if r[3] is not None),
                label_rows=len(labels),
                label_agreement=(sum(a == b for a, b in labels) / len(labels)) if labels else None,
                score_rows=len(diffs),
                score_diff_mean=float(diffs.mean()) if len(diffs) else None,
                score_diff_p95=float(np.percentile(diffs, 95)) if len(diffs) else None,
                score_diff_max=float(diffs.max()) if len(diffs) else None,
                first=min(times) if times else None,
                last=max(times) if times else None,
            )
        )
    return out
