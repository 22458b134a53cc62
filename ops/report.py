"""`inferq report`: is this model still fine? Throughput, errors, latency, drift, estimated and
realised accuracy per UTC day of the last days, read from the results store.

Sources: `prediction_batches` (one row per committed message: rows, errors, timings),
`drift_counts` through ops/drift.py, `accuracy_estimates` (the label-free CBPE estimate) and,
on Postgres, the `model_accuracy_daily` view (realised accuracy once labels are loaded; the
embedded SQLite database has no views). Each is one aggregate query over the window: nothing
reads `predictions` row by row except the view. ops/report_html.py renders it: the terminal
screen and the self-contained HTML page.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from inferq.common.drift import MIN_ROWS, OUTPUT
from inferq.common.errors import InvalidInput
from inferq.common.schema import accuracy_estimates, feedback, prediction_batches
from inferq.models import registry
from inferq.ops.drift import DriftGroup, drift_report, no_baseline
from sqlalchemy import Engine, func, inspect, select, text

MAX_DAYS = 366
#: An error rate above this is listed among the findings.
ERROR_RATE_FINDING = 0.01
#: |realised - estimated| accuracy on labelled days above this is listed among the findings.
GAP_FINDING = 0.05
_STATS = ("messages", "rows", "ok", "errors", "error_rate", "latency_p50_ms", "latency_p95_ms",
          "predict_ms_mean")  # fmt: skip
_REALISED = ("predictions", "labelled", "label_coverage", "label_delay_median_s",
             "realised_accuracy", "roc_auc", "mae", "rmse")  # fmt: skip


@dataclass(slots=True)
class Report:
    """Everything `inferq report` shows (``to_json`` is the --json document)."""

    model: str
    version: int  # the version drift plots and the score distribution are about
    task: str
    versions: list[int]  # versions with messages in the window
    days: list[str]  # UTC days, oldest first
    since: dt.datetime
    until: dt.datetime
    database: str
    summary: dict[str, Any]
    daily: list[dict[str, Any]]
    drift: list[DriftGroup]  # whole window, every version with counts
    drift_daily: list[DriftGroup]  # per day, ``version`` only
    baseline: bool
    realised_status: str  # ok | no_labels | no_view
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[tuple[int, Any]]:
        """(version, FeatureDrift) of every feature flagged over the whole window."""
        return [(g.version, f) for g in self.drift for f in g.flagged]

    def output_bins(self) -> list[dict[str, Any]]:
        """The score (or label) distribution of ``version`` in the window vs the reference."""
        for g in self.drift:
            if g.version == self.version:
                for f in g.features:
                    if f.feature == OUTPUT and f.rows:
                        return f.bins
        return []

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        daily_drift = [{"version": g.version, "day": g.group, "rows": g.rows,
                        "features": [{k: v for k, v in f.to_json().items() if k != "bins"}
                                     for f in g.features]} for g in self.drift_daily]  # fmt: skip
        return {
            "model": self.model, "version": self.version, "task": self.task,
            "versions": self.versions, "days": self.days, "since": self.since.isoformat(),
            "until": self.until.isoformat(), "database": self.database,
            "summary": self.summary, "daily": self.daily,
            "drift": {"baseline": self.baseline, "window": [g.to_json() for g in self.drift],
                      "daily": daily_drift},
            "realised_status": self.realised_status,
            "findings": self.findings, "notes": self.notes,
        }  # fmt: skip


def window(days: int, now: dt.datetime | None = None) -> tuple[dt.datetime, list[str]]:
    """Start (00:00 UTC of the first day) and the UTC days of a ``days``-day window ending today."""
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"--days {days}: use 1 to {MAX_DAYS}")
    today = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    days_list = [(first + dt.timedelta(days=i)).isoformat() for i in range(days)]
    return dt.datetime.combine(first, dt.time(), dt.UTC), days_list


def _utc_day(ts: dt.datetime) -> str:
    """The UTC day of a timestamp (SQLite returns naive datetimes, stored in UTC)."""
    return (ts.astimezone(dt.UTC) if ts.tzinfo else ts).date().isoformat()


def _stats(messages: int, rows: Any, ok: Any, errors: Any, p50: Any, p95: Any,
           predict: Any) -> dict[str, Any]:  # fmt: skip
    rows, errors = int(rows or 0), int(errors or 0)

    def f(v: Any) -> float | None:
        return None if v is None else round(float(v), 3)

    return {"messages": int(messages), "rows": rows, "ok": int(ok or 0), "errors": errors,
            "error_rate": errors / rows if rows else None, "latency_p50_ms": f(p50),
            "latency_p95_ms": f(p95), "predict_ms_mean": f(predict)}  # fmt: skip


_PG_THROUGHPUT = """
SELECT GROUPING(d) AS gd, GROUPING(model_version) AS gv, d, model_version, count(*),
       sum(n_rows), sum(n_ok), sum(n_error),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lat), percentile_cont(0.95) WITHIN GROUP
       (ORDER BY lat), avg(predict_ms)
