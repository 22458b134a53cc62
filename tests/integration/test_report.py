"""`inferq report`: the numbers equal what the test computes from the rows it wrote.

Rows go through the real write path (score_batch -> monitor.attach -> write_results) with a
real baselined model, no worker process; each batch's timestamps are then moved to a known
hour of a past day, so the per-day numbers do not depend on when the test runs.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time

import joblib
import numpy as np
import pandas as pd
import pytest
from inferq.common import drift
from inferq.common.db import make_engine
from inferq.common.errors import ModelNotFound
from inferq.models import gates, registry
from inferq.ops.report import build_report
from inferq.ops.report_html import render_html
from inferq.producer.client import InferenceClient
from inferq.producer.feedback import load_pairs
from inferq.workers import monitor
from inferq.workers.inference import ModelInfo, score_batch
from inferq.workers.results import write_results
from sqlalchemy import text

from tests.conftest import REPO, settings_env

pytestmark = pytest.mark.integration

FEATURES = ["a", "b", "city"]
TOP_KEYS = {"model", "version", "task", "versions", "days", "since", "until", "database",
            "summary", "daily", "drift", "realised_status", "findings", "notes"}  # fmt: skip
SUMMARY_KEYS = {"messages", "rows", "ok", "errors", "error_rate", "latency_p50_ms",
                "latency_p95_ms", "predict_ms_mean", "estimated_accuracy", "realised_accuracy",
                "labelled", "label_coverage", "roc_auc", "mae", "rmse", "flagged",
                "flagged_latest_day", "estimate_on_labelled_days",
                "realised_on_labelled_days"}  # fmt: skip
DAILY_KEYS = {"day", "messages", "rows", "ok", "errors", "error_rate", "latency_p50_ms",
              "latency_p95_ms", "predict_ms_mean", "estimated_rows", "estimated_accuracy",
              "predictions", "labelled", "label_coverage", "label_delay_median_s",
              "realised_accuracy", "roc_auc", "mae", "rmse", "max_psi", "max_psi_feature",
              "max_psi_verdict", "drift_flagged"}  # fmt: skip


def _sample(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    frame = pd.DataFrame({
        "a": rng.normal(shift, 1.0, n),
        "b": rng.normal(0, 1, n),
        "city": rng.choice(["x", "y", "z"], n, p=[0.5, 0.3, 0.2]).astype(object),
    })  # fmt: skip
    logit = 1.5 * frame.a - frame.b + 0.8 * (frame.city == "x")
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def _psi(ref_share: tuple[float, ...], counts: np.ndarray, eps: float = 1e-4) -> float:
    """PSI as MONITORING.md defines it, written out here independently of common/drift.py."""
    p = np.maximum(np.asarray(ref_share), eps)
    q = np.maximum(counts / counts.sum(), eps)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def _move(conn, worker: str, committed: dt.datetime, latency_ms: float) -> None:
    """Put one batch (its worker id is unique) at ``committed``, ``latency_ms`` after submit."""
    submitted = committed - dt.timedelta(milliseconds=latency_ms)
    bucket = committed.replace(minute=0, second=0, microsecond=0)
    p = {"w": worker, "c": committed, "s": submitted, "b": bucket}
    conn.execute(text("UPDATE prediction_batches SET committed_at = :c, received_at = :c, "
                      "submitted_at = :s WHERE worker = :w"), p)  # fmt: skip
    conn.execute(text("UPDATE predictions SET scored_at = :c, submitted_at = :s WHERE worker = :w"),
                 p)  # fmt: skip
    for table in ("drift_counts", "accuracy_estimates"):
        conn.execute(text(f"UPDATE {table} SET bucket = :b WHERE worker = :w"), p)


@pytest.fixture
def churn(pg_settings, tmp_path):
    """A baselined (calibrated) classifier and 2 days of scored batches, moved in time."""
    rng = np.random.default_rng(14)
    engine = make_engine(pg_settings)
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    train = _sample(rng, 2000)
    model = make_pipeline(
        make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["city"]),
                                remainder="passthrough"),
        LogisticRegression(max_iter=500),
    ).fit(train[FEATURES], train.y)  # fmt: skip
    joblib.dump(model, tmp_path / "churn.joblib")
    _sample(rng, 2000).to_csv(tmp_path / "reference.csv", index=False)
    store = pg_settings.model_store_dir
    mv = registry.register(engine, store, tmp_path / "churn.joblib", "churn",
                           reference=tmp_path / "reference.csv")  # fmt: skip
    mv = gates.baseline_version(engine, store, mv, None, "y")
    estimator = registry.load(store, mv)
    info = ModelInfo.of("churn", mv.version, estimator, mv)
    baseline = drift.Baseline.from_json(mv.baseline)
    base_id = drift.baseline_id(mv.baseline)  # what workers/preload.py keeps beside it

    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    client = InferenceClient(pg_settings.model_copy(update={"batch_size": 250}), engine=engine)
    written: dict[str, list] = {}
    for k, shift in ((2, 0.0), (1, 1.0)):  # the day before yesterday: as reference; then shifted
        day = today - dt.timedelta(days=k)
        frame = _sample(rng, 1000, shift)
        rows = frame[FEATURES].astype(object)
        rows.loc[:4, "a"] = "n/a"  # 5 rows the model cannot take: error rows
        batches = client.build_batches("churn", rows, version=mv.version)
        for i, batch in enumerate(batches):
            scored = score_batch(estimator, info, batch)
            scored.runtime = "sklearn"
            scored.monitor = monitor.batch_counts(baseline, base_id, info.schema, scored)
            worker = f"test-{k}-{i}:1"
            write_results(engine, scored, worker, received_at=time.time())
            latency = 100.0 * (i + 1) * k  # known per message
            with engine.begin() as conn:
                _move(conn, worker, day + dt.timedelta(hours=12, minutes=i), latency)
            start = i * 250
            written.setdefault(day.date().isoformat(), []).append(
                (scored, latency, frame.y.to_numpy()[start : start + batch.n_rows])
            )
    client.close()
    yield engine, mv, baseline, written, today
    engine.dispose()


def test_report_numbers_equal_the_written_rows(churn, pg_settings, tmp_path):
    engine, mv, baseline, written, today = churn
    # Ground truth for the older day only: realised accuracy there, "no labels" the next day.
    old_day, new_day = sorted(written)
    labelled = [(s, y) for s, _, y in written[old_day]]
    ids = [j for s, _ in labelled for j, ok in zip(s.batch.job_ids, s.ok, strict=True) if ok]
    truth = [int(t) for s, y in labelled for t, ok in zip(y, s.ok, strict=True) if ok]
    load_pairs(engine, ids, truth)

    rep = build_report(engine, "churn", days=3, now=today + dt.timedelta(hours=1))
    assert rep.days == [old_day, new_day, today.date().isoformat()]  # today included
    assert rep.version == mv.version
    by_day = {d["day"]: d for d in rep.daily}
    assert by_day[rep.days[-1]]["rows"] == 0
    for day, parts in written.items():
        d = by_day[day]
        rows = sum(s.batch.n_rows for s, _, _ in parts)
        errors = sum(s.n_error for s, _, _ in parts)
        lat = [ms for _, ms, _ in parts]
        n_est = sum(s.monitor.n_estimated for s, _, _ in parts)
        correct = sum(s.monitor.expected_correct for s, _, _ in parts)
        assert (d["rows"], d["errors"], d["messages"]) == (rows, errors, len(parts)) == (1000, 5, 4)
        assert d["error_rate"] == pytest.approx(errors / rows)
        assert d["latency_p50_ms"] == pytest.approx(np.percentile(lat, 50), abs=1e-3)
        assert d["latency_p95_ms"] == pytest.approx(np.percentile(lat, 95), abs=1e-3)
        assert d["estimated_rows"] == n_est == rows - errors
        assert d["estimated_accuracy"] == pytest.approx(correct / n_est)
    # realised accuracy of the labelled day, from the labels the test loaded
    hits = [lbl == str(t) for s, y in labelled for lbl, t, ok in
            zip(s.labels, y, s.ok, strict=True) if ok]  # fmt: skip
    old = by_day[old_day]
    assert old["labelled"] == len(truth) == 995 and old["label_coverage"] == pytest.approx(1.0)
    assert old["realised_accuracy"] == pytest.approx(np.mean(hits))
    assert by_day[new_day]["labelled"] == 0 and by_day[new_day]["realised_accuracy"] is None
    assert rep.realised_status == "ok"
    s = rep.summary
    assert s["rows"] == 2000 and s["errors"] == 10
    assert s["realised_on_labelled_days"] == pytest.approx(np.mean(hits))
    assert s["estimate_on_labelled_days"] == pytest.approx(old["estimated_accuracy"])

    # PSI of feature "a": over the window, and per day (the second day is shifted)
    fb, at = next((fb, at) for fb, at in baseline.layout() if fb.name == "a")

    def counts(parts: list) -> np.ndarray:
        return sum(sc.monitor.vector[at : at + fb.n_bins] for sc, _, _ in parts)

    window_a = next(f for f in rep.drift[0].features if f.feature == "a")
    both = counts(written[old_day] + written[new_day])
    # rows refused at submission (5 per day) carry no values: they are not counted
    assert window_a.rows == 2000 - 10 == both.sum()
    assert window_a.psi == pytest.approx(_psi(fb.ref_share, both))
    day_a = {g.group: next(f for f in g.features if f.feature == "a") for g in rep.drift_daily}
    assert day_a[new_day].psi == pytest.approx(_psi(fb.ref_share, counts(written[new_day])))
    assert day_a[new_day].verdict == "drift" and day_a[old_day].verdict == "ok"
    assert by_day[new_day]["max_psi_feature"] in ("a", drift.OUTPUT)
    finding = f"drift on {new_day} (latest day): a of v1 (PSI {day_a[new_day].psi:.3f})"
    assert finding in rep.findings

    # the page: plots embedded, nothing fetched from anywhere
    page = render_html(rep)
    assert page.count('src="data:image/png;base64,') == 3
    assert not re.search(r"https?:|<link|<script|@import|url\(", page)
    links = re.findall(r"\b(?:src|href|action|srcset)\s*=\s*(\S{0,23})", page)
    assert links == ['"data:image/png;base64,'] * 3

    # the CLI: --json with the documented keys, --html written, the terminal screen
    env = settings_env(pg_settings)
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "report", "churn", "--days", "3", "--json",
         "--html", str(tmp_path / "r.html")],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert TOP_KEYS | {"html"} == set(doc)
    assert set(doc["summary"]) == SUMMARY_KEYS and set(doc["daily"][0]) == DAILY_KEYS
    assert set(doc["drift"]) == {"baseline", "window", "daily"}
    assert doc["summary"]["rows"] == 2000 and doc["drift"]["baseline"] is True
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text()
    screen = subprocess.run([sys.executable, "-m", "inferq", "report", "churn", "--days", "3"],
                            cwd=REPO, env={**env, "COLUMNS": "120"}, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert "2,000 rows" in screen and new_day in screen and "drift" in screen
    print(screen)


def test_report_unknown_model_and_no_baseline(sqlite_settings, binary_model):
    """SQLite: everything but realised accuracy; a version without baseline says how to add one."""
    engine = make_engine(sqlite_settings)
    with pytest.raises(ModelNotFound):
        build_report(engine, "nope")
    mv = registry.register(engine, sqlite_settings.model_store_dir, binary_model.path, "plain")
    info = ModelInfo.of("plain", mv.version, binary_model.model, mv)
    client = InferenceClient(sqlite_settings, engine=engine)
    for i, batch in enumerate(client.build_batches("plain", binary_model.x[:300], version=1)):
        write_results(engine, score_batch(binary_model.model, info, batch), f"w{i}:1",
                      received_at=time.time())  # fmt: skip
    client.close()
    rep = build_report(engine, "plain", days=2)
    assert rep.summary["rows"] == 300 and rep.summary["errors"] == 0
    assert rep.summary["latency_p95_ms"] is not None and rep.daily[-1]["rows"] == 300
    assert rep.realised_status == "no_view" and not rep.baseline and not rep.drift
    notes = " ".join(rep.notes)
    assert "inferq models baseline plain 1 --reference FILE" in notes
    assert "no feedback loaded" in notes and "SQLite" in notes
    assert "data:image/png" in render_html(rep) or "no drift counts" in render_html(rep)
    engine.dispose()
    out = subprocess.run([sys.executable, "-m", "inferq", "report", "nope"], cwd=REPO,
                         env=settings_env(sqlite_settings), capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert out.returncode != 0 and "not registered" in out.stderr
