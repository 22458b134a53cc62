"""The binary COPY payload: every field decodes back to the value, NULLs for error rows,
exact floats, valid jsonb, dates and timestamps; read by a decoder written from the Postgres
docs' "Binary Format" (the integration tests read the same rows back through Postgres)."""

import datetime as dt
import json
import struct

import numpy as np
from inferq.common.contract import Batch, RowError
from inferq.producer.results import binary_probabilities
from inferq.workers.copybin import COLUMNS, copy_payload
from inferq.workers.inference import ScoredBatch

_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _decode(column: str, raw: bytes):
    if column == "score":
        return struct.unpack(">d", raw)[0]
    if column == "model_version":
        return struct.unpack(">i", raw)[0]
    if column == "probabilities":
        assert raw[0] == 1  # jsonb version byte
        return json.loads(raw[1:].decode())
    if column in ("submitted_at", "scored_at"):
        return _EPOCH + dt.timedelta(microseconds=struct.unpack(">q", raw)[0])
    if column == "day":
        return (dt.date(2000, 1, 1) + dt.timedelta(days=struct.unpack(">i", raw)[0])).isoformat()
    return raw.decode()


def parse(payload: bytes) -> list[dict]:
    rows, pos = [], 0
    while pos < len(payload):
        (n,) = struct.unpack_from(">h", payload, pos)
        assert n == len(COLUMNS)
        pos += 2
        row = {}
        for column in COLUMNS:
            (size,) = struct.unpack_from(">i", payload, pos)
            pos += 4
            row[column] = None if size == -1 else _decode(column, payload[pos : pos + size])
            pos += max(size, 0)
        rows.append(row)
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
    now = dt.datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
    rows = parse(copy_payload(scored, "w:1", now))
    assert [r["key"] for r in rows] == ["k\n1", None, "k3"]
    assert {r["scored_at"] for r in rows} == {now} and {r["model_version"] for r in rows} == {3}
    submitted = dt.datetime.fromtimestamp(batch.submitted_at, dt.UTC)
    assert abs(rows[0]["submitted_at"] - submitted) <= dt.timedelta(microseconds=1)
    assert {r["run_id"] for r in rows} == {"r\\1"}
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert [r["label"] for r in rows] == ["plain", None, "a\tb"]
    assert [r["error"] for r in rows] == [None, "row 1: feature 'x'\tis NaN", None]
    assert [r["error_code"] for r in rows] == [None, "missing_value", None]
    assert rows[1]["score"] is None and rows[1]["probabilities"] is None
    assert rows[2]["score"] == 1 / 3  # exact
    assert rows[0]["probabilities"] == dict(zip(classes, [0.1, 0.2, 0.7], strict=True))


def test_binary_classifier_stores_only_its_score_and_the_reader_rebuilds_probabilities():
    batch = Batch(model="m", version=1, job_ids=["a", "b", "c"], x=np.zeros((3, 1)))
    p = np.array([[0.25, 0.75], [np.nan, np.nan], [0.9, 0.1]])
    scored = ScoredBatch(batch=batch, model_name="m", model_version=1,
                         ok=np.array([True, False, True]), errors={1: RowError("bad", "internal")},
                         labels=["1", None, "0"], scores=p[:, 1], proba=p,
                         classes=["0", "1"])  # fmt: skip
    rows = parse(copy_payload(scored, "w", dt.datetime.now(dt.UTC)))
    assert [r["score"] for r in rows] == [0.75, None, 0.1]
    assert [r["probabilities"] for r in rows] == [None, None, None]
    assert binary_probabilities(["0", "1"], 0.75) == {"0": 0.25, "1": 0.75}


def test_binary_scores_other_than_the_second_probability_keep_probabilities():
    batch = Batch(model="m", version=1, job_ids=["a"], x=np.zeros((1, 1)))
    p = np.array([[0.25, 0.75]])
    scored = ScoredBatch(batch=batch, model_name="m", model_version=1, ok=np.ones(1, bool),
                         errors={}, labels=["1"], scores=np.array([2.5]), proba=p,
                         classes=["0", "1"])  # fmt: skip
    (row,) = parse(copy_payload(scored, "w", dt.datetime.now(dt.UTC)))
    assert row["probabilities"] == {"0": 0.25, "1": 0.75} and row["score"] == 2.5


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
    days = [dt.date(2026, 1, 5), dt.date(2026, 2, 27)]
    rows = parse(copy_payload(scored, "w", now, days=days))
    assert [r["day"] for r in rows] == ["2026-01-05", "2026-02-27"]  # ids found on other days