FROM (SELECT CAST(CAST(timezone('UTC', committed_at) AS date) AS text) AS d, model_version,
             n_rows, n_ok, n_error, predict_ms,
             CAST(extract(epoch FROM committed_at - submitted_at) AS double precision) * 1000
                 AS lat
      FROM prediction_batches
      WHERE model_name = :name AND committed_at >= :start {version}) b
GROUP BY GROUPING SETS ((d), (model_version), ())
"""


def throughput(
    engine: Engine, name: str, version: int | None, start: dt.datetime
) -> tuple[dict[str, dict[str, Any]], dict[int, int], dict[str, Any]]:
    """({day: stats}, {version: rows}, window stats) from `prediction_batches`; latency is a
    message's submitted -> committed time, percentiles over messages."""
    by_day: dict[str, dict[str, Any]] = {}
    by_version: dict[int, int] = {}
    total = _stats(0, 0, 0, 0, None, None, None)
    if engine.dialect.name == "postgresql":
        sql = _PG_THROUGHPUT.format(version="AND model_version = :v" if version else "")
        with engine.connect() as conn:
            for r in conn.execute(text(sql), {"name": name, "start": start, "v": version}):
                stats = _stats(*r[4:])
                if not r.gd:
                    by_day[r.d] = stats
                elif not r.gv:
                    by_version[int(r.model_version)] = stats["rows"]
                else:
                    total = stats
        return by_day, by_version, total
    # SQLite (the embedded default, small): read the messages, aggregate here.
    b = prediction_batches.c
    query = select(b.committed_at, b.submitted_at, b.model_version, b.n_rows, b.n_ok,
                   b.n_error, b.predict_ms).where(b.model_name == name,
                                                  b.committed_at >= start)  # fmt: skip
    if version is not None:
        query = query.where(b.model_version == version)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return by_day, by_version, total
    day = np.array([_utc_day(r[0]) for r in rows])
    lat = np.array([(r[0] - r[1]).total_seconds() * 1000 for r in rows])
    ver, n, ok, err, pred = (np.array([r[i] for r in rows]) for i in range(2, 7))

    def agg(m: np.ndarray) -> dict[str, Any]:
        p50, p95 = np.percentile(lat[m], [50, 95])
        return _stats(int(m.sum()), n[m].sum(), ok[m].sum(), err[m].sum(), p50, p95,
                      pred[m].mean())  # fmt: skip

    for d in np.unique(day).tolist():
        by_day[d] = agg(day == d)
    for v in np.unique(ver).tolist():
        by_version[int(v)] = int(n[ver == v].sum())
    return by_day, by_version, agg(np.ones(len(rows), dtype=bool))


def estimated(
    engine: Engine, name: str, version: int | None, start: dt.datetime
) -> dict[str, tuple[int, float]]:
    """{day: (rows, expected correct)} from `accuracy_estimates` (hourly rows, summed here)."""
    a = accuracy_estimates.c
    query = select(a.bucket, func.sum(a.n), func.sum(a.expected_correct)).where(
        a.model_name == name, a.bucket >= start
    )
    if version is not None:
        query = query.where(a.model_version == version)
    out: dict[str, tuple[int, float]] = {}
    with engine.connect() as conn:
        for bucket, n, expected in conn.execute(query.group_by(a.bucket)):
            d = _utc_day(bucket)
            rows, correct = out.get(d, (0, 0.0))
            out[d] = (rows + int(n), correct + float(expected))
    return out


