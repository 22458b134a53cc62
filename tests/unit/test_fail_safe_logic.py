"""Fail safe and rescoring, our own logic (issue 11): why a model can't be served here, when
a worker refuses to start, rescore messages, and rescore writes (SQLite; Postgres is covered
end to end in tests/integration/test_fail_safe.py)."""

from __future__ import annotations

import sqlite3
import sys
import time

import joblib
import numpy as np
import pytest
from inferq.common import contract
from inferq.common.db import make_engine
from inferq.common.errors import ArtifactMismatch, ModelUnavailable
from inferq.common.schema import predictions
from inferq.models.artifacts import load_verified, sha256_file
from inferq.producer.rescore import chunk_of
from inferq.workers.app import refuse_to_start
from inferq.workers.health import explain
from inferq.workers.inference import ModelInfo, error_batch, score_batch
from inferq.workers.results import write_results
from sqlalchemy import select


def test_a_missing_artifact_names_the_store_and_the_fix(tmp_path):
    exc = ArtifactMismatch(str(tmp_path / "m/1/model.joblib"), "file", "sha256 ab...", "no file")
    problem = explain("m@1", exc, tmp_path)
    assert isinstance(problem, ModelUnavailable)
    assert str(problem) == (
        f"cannot serve m@1 on this worker: its artifact {tmp_path}/m/1/model.joblib is not in "
        f"this worker's model store ({tmp_path}); set INFERQ_MODEL_STORE to the store the "
        "model was registered into (or mount it there) and restart the worker"
    )


def test_other_scikit_learn_version_says_which_to_install(tmp_path):
    exc = ArtifactMismatch("p", "scikit-learn version", "1.4.2", "1.9.1")
    assert "install scikit-learn==1.4.2" in str(explain("m@1", exc, tmp_path))


