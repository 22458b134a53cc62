"""The COPY text payload: escaping, NULLs for error rows, exact floats, valid JSON."""

import datetime as dt
import json
import re

import numpy as np
from inferq.common.contract import Batch, RowError
from inferq.producer.results import binary_probabilities
from inferq.workers.copytext import COLUMNS, copy_payload
from inferq.workers.inference import ScoredBatch

_UNESCAPE = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def parse(payload: str) -> list[dict]:
    rows = []
    for line in payload.splitlines():
        cells = [
            None if c == "\\N" else re.sub(r"\\[\\tnr]", lambda m: _UNESCAPE[m.group()], c)
            for c in line.split("\t")
        ]
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def test_payload_round_trips_text_floats_json_and_nulls():
    classes = ["a\tb", 'back\\slash "q"', "plain"]
    proba = np.array([[0.1, 0.2, 0.7], [np.nan] * 3, [1 / 3, 1 / 3, 1 / 3]])
    batch = Batch(model="m", version=3, job_ids=["j1", "j2", "j3"], x=np.zeros((3, 1)),
                  keys=["k\n1", None, "k3"], run_id="r\\1")  # fmt: skip
    scored = ScoredBatch(
        batch=batch, model_name="m", model_version=3, ok=np.array([True, False, True]),
        errors={1: RowError("row 1: feature 'x'\tis NaN", "missing_value")},
        labels=["plain", None, classes[0]],
        scores=np.array([0.7, np.nan, 1 / 3]), proba=proba, classes=classes,
    )  # fmt: skip
    rows = parse(copy_payload(scored, "w:1", dt.datetime.now(dt.UTC)))
    assert [r["key"] for r in rows] == ["k\n1", None, "k3"]
    assert {r["run_id"] for r in rows} == {"r\\1"}
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert [r["label"] for r in rows] == ["plain", None, "a\tb"]
    assert [r["error"] for r in rows] == [None, "row 1: feature 'x'\tis NaN", None]
    assert [r["error_code"] for r in rows] == [None, "missing_value", None]
    assert rows[1]["score"] is None and rows[1]["probabilities"] is None
    assert float(rows[2]["score"]) == 1 / 3  # exact
    doc = json.loads(rows[0]["probabilities"])
    assert doc == dict(zip(classes, [0.1, 0.2, 0.7], strict=True))


def test_binary_classifier_stores_only_its_score_and_the_reader_rebuilds_probabilities():
    batch = Batch(model="m", version=1, job_ids=["a", "b", "c"], x=np.zeros((3, 1)))
    p = np.array([[0.25, 0.75], [np.nan, np.nan], [0.9, 0.1]])
    scored = ScoredBatch(batch=batch, model_name="m", model_version=1,
                         ok=np.array([True, False, True]), errors={1: RowError("bad", "internal")},
                         labels=["1", None, "0"], scores=p[:, 1], proba=p,
                         classes=["0", "1"])  # fmt: skip
    rows = parse(copy_payload(scored, "w", dt.datetime.now(dt.UTC)))
    assert [r["score"] for r in rows] == ["0.75", None, "0.1"]
    assert [r["probabilities"] for r in rows] == [None, None, None]
    assert binary_probabilities(["0", "1"], 0.75) == {"0": 0.25, "1": 0.75}


def test_binary_scores_other_than_the_second_probability_keep_probabilities():
    batch = Batch(model="m", version=1, job_ids=["a"], x=np.zeros((1, 1)))
    p = np.array([[0.25, 0.75]])
    scored = ScoredBatch(batch=batch, model_name="m", model_version=1, ok=np.ones(1, bool),
                         errors={}, labels=["1"], scores=np.array([2.5]), proba=p,
                         classes=["0", "1"])  # fmt: skip
    (row,) = parse(copy_payload(scored, "w", dt.datetime.now(dt.UTC)))
    assert json.loads(row["probabilities"]) == {"0": 0.25, "1": 0.75} and row["score"] == "2.5"


def test_rows_carry_the_partition_day_of_their_message():
    before_midnight = dt.datetime(2026, 3, 1, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    batch = Batch(model="m", version=1, job_ids=["a", "b"], x=np.zeros((2, 1)),
                  submitted_at=before_midnight)  # fmt: skip
    scored = ScoredBatch(batch=batch, model_name="m", model_version=1, ok=np.ones(2, bool),
                         errors={}, labels=None, scores=np.array([1.0, 2.0]), proba=None,
                         classes=None)  # fmt: skip
    now = dt.datetime(2026, 3, 2, 0, 0, 1, tzinfo=dt.UTC)  # scored after midnight
    assert {r["day"] for r in parse(copy_payload(scored, "w", now))} == {"2026-03-01"}
    batch.day = "2026-02-27"  # a bulk run that started earlier: its start day wins
    assert {r["day"] for r in parse(copy_payload(scored, "w", now))} == {"2026-02-27"}
    rows = parse(copy_payload(scored, "w", now, days=["2026-01-05", "2026-02-27"]))
    assert [r["day"] for r in rows] == ["2026-01-05", "2026-02-27"]  # ids found on other days