def realised(
    engine: Engine, name: str, version: int | None, first_day: str
) -> dict[str, dict[str, Any]] | None:
    """{day: realised metrics} from the `model_accuracy_daily` view, versions combined
    (weighted by labelled rows); None where the view does not exist (SQLite, before 0008)."""
    if engine.dialect.name != "postgresql" or "model_accuracy_daily" not in set(
        inspect(engine).get_view_names()
    ):
        return None
    sql = (
        "SELECT CAST(day AS text), predictions, labelled, "
        "extract(epoch FROM label_delay_median), accuracy, roc_auc, mae, rmse "
        "FROM model_accuracy_daily WHERE model_name = :name AND day >= CAST(:d AS date)"
        + (" AND model_version = :v" if version is not None else "")
    )
    acc: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for d, preds, lab, delay, *metrics in conn.execute(
            text(sql), {"name": name, "d": first_day, "v": version}
        ):
            s = acc.setdefault(d, {"predictions": 0, "labelled": 0, "w": {}})
            s["predictions"] += int(preds)
            s["labelled"] += int(lab)
            values = [delay, *metrics[:3], None if metrics[3] is None else metrics[3] ** 2]
            for key, v in zip(("delay", "acc", "auc", "mae", "mse"), values, strict=True):
                if v is not None and lab:
                    w = s["w"].setdefault(key, [0.0, 0])
                    w[0], w[1] = w[0] + float(v) * lab, w[1] + lab
    out = {}
    for d, s in acc.items():
        mean = {k: tot / n for k, (tot, n) in s["w"].items()}
        out[d] = {"predictions": s["predictions"], "labelled": s["labelled"],
                  "label_coverage": s["labelled"] / s["predictions"] if s["predictions"] else 0,
                  "label_delay_median_s": mean.get("delay"), "realised_accuracy": mean.get("acc"),
                  "roc_auc": mean.get("auc"), "mae": mean.get("mae"),
                  "rmse": mean["mse"] ** 0.5 if "mse" in mean else None}  # fmt: skip
    return out


def _feedback_rows(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(
            feedback.c.model_name.in_([name, "*"]))).scalar_one())  # fmt: skip


def _weighted(daily: list[dict[str, Any]], key: str) -> float | None:
    """Labelled-weighted mean of a realised metric over the days."""
    pairs = [(d[key], d["labelled"]) for d in daily if d.get(key) is not None and d["labelled"]]
    n = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / n if n else None


def build_report(
    engine: Engine, name: str, days: int = 7, version: int | None = None,
    now: dt.datetime | None = None,
) -> Report:  # fmt: skip
    """Gather the report of model ``name`` (every version, or ``version``) for ``days`` days."""
    mv = registry.find(engine, name)  # ModelNotFound for an unknown model
    if version is not None:
        mv = registry.get_version(engine, name, version)
    start, day_list = window(days, now)
    until = now or dt.datetime.now(dt.UTC)
    by_day, by_version, total = throughput(engine, name, version, start)
    if version is None and by_version and by_version.get(mv.version, 0) == 0:
        # The resolved version served nothing in the window: plot the one that did.
        mv = registry.get_version(engine, name, max(by_version, key=lambda v: by_version[v]))
    est = estimated(engine, name, version, start)
    real = realised(engine, name, version, day_list[0])
    groups = drift_report(engine, name, start, version, None)
    daily_groups = drift_report(engine, name, start, mv.version, "day") if mv.baseline else []
    per_day_drift = {g.group: g for g in daily_groups}

    daily = []
    for d in day_list:
        row: dict[str, Any] = {"day": d, **by_day.get(d, _stats(0, 0, 0, 0, None, None, None))}
        n_est, correct = est.get(d, (0, 0.0))
        row["estimated_rows"] = n_est
        row["estimated_accuracy"] = correct / n_est if n_est else None
        r = (real or {}).get(d)
        row.update(r if r else {k: 0 if k in ("predictions", "labelled") else None
                                for k in _REALISED})  # fmt: skip
        g = per_day_drift.get(d)
        top = max(g.features, key=lambda f: f.psi) if g and g.features else None
        row["max_psi"] = round(top.psi, 6) if top else None
        row["max_psi_feature"] = top.feature if top else None
        row["max_psi_verdict"] = top.verdict if top else None
        row["drift_flagged"] = [f.feature for f in g.flagged] if g else []
        daily.append(row)

    n_est = sum(n for n, _ in est.values())
    labelled = sum(d["labelled"] for d in daily)
    predictions = sum(d["predictions"] for d in daily)
    summary: dict[str, Any] = {
        **total,
        "estimated_accuracy": sum(c for _, c in est.values()) / n_est if n_est else None,
        "realised_accuracy": _weighted(daily, "realised_accuracy"),
        "labelled": labelled,
        "label_coverage": labelled / predictions if predictions else None,
        "roc_auc": _weighted(daily, "roc_auc"),
        "mae": _weighted(daily, "mae"),
        "rmse": None,
        "flagged": [],
    }  # fmt: skip
    mse = _weighted([{**d, "mse": None if d["rmse"] is None else d["rmse"] ** 2} for d in daily],
                    "mse")  # fmt: skip
    summary["rmse"] = None if mse is None else mse**0.5
    # How far to trust the estimate: both numbers on the same days (those with labels).
    both = [d for d in daily if d["labelled"] and d["estimated_accuracy"] is not None
            and d["realised_accuracy"] is not None]  # fmt: skip
    w = sum(d["labelled"] for d in both)
    summary["estimate_on_labelled_days"] = (
        sum(d["estimated_accuracy"] * d["labelled"] for d in both) / w if w else None
    )
    summary["realised_on_labelled_days"] = _weighted(both, "realised_accuracy") if w else None

    status = "no_view" if real is None else ("ok" if labelled else "no_labels")
    report = Report(
        model=name, version=mv.version, task=mv.task, versions=sorted(by_version),
        days=day_list, since=start, until=until, database=engine.dialect.name,
        summary=summary, daily=daily, drift=groups, drift_daily=daily_groups,
        baseline=bool(mv.baseline), realised_status=status,
    )  # fmt: skip
    summary["flagged"] = [{"version": v, "feature": f.feature, "psi": f.psi, "verdict": f.verdict}
                          for v, f in report.flagged]  # fmt: skip
    # A shift that started yesterday is diluted in a week's window: the latest day too.
    latest = [g for g in daily_groups if g.rows >= MIN_ROWS][-1:]
    summary["flagged_latest_day"] = [
        {"day": g.group, "version": g.version, "feature": f.feature, "psi": f.psi,
         "verdict": f.verdict} for g in latest for f in g.flagged
    ]  # fmt: skip
    _explain(engine, report, mv)
    return report


