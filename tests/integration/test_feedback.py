"""Ground truth (`inferq feedback load`, InferenceClient.feedback) and the monitoring views of
migration 0008 on the real PostgreSQL server: every metric of `model_accuracy_daily` is
compared with the same metric computed here, independently (scikit-learn for ROC AUC)."""

import datetime as dt
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from inferq.common import partitions
from inferq.common.db import make_engine
from inferq.common.errors import InvalidInput, ModelNotFound
from inferq.common.schema import model_versions, prediction_batches, predictions
from inferq.producer.feedback import load_feedback, load_file
from sklearn.metrics import roc_auc_score
from sqlalchemy import insert, inspect, text

from inferq import InferenceClient
from tests.conftest import settings_env

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
MIDNIGHT = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
DAYS = [MIDNIGHT - dt.timedelta(days=d) for d in (3, 2, 1)]


def cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferq", *args],
        env={**settings_env(settings), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def load(settings, path, key_column: str, label_column: str, *more: str):
    """`inferq feedback load PATH --key-column K --label-column Y [more...]`."""
    return cli(settings, "feedback", "load", str(path), "--key-column", key_column,
               "--label-column", label_column, *more)  # fmt: skip


def ok_json(out: subprocess.CompletedProcess[str]) -> dict:
    assert out.returncode == 0, (out.stdout, out.stderr)
    return json.loads(out.stdout)


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def register(conn, name: str, task: str, classes: list[str] | None) -> None:
    conn.execute(
        insert(model_versions).values(
            name=name,
            version=1,
            sha256="0" * 64,
            sklearn_version="1.5",
            task=task,
            estimator="Test",
            classes=classes,
            n_features=1,
            has_proba=int(bool(classes)),
            artifact=f"{name}/1",
            size_bytes=1,
            created_at=NOW,
        )
    )


def with_partitions(engine, rows: list[dict]) -> list[dict]:
    """The rows, after creating the daily partitions they go to (past days have none)."""
    partitions.ensure(engine, {r["day"] for r in rows})
    return rows


def prediction(job_id, model, at, *, key=None, ok=True, label=None, score=None) -> dict:
    return {
        "job_id": job_id,
        "run_id": None,
        "key": key,
        "model_name": model,
        "model_version": 1,
        "status": "ok" if ok else "error",
        "label": label if ok else None,
        "score": score if ok else None,
        "probabilities": {"0": 1 - score, "1": score} if ok and label is not None else None,
        "error": None if ok else "boom",
        "submitted_at": at - dt.timedelta(seconds=1),
        "scored_at": at,
        "day": (at - dt.timedelta(seconds=1)).astimezone(dt.UTC).date(),
        "worker": "w:1",
        "batch_id": "b1",
        "error_code": None if ok else "model_failed",
        "runtime": "sklearn",
    }


@dataclass
class Row:
    job_id: str
    model: str
    day: int
    at: dt.datetime
    ok: bool
    score: float | None
    predicted: str | None = None
    key: str | None = None


@dataclass
class World:
    """Predictions of a binary classifier (`clf`) and a regressor (`reg`) over three days,
    and the ground truth the test loads for part of them."""

    rows: list[Row]
    clf_truth: dict[str, str]  # job id -> true class (ok rows, plus two error rows)
    reg_key_truth: dict[str, float] = field(default_factory=dict)  # key -> true value
    reg_job_truth: dict[str, float] = field(default_factory=dict)  # job id -> true value


def build_world(engine) -> World:
    rng = np.random.default_rng(14)
    rows: list[Row] = []
    clf_truth: dict[str, str] = {}
    for day, n in ((0, 120), (1, 80), (2, 6)):
        for i in range(n):
            at = DAYS[day] + dt.timedelta(seconds=int(rng.integers(0, 86_000)))
            score = round(float(rng.random()), 1)  # rounded: many tied scores
            row = Row(f"c{day}-{i}", "clf", day, at, True, score, "1" if score >= 0.5 else "0")
            rows.append(row)
            if day == 2:  # the last day has labels of one class only: no AUC
                clf_truth[row.job_id] = "1"
            elif rng.random() < 0.7:
                clf_truth[row.job_id] = "1" if rng.random() < 0.2 + 0.6 * score else "0"
    # Scored a moment before midnight UTC: day 0, whatever the session's time zone.
    rows.append(Row("c-late", "clf", 0, DAYS[1] - dt.timedelta(seconds=1), True, 0.9, "1"))
    clf_truth["c-late"] = "1"
    for i in range(5):  # error rows are no predictions, even when labelled
        rows.append(Row(f"c-err{i}", "clf", 0, DAYS[0] + dt.timedelta(hours=i), False, None))
    clf_truth["c-err0"] = clf_truth["c-err1"] = "1"
    world = World(rows, clf_truth)
    for day, keys in ((0, range(50)), (1, [*range(50, 90), 0])):  # r0 is scored twice
        for k in keys:
            at = DAYS[day] + dt.timedelta(seconds=int(rng.integers(0, 86_000)))
            row = Row(f"r{day}-{k}", "reg", day, at, True, float(rng.normal(150, 50)), key=f"r{k}")
            rows.append(row)
            if k == 0 or rng.random() < 0.6:
                world.reg_key_truth[f"r{k}"] = round(row.score + float(rng.normal(0, 20)), 3)
    values = with_partitions(engine, [
        prediction(r.job_id, r.model, r.at, key=r.key, ok=r.ok, label=r.predicted, score=r.score)
        for r in rows
    ])  # fmt: skip
    with engine.begin() as conn:
        register(conn, "clf", "classifier", ["0", "1"])
        register(conn, "reg", "regressor", None)
        conn.execute(insert(predictions), values)
    return world


def expected_daily(world: World, loaded_at: dict[str, dt.datetime] | None = None) -> dict:
    """model_accuracy_daily, computed here from the rows and the truth the test loaded."""
    out = {}
    for model in ("clf", "reg"):
        for day in range(3):
            ok = [r for r in world.rows if r.model == model and r.day == day and r.ok]
            if not ok:
                continue
            if model == "clf":
                truth = {
                    r.job_id: world.clf_truth[r.job_id] for r in ok if r.job_id in world.clf_truth
                }
            else:  # a job-id label wins over the key's label
                truth = {
                    r.job_id: world.reg_job_truth.get(r.job_id, world.reg_key_truth.get(r.key))
                    for r in ok
                }
                truth = {j: v for j, v in truth.items() if v is not None}
            labelled = [r for r in ok if r.job_id in truth]
            row = {
                "predictions": len(ok),
                "labelled": len(labelled),
                "label_coverage": len(labelled) / len(ok),
                "accuracy": None,
                "roc_auc": None,
                "mae": None,
                "rmse": None,
            }
            if model == "clf":
                y = [float(truth[r.job_id]) for r in labelled]  # '1.0' is class '1'
                row["accuracy"] = float(
                    np.mean([float(r.predicted) == t for r, t in zip(labelled, y, strict=True)])
                )
                if len(set(y)) == 2:
                    row["roc_auc"] = roc_auc_score(y, [r.score for r in labelled])
            else:
                err = np.array([r.score - truth[r.job_id] for r in labelled])
                row["mae"], row["rmse"] = float(np.abs(err).mean()), float(np.sqrt((err**2).mean()))
            if loaded_at is not None:
                row["label_delay_median"] = statistics.median(
                    loaded_at[r.job_id] - r.at for r in labelled
                )
            out[(model, DAYS[day].date())] = row
    return out


def view_daily(engine) -> dict:
    with engine.connect() as conn:
        # Days are UTC days of scored_at, whatever the session's time zone.
        conn.execute(text("SET TIME ZONE 'Pacific/Kiritimati'"))
        rows = conn.execute(text("SELECT * FROM model_accuracy_daily")).mappings().all()
    return {(r["model_name"], r["day"]): dict(r) for r in rows}


def assert_daily(engine, world: World, loaded_at=None) -> None:
    got, want = view_daily(engine), expected_daily(world, loaded_at)
    assert set(got) == set(want)
    for k, w in want.items():
        g = got[k]
        assert (g["model_version"], g["predictions"], g["labelled"]) == (
            1,
            w["predictions"],
            w["labelled"],
        ), k
        for metric in ("label_coverage", "accuracy", "roc_auc", "mae", "rmse"):
            if w[metric] is None:
                assert g[metric] is None, (k, metric)
            else:
                assert g[metric] == pytest.approx(w[metric], rel=1e-12, abs=1e-12), (k, metric)
        if "label_delay_median" in w:
            assert abs(g["label_delay_median"] - w["label_delay_median"]) < dt.timedelta(
                milliseconds=1
            ), k


def loaded_times(engine) -> dict[str, dt.datetime]:
    """labelled_at per job id, as prediction_feedback reports it."""
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT job_id, labelled_at FROM prediction_feedback")).all())


# ----- the views against independent computations -----------------------------------------
def test_labels_by_job_and_key_give_the_metrics_computed_independently(pg_settings, tmp_path):
    engine = make_engine(pg_settings)
    world = build_world(engine)
    # Classifier labels by job id, from a CSV: plus a row without a label, one without a job
    # id, a job id given twice (the last one wins) and one that matches no prediction.
    truth = list(world.clf_truth.items())
    csv_rows = [*truth[:3], ("c0-1", ""), ("", "1"), ("unknown-job", "1"), *truth[3:]]
    first_of_dup = truth[5][0], "0" if truth[5][1] == "1" else "1"
    csv_rows.insert(4, first_of_dup)
    labels_csv = tmp_path / "labels.csv"
    pd.DataFrame(csv_rows, columns=["job_id", "truth"]).assign(note="x").to_csv(
        labels_csv, index=False
    )
    report = ok_json(load(pg_settings, labels_csv, "job_id", "truth", "--json"))
    n = len(truth) + 1  # + the unknown job
    assert report["rows_read"] == len(csv_rows)
    assert (report["skipped"], report["duplicates"]) == (2, 1)
    assert (report["new"], report["changed"], report["unchanged"]) == (n, 0, 0)
    assert (report["matched"], report["unmatched"]) == (n - 1, 1)
    assert report["by"] == "job" and report["model"] == "*" and report["hint"] is None

    # Regressor values by key, from Parquet, through the CLI (--by key needs --model).
    labels_pq = tmp_path / "reg.parquet"
    pd.DataFrame(
        {"customer": list(world.reg_key_truth), "y": list(world.reg_key_truth.values())}
    ).to_parquet(labels_pq)
    no_model = load(pg_settings, labels_pq, "customer", "y", "--by", "key")
    assert "--model" in one_error_line(no_model)
    out = load(pg_settings, labels_pq, "customer", "y", "--by", "key", "--model", "reg")
    assert out.returncode == 0, out.stderr
    keys = len(world.reg_key_truth)
    # What a load did is said on stderr; stdout stays for --json (README: output conventions).
    assert out.stdout == "" and out.stderr.count("\n") == 1
    assert f"{keys:,} new, 0 changed, 0 unchanged" in out.stderr
    assert f"{keys:,} match a prediction, 0 do not" in out.stderr

    # A service labels one of r0's two rows by job id: it wins over the key's label there.
    job = next(r.job_id for r in world.rows if r.key == "r0" and r.day == 1)
    with InferenceClient(pg_settings) as client:
        report = client.feedback([job], [123.5])
    assert (report.new, report.matched, report.source) == (1, 1, "client")
    world.reg_job_truth[job] = 123.5

    with engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT job_id), count(*) FILTER (WHERE status = 'error'),"
                " count(*) FILTER (WHERE key = 'r0') FROM prediction_feedback"
            )
        ).one()
    assert counts[0] == counts[1]  # one row per labelled prediction
    assert (counts[2], counts[3]) == (2, 2)  # labelled error rows are joined (not counted)
    assert_daily(engine, world, loaded_times(engine))

    # Loading the same file again changes nothing, not even when a label was loaded.
    before = view_daily(engine)
    times = loaded_times(engine)
    again = ok_json(load(pg_settings, labels_csv, "job_id", "truth", "--json"))
    assert (again["new"], again["changed"], again["unchanged"]) == (0, 0, n)
    assert view_daily(engine) == before and loaded_times(engine) == times

    # A corrected label replaces the old one (1.0 is class "1": compared as numbers).
    wrong = next(j for j, y in world.clf_truth.items() if y == "0" and j.startswith("c0-"))
    with InferenceClient(pg_settings) as client:
        report = client.feedback([wrong], [1.0])
    assert (report.new, report.changed, report.unchanged) == (0, 1, 0)
    world.clf_truth[wrong] = "1.0"
    assert view_daily(engine) != before
    assert_daily(engine, world, loaded_times(engine))

    # A wrong column is one line naming the columns there are (exit 2, no traceback).
    missing = load(pg_settings, labels_csv, "job_id", "label")
    line = one_error_line(missing)
    assert "label column 'label' is not in" in line and "job_id, truth, note" in line
    engine.dispose()


