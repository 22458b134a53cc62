"""Per-batch drift counts (workers/monitor.py): what is counted, and that the embedded
(SQLite) store adds each batch exactly once, in the results' transaction."""

from __future__ import annotations

import numpy as np
import pandas as pd
from inferq.common import drift
from inferq.common.db import make_engine
from inferq.models.artifacts import inspect_estimator
from inferq.models.baseline import build_baseline
from inferq.models.sample import sample_batch
from inferq.models.schema_infer import infer_schema
from inferq.ops.drift import drift_report
from inferq.workers.inference import ModelInfo, score_batch
from inferq.workers.monitor import batch_counts
from inferq.workers.results import write_results
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "city": rng.choice(["lyon", "oslo", "rome"], n).astype(object),
        }
    )


def _model_info(frame: pd.DataFrame):
    y = (frame.age > 40).astype(int)
    model = make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["city"]), (StandardScaler(), ["age"])
        ),
        LogisticRegression(),
    ).fit(frame, y)
    meta = inspect_estimator(model)
    schema = infer_schema(model, meta.n_features, meta.feature_names).schema

    class MV:
        pass

    mv = MV()
    for k in ("task", "n_features", "feature_names", "classes", "has_proba"):
        setattr(mv, k, getattr(meta, k))
    mv.schema = schema
    return model, ModelInfo.of("m", 1, model, mv)


def test_rows_refused_at_submission_are_not_counted_as_missing():
    rng = np.random.default_rng(0)
    reference = _frame(rng, 500)
    model, info = _model_info(reference)
    base = build_baseline(model, info, reference)
    rows = _frame(rng, 50).astype({"age": object})
    rows.loc[3, "age"] = "n/a"  # refused at submission: the row's values are blanked
    batch = sample_batch(rows, info.schema, "m", 1)
    assert 3 in batch.row_errors
    scored = score_batch(model, info, batch)
    counts = batch_counts(base, drift.baseline_id(base.to_json()), info.schema, scored)
    layout = {fb.name: (fb, off) for fb, off in base.layout()}
    for name in ("age", "city"):
        fb, off = layout[name]
        cells = counts.vector[off : off + fb.n_bins]
        assert cells.sum() == 49  # every row but the refused one
        assert cells[-1] == 0  # nothing in the "missing" bin
    fb, off = layout[drift.OUTPUT]
    assert counts.vector[off : off + fb.n_bins].sum() == scored.n_ok == 49


def _registered(settings, reference: pd.DataFrame):
    """A model fitted on ``reference``, registered as m@1 with its baseline recorded."""
    import joblib
    from inferq.models import lifecycle, registry

    model, info = _model_info(reference)
    base = build_baseline(model, info, reference)
    engine = make_engine(settings)
    path = settings.home_dir / "m.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    registry.register(engine, settings.model_store_dir, path, "m")
    lifecycle.record(engine, "m", 1, baseline=base.to_json())
    return engine, model, info, base


def test_sqlite_adds_each_batch_once(sqlite_settings):
    rng = np.random.default_rng(1)
    engine, model, info, base = _registered(sqlite_settings, _frame(rng, 500))
    bid = drift.baseline_id(base.to_json())
    for n in (30, 45):
        scored = score_batch(model, info, sample_batch(_frame(rng, n), info.schema, "m", 1))
        scored.runtime = "sklearn"
        scored.monitor = batch_counts(base, bid, info.schema, scored)
        write_results(engine, scored, "node:1", received_at=0.0)
        write_results(engine, scored, "node:1", received_at=0.0)  # a redelivery: no-op
    import datetime as dt

    (group,) = drift_report(engine, "m", dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    assert {f.feature: f.rows for f in group.features} == {"age": 75, "city": 75, "__output__": 75}


def test_metrics_exporter_serves_drift_per_feature(sqlite_settings):
    """`inferq metrics` exports the PSI and the flag of every feature of every model with
    counts in INFERQ_DRIFT_WINDOW; a shifted feature is flagged, the others are not."""
    from inferq.ops.metrics import InferqCollector

    rng = np.random.default_rng(4)
    engine, model, info, base = _registered(sqlite_settings, _frame(rng, 3000))
    shifted = _frame(rng, 3000)
    shifted["age"] += 15  # the age mix moves; cities stay as they were
    scored = score_batch(model, info, sample_batch(shifted, info.schema, "m", 1))
    scored.runtime = "sklearn"
    scored.monitor = batch_counts(base, drift.baseline_id(base.to_json()), info.schema, scored)
    write_results(engine, scored, "node:1", received_at=0.0)

    collector = InferqCollector(sqlite_settings, engine, None)
    samples = {
        (m.name, s.labels["feature"]): s.value
        for m in collector.collect()
        if m.name.startswith("inferq_drift")
        for s in m.samples
    }
    assert samples[("inferq_drift_flagged", "age")] == 1.0
    assert samples[("inferq_drift_flagged", "city")] == 0.0
    assert samples[("inferq_drift_psi", "age")] > 0.25 > samples[("inferq_drift_psi", "city")]