def _explain(engine: Engine, report: Report, mv: Any) -> None:
    """Fill the findings (what needs attention) and notes (what is missing, and how to add it)."""
    s, name = report.summary, report.model
    if not s["rows"]:
        report.findings.append(f"no scored rows in the last {len(report.days)} days")

    def named(feature: str) -> str:
        return "the output" if feature == OUTPUT else feature

    for v, f in report.flagged:
        report.findings.append(f"{f.verdict} over the window: {named(f.feature)} of v{v} "
                               f"(PSI {f.psi:.3f})")  # fmt: skip
    one_day = len([g for g in report.drift_daily if g.rows]) == 1  # the same as the window
    for f in [] if one_day else s["flagged_latest_day"]:
        report.findings.append(
            f"{f['verdict']} on {f['day']} (latest day): "
            f"{named(f['feature'])} of v{f['version']} (PSI {f['psi']:.3f})"
        )
    if s["error_rate"] and s["error_rate"] > ERROR_RATE_FINDING:
        report.findings.append(f"error rate {s['error_rate']:.2%} ({s['errors']:,} rows)")
    else:  # a bad day hidden in a good week
        for d in report.daily:
            if d["error_rate"] and d["error_rate"] > ERROR_RATE_FINDING:
                report.findings.append(
                    f"error rate {d['error_rate']:.2%} on {d['day']} ({d['errors']:,} rows)"
                )
    est, real = s["estimate_on_labelled_days"], s["realised_on_labelled_days"]
    if est is not None and real is not None and abs(real - est) > GAP_FINDING:
        report.findings.append(
            f"realised accuracy {real:.1%} vs estimated {est:.1%} on the labelled days: the "
            "estimate assumes no concept drift; trust it less for this model"
        )
    for v in sorted({mv.version, *report.versions}):
        doc = mv.baseline if v == mv.version else registry.get_version(engine, name, v).baseline
        if not doc:
            report.notes.append(no_baseline(name, v))
        elif not doc.get("calibration") and mv.task == "classifier" and v == mv.version:
            report.notes.append(
                f"no accuracy estimate for v{v}: its baseline has no calibration (add one with "
                f"`inferq models baseline {name} {v} --target COLUMN`)"
            )
    if report.realised_status == "no_view":
        labels = _feedback_rows(engine, name)
        where = ("the embedded SQLite database has no views: use Postgres"
                 if report.database != "postgresql" else "run `inferq db upgrade`")  # fmt: skip
        report.notes.append(
            ("no feedback loaded" if not labels else f"{labels:,} labels loaded")
            + f"; realised accuracy needs the Postgres view model_accuracy_daily ({where})"
        )
    elif report.realised_status == "no_labels":
        report.notes.append(
            "no labels yet for these days: load ground truth with `inferq feedback load FILE "
            "--key-column job_id --label-column LABEL` (realised accuracy appears per day)"
        )