# ----- latest_predictions, model_throughput_hourly -----------------------------------------
def test_latest_predictions_and_hourly_throughput(pg_settings):
    from inferq.common.contract import Batch
    from inferq.workers.inference import ScoredBatch
    from inferq.workers.results import write_results

    engine = make_engine(pg_settings)
    t0 = DAYS[0] + dt.timedelta(hours=5)
    rows = [
        prediction("a1", "m", t0, key="k1", label="1", score=0.7),
        prediction("a2", "m", t0 + dt.timedelta(hours=1), key="k1", ok=False),  # newest of k1
        prediction("a3", "m", t0 - dt.timedelta(hours=1), key="k1", label="0", score=0.2),
        prediction("a4", "other", t0 - dt.timedelta(hours=2), key="k1", label="0", score=0.1),
        prediction("a5", "m", t0, key="k2", label="1", score=0.9),
        prediction("a6", "m", t0 + dt.timedelta(days=1), key=None, label="1", score=0.9),
    ]
    hour = t0.replace(minute=0, second=0)
    latencies_ms = [100, 200, 300, 1000, 40]  # the last message is in the next hour
    ledger = [
        {
            "batch_id": f"b{i}",
            "run_id": None,
            "model_name": "m",
            "model_version": 1,
            "worker": "w:1",
            "n_rows": 10 * (i + 1),
            "n_ok": 10 * (i + 1) - i,
            "n_error": i,
            "n_written": 10 * (i + 1),
            "submitted_at": at - dt.timedelta(milliseconds=ms),
            "day": (at - dt.timedelta(milliseconds=ms)).astimezone(dt.UTC).date(),
            "received_at": at,
            "committed_at": at,
            "decode_ms": 1.0,
            "predict_ms": 2.0 * (i + 1),
            "write_ms": 3.0,
        }
        for i, (ms, at) in enumerate(
            zip(
                latencies_ms,
                [hour + dt.timedelta(minutes=m) for m in (1, 10, 20, 59)]
                + [hour + dt.timedelta(minutes=61)],
                strict=True,
            )
        )
    ]
    with_partitions(engine, rows + ledger)
    with engine.begin() as conn:
        conn.execute(insert(predictions), rows)
        conn.execute(insert(prediction_batches), ledger)
    # And one message through the workers' writer (committed now).
    n = 25
    batch = Batch(
        model="w",
        version=2,
        job_ids=[f"w{i}" for i in range(n)],
        x=np.zeros((n, 1)),
        keys=[f"k{i % 20}" for i in range(n)],
    )
    ok = np.arange(n) % 5 != 0
    scored = ScoredBatch(
        batch=batch,
        model_name="w",
        model_version=2,
        ok=ok,
        errors={i: "bad" for i in np.flatnonzero(~ok).tolist()},
        scores=np.where(ok, 1.5, np.nan),
    )
    write_results(engine, scored, "w:9", received_at=NOW.timestamp())

    with engine.connect() as conn:
        latest = conn.execute(
            text(
                "SELECT model_name, key, job_id FROM latest_predictions WHERE model_name <> 'w'"
                " ORDER BY 1, 2"
            )
        ).all()
        keys_w = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT key) FROM latest_predictions"
                " WHERE model_name = 'w'"
            )
        ).one()
        hourly = (
            conn.execute(text("SELECT * FROM model_throughput_hourly ORDER BY model_name, hour"))
            .mappings()
            .all()
        )
    assert latest == [("m", "k1", "a2"), ("m", "k2", "a5"), ("other", "k1", "a4")]
    assert tuple(keys_w) == (20, 20)  # one row per key, rows without a key left out

    m = [h for h in hourly if h["model_name"] == "m"]
    assert [h["hour"] for h in m] == [hour, hour + dt.timedelta(hours=1)]
    first = m[0]
    assert (first["messages"], first["rows"], first["ok"], first["errors"]) == (4, 100, 94, 6)
    assert first["rows_per_second"] == pytest.approx(100 / 3600)
    assert first["latency_p50_ms"] == pytest.approx(np.percentile(latencies_ms[:4], 50))
    assert first["latency_p95_ms"] == pytest.approx(np.percentile(latencies_ms[:4], 95))
    assert first["predict_ms_mean"] == pytest.approx(5.0)
    assert (m[1]["messages"], m[1]["rows"], m[1]["latency_p50_ms"]) == (1, 50, pytest.approx(40))
    w = [h for h in hourly if h["model_name"] == "w"]
    assert sum(h["messages"] for h in w) == 1
    assert (sum(h["rows"] for h in w), sum(h["ok"] for h in w), sum(h["errors"] for h in w)) == (
        25,
        20,
        5,
    )
    assert w[0]["model_version"] == 2
    engine.dispose()