def test_a_pickle_needing_an_uninstalled_module_is_unservable_not_an_error(tmp_path, monkeypatch):
    """A real joblib file whose class lives in a module this environment does not have."""
    (tmp_path / "custom_feats_xyz.py").write_text(
        "from sklearn.linear_model import LogisticRegression\n"
        "class MyModel(LogisticRegression):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import custom_feats_xyz

    x = np.random.default_rng(0).normal(size=(40, 3))
    path = tmp_path / "model.joblib"
    joblib.dump(custom_feats_xyz.MyModel().fit(x, x[:, 0] > 0), path)
    monkeypatch.delitem(sys.modules, "custom_feats_xyz")
    (tmp_path / "custom_feats_xyz.py").unlink()
    import sklearn

    with pytest.raises(ModuleNotFoundError) as caught:
        load_verified(path, sha256_file(path), sklearn.__version__)
    problem = explain("m@2", caught.value, tmp_path)
    assert "needs the module 'custom_feats_xyz', which is not installed here" in str(problem)
    assert "install the package that provides 'custom_feats_xyz'" in str(problem)


def test_an_unreadable_store_is_an_environment_problem(tmp_path):
    problem = explain("m@1", PermissionError(13, "Permission denied"), tmp_path)
    assert "model store is unreadable" in str(problem) and str(tmp_path) in str(problem)


@pytest.mark.parametrize(
    ("policy", "served", "unservable", "refused"),
    [
        ("any", [], ["a@1"], True),  # nothing servable: misconfigured, refuse
        ("any", ["b@1"], ["a@1"], False),  # degraded: serve b, requeue a's jobs
        ("all", ["b@1"], ["a@1"], True),
        ("off", [], ["a@1"], False),
        ("any", [], [], False),  # no models registered yet
    ],
)
def test_start_check_policies(policy, served, unservable, refused):
    assert (refuse_to_start(policy, served, unservable) is not None) is refused


def test_rescore_flag_travels_and_old_messages_are_not_rescores():
    batch = contract.Batch(model="m", version=1, job_ids=["a"], x=np.zeros((1, 2)))
    payload = contract.encode_batch(batch)
    assert "rescore" not in payload  # unchanged wire format for ordinary messages
    assert contract.decode_batch(payload).rescore is False
    batch.rescore = True
    assert contract.decode_batch(contract.encode_batch(batch)).rescore is True
    assert contract.decode_batch({**payload, "rescore": "yes"}).rescore is False  # strict


def test_chunk_numbers_of_run_batches():
    assert chunk_of("r1", "r1.7") == 7
    assert chunk_of("r1", "r1.7~ab12cd34") == 7
    assert chunk_of("r1", "r1.7~replay-1234abcd") == 7
    assert chunk_of("r1", "r10.7") is None and chunk_of("r1", "r1.x") is None


def test_patterns_match_the_messages_workers_write_and_not_data_errors():
    """RESCORABLE_ERRORS must keep matching what the worker writes (SQL LIKE, as queried)."""
    rescorable = [
        "model cancer@2 unavailable: refusing to load /x/model.joblib: file mismatch",
        "dead-lettered: delivered 4 times without finishing: its worker process died",
        "scoring took longer than the time limit (216 s); send smaller batches",
        "internal error while scoring: ValueError: boom",
    ]
    data = [
        "row 17: expected 30 features, got 29",
        "row 0: feature 'city' (column 2) has a non-numeric value 'lyon' (text)",
        "message rejected: field 'x' is missing",
    ]
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA case_sensitive_like = ON")
    where = " OR ".join("e LIKE ?" for _ in contract.RESCORABLE_ERRORS)
    for message in rescorable + data:
        hit = db.execute(f"SELECT {where} FROM (SELECT ? AS e)",
                         [*contract.RESCORABLE_ERRORS, message]).fetchone()[0]  # fmt: skip
        assert bool(hit) is (message in rescorable), message


def _scored(batch, model):
    from inferq.models.artifacts import inspect_estimator

    return score_batch(model, ModelInfo.of("m", 1, model, inspect_estimator(model)), batch)


def test_a_rescore_replaces_error_rows_and_never_an_ok_row(sqlite_settings):
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(1).normal(size=(50, 3))
    model = LogisticRegression().fit(x, x[:, 0] > 0)
    engine = make_engine(sqlite_settings)
    first = contract.Batch(model="m", version=1, job_ids=["a", "b", "c"], x=x[:3])
    write_results(engine, _scored(first, model), "w1", received_at=time.time())
    broken = contract.Batch(model="m", version=1, job_ids=["d", "e"], x=x[3:5])
    write_results(
        engine,
        error_batch(broken, "dead-lettered: died", code="dead_lettered"),
        "w1",
        received_at=0,
    )

    again = contract.Batch(
        model="m", version=1, job_ids=["a", "d", "e"], x=np.vstack([x[:1], x[3:5]]),
        batch_id="again", rescore=True,
    )  # fmt: skip
    report = write_results(engine, _scored(again, model), "w2", received_at=time.time())
    assert report.n_written == 2  # d and e replaced; a kept
    assert write_results(engine, _scored(again, model), "w2", received_at=0).duplicate_batch
    with engine.connect() as conn:
        rows = {r.job_id: r for r in conn.execute(select(predictions))}
    assert sorted(rows) == ["a", "b", "c", "d", "e"]
    assert rows["a"].worker == "w1" and rows["a"].batch_id == first.batch_id
    assert all(rows[j].status == "ok" and rows[j].batch_id == "again" for j in "de")


def test_parked_messages_go_only_to_a_worker_that_can_serve_them():
    import fakeredis
    from inferq.workers.health import counts_by_model, parked
    from inferq.workers.parking import claim, node_queue, park

    r = fakeredis.FakeRedis()
    park(r, "b1", "churn@3", "online", {"batch_id": "b1", "x": b"\x00" * 16}, "bad@h", "no file")
    park(r, "b2", "fraud@1", "bulk", {"batch_id": "b2"}, "bad@h", "no module 'x'")
    park(r, "b3", "churn@3", "online", {"batch_id": "b3"}, "bad@h", "no file")
    assert counts_by_model(r) == {"churn@3": 2, "fraud@1": 1}
    assert [(p.batch_id, p.queue, p.by, p.reason) for p in parked(r)][:1] == [
        ("b1", "online", "bad@h", "no file")
    ]

    sent = []

    def refuse(batch_id, payload, ref):
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        claim(r, lambda ref: ref == "churn@3", refuse)
    assert len(parked(r)) == 3  # a failed send leaves it parked

    asked = []

    def can_serve(ref):
        asked.append(ref)
        return ref == "churn@3"

    taken = claim(r, can_serve, lambda b, p, ref: sent.append((b, p, ref)))
    assert [p.batch_id for p in taken] == ["b1", "b3"]
    assert sent[0] == ("b1", {"batch_id": "b1", "x": b"\x00" * 16}, "churn@3")  # bytes intact
    assert sorted(asked) == ["churn@3", "fraud@1"]  # asked once per version, not per message
    assert [p.batch_id for p in parked(r)] == ["b2"]
    assert r.hlen("inferq:parked:body") == 1
    assert node_queue("w1@host") == "inferq.node.w1@host"


def test_rescore_picks_rows_by_code_and_rows_from_before_codes_by_message(sqlite_settings):
    """The real filter on real rows: codes decide; rows without a code (written before codes
    existed) are picked by their message."""
    from inferq.producer.rescore import rescorable_filter
    from sqlalchemy import update

    engine = make_engine(sqlite_settings)
    rows = {
        "coded-internal": ("internal error while scoring: boom", "internal"),
        "coded-dead": ("dead-lettered: died", "dead_lettered"),
        "coded-data": ("row 0: column 1 has a non-numeric value 'x' (text)", "invalid_value"),
        "legacy-unavailable": ("model m@1 unavailable: refusing to load /m: file mismatch", None),
        "legacy-data": ("row 0: column 1 is NaN (missing)", None),
    }
    for job, (message, code) in rows.items():
        batch = contract.Batch(model="m", version=1, job_ids=[job], x=np.zeros((1, 1)))
        write_results(engine, error_batch(batch, message, code=code or "internal"), "w",
                      received_at=0)  # fmt: skip
        if code is None:
            with engine.begin() as conn:
                conn.execute(
                    update(predictions).where(predictions.c.job_id == job).values(error_code=None)
                )
    with engine.connect() as conn:
        picked = set(conn.scalars(select(predictions.c.job_id).where(rescorable_filter())))
    assert picked == {"coded-internal", "coded-dead", "legacy-unavailable"}
