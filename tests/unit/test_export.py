"""Results export logic on the embedded SQLite database (the Postgres path, with real
workers and models, is tests/integration/test_export.py): order, columns, blocks, atomicity."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from inferq.common.contract import Batch
from inferq.common.db import make_engine
from inferq.common.errors import InvalidInput
from inferq.common.schema import model_versions, scoring_runs
from inferq.producer.export import Selection, export_results, output_format
from inferq.producer.runs import job_ids_for
from inferq.workers.inference import ScoredBatch
from inferq.workers.results import write_results

CLASSES = ["a", "b", "c"]


def _register_version(engine, name="m", classes=CLASSES, has_proba=1):
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            model_versions.insert().values(
                name=name, version=1, sha256="0" * 64, sklearn_version="1.5", task="classifier",
                estimator="LogisticRegression", classes=classes, n_features=1, has_proba=has_proba,
                artifact="m/1.joblib", size_bytes=1, created_at=now,
            )
        )  # fmt: skip
        conn.execute(
            scoring_runs.insert().values(
                run_id="r", model_name=name, model_version=1, source="csv:x", id_column="cust",
                chunk_size=3, total_rows=9, n_chunks=3, enqueued=9, scored_ok=9, scored_error=0,
                status="done", started_at=now, updated_at=now,
            )
        )  # fmt: skip


def _chunk(ids: list[str], first: int, classes=CLASSES, fail: int | None = None) -> ScoredBatch:
    n = len(ids)
    rng = np.random.default_rng(first)
    proba = rng.dirichlet(np.ones(len(classes)), size=n)
    batch = Batch(
        model="m", version=1, job_ids=job_ids_for("r", ids, first), keys=ids,
        x=np.zeros((n, 1)), run_id="r", batch_id=f"r.{first}", row_offset=first,
    )  # fmt: skip
    ok = np.ones(n, dtype=bool)
    errors = {}
    if fail is not None:
        ok[fail] = False
        errors[fail] = f"row {first + fail}: broken"
    return ScoredBatch(
        batch=batch, model_name="m", model_version=1, ok=ok, errors=errors,
        labels=[classes[int(i)] for i in proba.argmax(axis=1)], scores=proba.max(axis=1),
        proba=proba, classes=classes,
    )  # fmt: skip


def test_a_run_is_exported_in_input_order_in_small_blocks(sqlite_settings, tmp_path):
    engine = make_engine(sqlite_settings)
    _register_version(engine)
    ids = ["z9", "a1", "m5", "b2", "y8", "c3", "x7", "d4", "w6"]  # input order, not sorted
    chunks = [_chunk(ids[i : i + 3], i, fail=1 if i == 3 else None) for i in (6, 0, 3)]
    for scored in chunks:  # chunks land in any order
        write_results(engine, scored, "w1", received_at=0)
    report = export_results(engine, Selection(run_id="r"), str(tmp_path / "o.parquet"),
                            block_rows=2)  # fmt: skip
    assert report.rows == 9 and report.run_status == "done"
    got = pq.read_table(tmp_path / "o.parquet").to_pandas()
    assert got.cust.tolist() == ids and got.row_no.tolist() == list(range(9))
    assert got.status.tolist() == ["ok"] * 4 + ["error"] + ["ok"] * 4
    assert got.error[4] == "row 4: broken" and np.isnan(got.proba_a[4])
    by_id = {k: s for s in chunks for k, s in zip(s.batch.keys, range(3), strict=True)}
    for i, key in enumerate(ids):
        if i == 4:
            continue
        scored = next(s for s in chunks if key in s.batch.keys)
        row = scored.proba[by_id[key]]
        assert got.loc[i, ["proba_a", "proba_b", "proba_c"]].tolist() == pytest.approx(row)
    assert got.scored_at.dt.tz is not None  # UTC, even from SQLite's naive timestamps
    assert not list(tmp_path.glob(".*tmp"))
    engine.dispose()


def test_a_failed_export_leaves_no_file(sqlite_settings, tmp_path, monkeypatch):
    engine = make_engine(sqlite_settings)
    _register_version(engine)
    write_results(engine, _chunk(["a", "b", "c"], 0), "w1", received_at=0)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "o.csv"
    target.write_text("the previous export\n")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("inferq.producer.export._array", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_results(engine, Selection(run_id="r"), str(target))
    assert target.read_text() == "the previous export\n"  # untouched, no half file
    assert [p.name for p in out.iterdir()] == ["o.csv"]
    engine.dispose()


def test_many_classes_become_one_json_column(sqlite_settings, tmp_path):
    engine = make_engine(sqlite_settings)
    classes = [f"c{i}" for i in range(60)]
    _register_version(engine, classes=classes)
    write_results(engine, _chunk(["a", "b"], 0, classes=classes), "w1", received_at=0)
    export_results(engine, Selection(run_id="r"), str(tmp_path / "o.csv"))
    got = pd.read_csv(tmp_path / "o.csv")
    assert "proba_c0" not in got.columns and got.probabilities.str.startswith("{").all()
    engine.dispose()


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.parquet", "parquet"),
        ("a.PQ", "parquet"),
        ("a.csv", "csv"),
        ("a.csv.gz", "csv.gz"),
        (None, "csv"),
        ("-", "csv"),
    ],
)
def test_output_format_from_the_name(name, fmt, tmp_path):
    assert output_format(name if name in (None, "-") else str(tmp_path / name)) == fmt


@pytest.mark.parametrize("name", ["a.txt", "a.gz", "a.json"])
def test_an_unknown_extension_is_refused(name, tmp_path):
    with pytest.raises(InvalidInput, match="cannot tell the format"):
        output_format(str(tmp_path / name))


def test_labels_without_probabilities_get_no_empty_columns(sqlite_settings, tmp_path):
    engine = make_engine(sqlite_settings)
    _register_version(engine, classes=["-1", "1"], has_proba=0)  # an outlier detector
    scored = _chunk(["a", "b"], 0, classes=["-1", "1"])
    scored.proba = None
    write_results(engine, scored, "w1", received_at=0)
    report = export_results(engine, Selection(run_id="r"), str(tmp_path / "o.parquet"))
    assert not [c for c in report.columns if c.startswith("proba")]
    assert "probabilities" not in report.columns and report.rows == 2
    engine.dispose()