# ----- the Python API: input errors, hints, SQLite -----------------------------------------
def test_bad_inputs_are_clear_errors_and_a_wrong_by_gets_a_hint(pg_settings, tmp_path):
    engine = make_engine(pg_settings)
    at = DAYS[0]
    with engine.begin() as conn:
        register(conn, "reg", "regressor", None)
        conn.execute(
            insert(predictions),
            with_partitions(engine, [prediction(f"j{i}", "reg", at, key=f"cust-{i}", score=1.0)
                                     for i in range(5)]),
        )  # fmt: skip
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("id,y\n")
    (tmp_path / "labels.txt").write_text("id,y\n1,2\n")
    for path, message in [
        ("empty.csv", "is empty"),
        ("header.csv", "has no rows"),
        ("labels.txt", "cannot tell the format"),
        ("missing.csv", "does not exist"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            load_file(engine, tmp_path / path, "id", "y")
    with pytest.raises(InvalidInput, match="'job' or 'key'"):
        load_feedback(engine, [], by="row", model=None, source="t")
    with pytest.raises(ModelNotFound, match="'nope'"):
        load_feedback(engine, [("cust-1", 2.0)], by="key", model="nope", source="t")

    # Keys loaded as job ids match nothing: the report says what would.
    report = load_feedback(
        engine, [(f"cust-{i}", 2.0) for i in range(3)], by="job", model=None, source="t"
    )
    assert (report.new, report.matched, report.unmatched) == (3, 0, 3)
    assert "3 of the first 3 are keys of model reg" in report.hint
    assert "--by key --model reg" in report.hint
    report = load_feedback(
        engine,
        [("j1", "2.5"), ("j2", "n/a"), ("j3", float("nan"))],
        by="job",
        model="reg",
        source="t",
    )
    assert (report.new, report.skipped, report.matched, report.hint) == (2, 1, 2, None)
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                text(
                    "SELECT ref, value FROM feedback WHERE model_name = 'reg' AND ref_kind = 'job'"
                )
            ).all()
        )
    assert stored == {"j1": 2.5, "j2": None}  # 'n/a' kept as a label, no value
    engine.dispose()


def test_sqlite_loads_with_the_same_counts_and_has_no_views(sqlite_settings):
    engine = make_engine(sqlite_settings)
    with engine.begin() as conn:
        conn.execute(
            insert(predictions),
            [
                prediction(f"j{i}", "clf", DAYS[0], key=f"k{i}", label="1", score=0.6)
                for i in range(4)
            ],
        )
    pairs = [("j0", "1"), ("j1", "0"), ("j1", 1), ("x", "0"), (None, "1")]
    first = load_feedback(engine, pairs, by="job", model=None, source="t")
    assert (first.rows_read, first.skipped, first.duplicates, first.new) == (5, 1, 1, 3)
    assert (first.matched, first.unmatched) == (2, 1)
    again = load_feedback(engine, pairs, by="job", model=None, source="t")
    assert (again.new, again.changed, again.unchanged) == (0, 0, 3)
    changed = load_feedback(engine, [("j0", "0"), ("j2", "1")], by="job", model=None, source="t")
    assert (changed.new, changed.changed, changed.unchanged) == (1, 1, 0)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT ref, label FROM feedback")).all())
    assert rows == {"j0": "0", "j1": "1", "x": "0", "j2": "1"}
    assert not inspect(engine).get_view_names()
    assert math.isfinite(changed.seconds)
    engine.dispose()
