"""Bad inputs end to end (client -> Redis -> real `celery worker` -> Postgres), one worker.

Every case ends with a clear, human-readable answer: an exception raised before anything
reaches Redis (whole-submission problems), or an error row for the job (per-row problems,
broken model artifacts, hand-made messages). The rest of the work goes on, and every test
ends with the lost/duplicated/unexpected checker over every job accepted in this module.
Unit tests (tests/unit) cover the same validators in isolation; this file proves them on
the real pipeline.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from inferq.common import contract
from inferq.common.db import make_engine
from inferq.common.errors import (
    InvalidInput,
    InvalidName,
    MissingColumns,
    ModelNotFound,
    TooManyRows,
)
from inferq.common.settings import Settings
from inferq.models import registry
from inferq.producer import InferenceClient, Result
from sqlalchemy import Engine

from inferq import migrations
from tests.conftest import WorkerProcess, make_settings, settings_env
from tests.integration.checker import check
from tests.integration.instances import ThrowawayRedis, throwaway_postgres, throwaway_redis

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TEN_MB_OF_FLOATS = 1_310_720  # float64 columns in one 10 MiB row
SQL = "x'; DROP TABLE predictions;--"


@dataclass
class Pipeline:
    """One throwaway Postgres + Redis + worker for the whole module, and what it accepted."""

    settings: Settings
    engine: Engine
    client: InferenceClient
    worker: WorkerProcess
    redis: ThrowawayRedis
    accepted: list[str] = field(default_factory=list)

    def answered(self, job_ids: list[str], timeout: float = 60) -> dict[str, Result]:
        """Wait for ``job_ids`` (counted as accepted), run the checker, return their results."""
        self.accepted.extend(job_ids)
        results = self.client.wait(job_ids, timeout=timeout)
        counts = check(self.engine, self.accepted)
        assert counts.clean, counts
        assert self.worker.proc.poll() is None, "the worker died"
        return {r.job_id: r for r in results}

    def send_raw(self, batch: contract.Batch) -> list[str]:
        """Publish a hand-made message (no producer-side validation) to the worker's queue."""
        self.client.app.send_task(contract.SCORE_BATCH, kwargs=contract.encode_batch(batch),
                                  queue=self.settings.online_queue)  # fmt: skip
        return batch.job_ids

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``inferq ARGS`` with this pipeline's settings."""
        return subprocess.run(
            [sys.executable, "-m", "inferq", *args],
            env={**settings_env(self.settings), "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory, binary_model, multiclass_model, regressor_model
) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    with throwaway_postgres() as pg, throwaway_redis() as server:
        settings = make_settings(tmp, database_url=pg.create_database("inferq"),
                                 broker_url=f"{server.url}/0")  # fmt: skip
        migrations.upgrade(settings)
        engine = make_engine(settings)
        store = settings.model_store_dir
        registry.register(engine, store, binary_model.path, "cancer", "production")
        registry.register(engine, store, multiclass_model.path, "iris", "production")
        registry.register(engine, store, regressor_model.path, "reg", "production")
        worker = WorkerProcess(settings, tmp / "worker.log", concurrency=2)
        client = InferenceClient(settings, engine=engine)
        try:
            worker.wait_ready()
            yield Pipeline(settings, engine, client, worker, server)
        finally:
            client.close()
            worker.stop()
            engine.dispose()


# ----- per-row problems: error rows, the rest scored ----------------------------------------
def test_bad_values_in_one_submission_get_error_rows_and_good_rows_are_scored(
    pipeline, multiclass_model, binary_model, regressor_model
):
    good = multiclass_model.x[:3].tolist()
    rows: list[Any] = [
        good[0],
        [1.0, 2.0, float("nan"), 1.0],
        [float("inf"), 1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, float("-inf")],
        ["abc", 1.0, 1.0, 1.0],
        [1.0, None, 1.0, 1.0],
        [1.0, 1.0, 1.0],  # short
        [1.0, 1.0, 1.0, 1.0, 1.0],  # long
        {"a": 1.0},  # a dict for a model without feature names
        [1.0, 1.0, "7" * 10_000_000, 1.0],  # a 10 MB string feature
        [0.5] * TEN_MB_OF_FLOATS,  # a 10 MB row of floats
        good[1],
        [1.0, 1.0, 1.0, "1'; DROP TABLE predictions; --"],
        good[2],
    ]
    ids = pipeline.client.submit("iris", rows)
    # The same problems in a DataFrame (matched by feature name) and a float matrix
    # (validated by the worker, not the producer).
    frame = binary_model.x.iloc[:4].copy()
    frame.iloc[1, 0] = np.nan
    frame.iloc[2, 5] = np.inf
    frame_ids = pipeline.client.submit("cancer", frame)
    matrix = np.asarray(regressor_model.x[:4], dtype=float).copy()
    matrix[0, 3] = -np.inf
    matrix[2, [1, 4, 7]] = np.nan
    matrix_ids = pipeline.client.submit("reg", matrix)
    results = pipeline.answered(ids + frame_ids + matrix_ids)

    errors = [results[j].error for j in ids]
    assert errors == [
        None,
        None,  # the forest takes a missing value (probed at registration): scored
        "row 2: column 0 is +inf",
        "row 3: column 3 is -inf",
        "row 4: column 0 has a non-numeric value 'abc' (text)",
        None,  # None is a missing value, as NaN
        "row 6: expected 4 features, got 3",
        "row 7: expected 4 features, got 5",
        "row 8: dict rows need a model fitted with feature names; send a list in training "
        "column order",
        f"row 9: column 2 has a non-numeric value '{'7' * 37}...' (text)",
        f"row 10: expected 4 features, got {TEN_MB_OF_FLOATS}",
        None,
        'row 12: column 3 has a non-numeric value "1\'; DROP TABLE predictions; --" (text)',
        None,
    ]
    scored = [results[j] for j in (ids[0], ids[11], ids[13])]
    assert [r.label for r in scored] == multiclass_model.model.predict(good).tolist()
    missing = np.array([rows[1], [1.0, np.nan, 1.0, 1.0]])
    assert [results[ids[i]].label for i in (1, 5)] == multiclass_model.model.predict(
        missing
    ).tolist()
    assert all(r.status == "error" and r.label is None and r.score is None
               for j, r in results.items() if r.error)  # fmt: skip

    names = list(binary_model.x.columns)
    assert [results[j].error for j in frame_ids] == [
        None,
        f"row 1: feature {names[0]!r} (column 0) is missing, and cancer@1 does not accept "
        "missing values there",
        f"row 2: feature {names[5]!r} (column 5) is +inf",
        None,
    ]
    expected = binary_model.model.predict_proba(frame.iloc[[0, 3]])[:, 1]
    _assert_scores(results, [frame_ids[0], frame_ids[3]], expected)
    assert [results[j].error for j in matrix_ids] == [
        "row 0: column 3 is -inf",
        None,
        "row 2: column 1 is missing, and reg@1 does not accept missing values there",
        None,
    ]
    expected = regressor_model.model.predict(matrix[[1, 3]])
    _assert_scores(results, [matrix_ids[1], matrix_ids[3]], expected)


def _assert_scores(results: dict[str, Result], ids: list[str], expected: Any) -> None:
    np.testing.assert_allclose([results[j].score for j in ids], expected, rtol=0, atol=1e-12)


# ----- whole-submission problems: refused before anything reaches Redis ----------------------
@dataclass(frozen=True)
class Refusal:
    call: Callable[[InferenceClient, Any], object]
    error: type[Exception]
    words: str  # a regex the message must contain


def _cancer(binary_model) -> pd.DataFrame:
    return binary_model.x.iloc[:3]


REFUSALS = {
    "empty list": Refusal(lambda c, m: c.submit("iris", []), InvalidInput,
                          r"^no rows to submit \(got 0 rows\)$"),
    "0-row array": Refusal(lambda c, m: c.submit("iris", np.zeros((0, 4))), InvalidInput,
                           r"^no rows to submit \(got 0 rows\)$"),
    "0-row DataFrame": Refusal(lambda c, m: c.submit("cancer", _cancer(m).iloc[:0]), InvalidInput,
                               r"^no rows to submit \(got 0 rows\)$"),
    "matrix of the wrong width": Refusal(
        lambda c, m: c.submit("iris", np.zeros((3, 5))), InvalidInput,
        r"^rows have 5 columns but iris@1 expects 4 features$"),
    "DataFrame missing a feature": Refusal(
        lambda c, m: c.submit("cancer", _cancer(m).drop(columns=["mean radius"])),
        MissingColumns,
        r"^input is missing 1 feature column\(s\) that model 'cancer@1' needs: mean radius "),
    "1-D array": Refusal(lambda c, m: c.submit("iris", np.zeros(4)), InvalidInput,
                         r"must be 2-D .* got an array of shape \(4,\) .* x\.reshape\(1, -1\)"),
    "text instead of rows": Refusal(lambda c, m: c.submit("iris", "1,2,3,4"), InvalidInput,
                                    r"rows must be a 2-D numpy array, .* got str$"),
    "unknown model": Refusal(lambda c, m: c.submit("ghost", np.zeros((1, 4))), ModelNotFound,
                             r"^model 'ghost' is not registered \(see `inferq models list`\)$"),
    "unknown version": Refusal(lambda c, m: c.submit("iris", np.zeros((1, 4)), version=9),
                               ModelNotFound, r"^model 'iris' version 9 is not registered"),
    "unknown alias": Refusal(lambda c, m: c.submit("iris", np.zeros((1, 4)), alias="staging"),
                             ModelNotFound, r"^model 'iris' has no alias 'staging'"),
    "oversized submission": Refusal(
        lambda c, m: c.submit("iris", np.zeros((1001, 4))), TooManyRows,
        r"^submission of 1001 rows exceeds the limit of 1000 rows per call "
        r"\(INFERQ_MAX_SUBMIT_ROWS\)"),
    "10 MB row as a float matrix": Refusal(
        lambda c, m: c.submit("iris", np.zeros((1, TEN_MB_OF_FLOATS))), InvalidInput,
        rf"^rows have {TEN_MB_OF_FLOATS} columns but iris@1 expects 4 features$"),
    "SQL in the model name": Refusal(lambda c, m: c.submit(SQL, np.zeros((1, 4))), InvalidName,
                                     r"^invalid model name \"x'; DROP TABLE predictions;--\": "),
    "SQL in the alias": Refusal(lambda c, m: c.submit("iris", np.zeros((1, 4)), alias=SQL),
                                InvalidName, r"^invalid alias "),
    "SQL in a job id": Refusal(
        lambda c, m: c.submit("iris", np.zeros((1, 4)), job_ids=["1'; DELETE FROM predictions"]),
        InvalidName, r"^invalid job id \"1'; DELETE FROM predictions\": use 1-200 letters"),
    "duplicate job ids": Refusal(
        lambda c, m: c.submit("iris", np.zeros((2, 4)), job_ids=["a", "a"]), InvalidInput,
        r"^job id 'a' appears more than once in this submission$"),
    "job ids for other rows": Refusal(
        lambda c, m: c.submit("iris", np.zeros((2, 4)), job_ids=["a"]), InvalidInput,
        r"^got 1 job ids for 2 rows$"),
    "a 10 MB key": Refusal(
        lambda c, m: c.submit("iris", np.zeros((1, 4)), keys=["k" * 10_000_000]), InvalidInput,
        r"^key 'k{40}'\.\.\. is longer than 512 characters$"),
}  # fmt: skip


@pytest.fixture(scope="module")
def unconsumed(pipeline) -> Iterator[InferenceClient]:
    """A client on a queue no worker reads (its length counts what reached Redis); limit 1000."""
    settings = pipeline.settings.model_copy(
        update={"online_queue": f"unconsumed-{uuid.uuid4().hex[:6]}", "max_submit_rows": 1000}
    )
    client = InferenceClient(settings, engine=pipeline.engine)
    yield client
    client.close()


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_unreadable_submissions_are_refused_before_redis(case, pipeline, unconsumed,
                                                         binary_model):  # fmt: skip
    with pytest.raises(case.error, match=case.words):
        case.call(unconsumed, binary_model)
    assert pipeline.redis.client().llen(unconsumed.settings.online_queue) == 0


def test_the_refusal_check_sees_a_real_enqueue(pipeline, unconsumed):
    """Control for the test above: a valid submit on the same client does reach the queue."""
    queue = unconsumed.settings.online_queue
    (job,) = unconsumed.submit("iris", np.zeros((1, 4)))
    assert pipeline.redis.client().llen(queue) == 1
    # Hand it to the worker's queue so it is answered like every accepted job.
    message = pipeline.redis.client().rpop(queue)
    pipeline.redis.client().lpush(pipeline.settings.online_queue, message)
    assert pipeline.answered([job])[job].ok


# ----- broken models -------------------------------------------------------------------------
def test_model_file_changed_or_deleted_after_registration_is_parked_not_answered(
    pipeline, regressor_model, multiclass_model
):
    """A store that no longer holds the registered file is this worker's problem, not the
    jobs' (issue 11): they are parked with the reason until a worker can serve them, never
    answered with error rows, and the worker keeps serving the other models."""
    import redis
    from inferq.workers.health import parked

    store = pipeline.settings.model_store_dir
    artifact = "{}/1/model.joblib"
    # NOTE: the workers' store holds the bad files *before* the versions exist: a new version
    # is its model's `latest`, which workers preload at their next look at the registry, so
    # breaking the files after registering would race with that load. The registry copies
    # into a scratch store instead.
    for name in ("swapped", "truncated"):
        (store / name / "1").mkdir(parents=True)
    (store / artifact.format("swapped")).write_bytes(multiclass_model.path.read_bytes())
    (store / artifact.format("truncated")).write_bytes(regressor_model.path.read_bytes()[:100])
    scratch = store.parent / "scratch-store"
    for name in ("swapped", "truncated", "vanished"):
        registry.register(pipeline.engine, scratch, regressor_model.path, name)
    x = np.asarray(regressor_model.x[:3])
    held = {
        name: pipeline.client.submit(name, x, version=1)
        for name in ("swapped", "truncated", "vanished")
    }
    fine = pipeline.client.submit("reg", x)
    results = pipeline.answered(fine)  # the worker goes on serving what it can
    assert all(results[j].ok for j in fine)
    _assert_scores(results, fine, regressor_model.model.predict(x))

    client = redis.Redis.from_url(pipeline.settings.broker_url)
    deadline = time.monotonic() + 30
    while len(parked(client)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    reasons = {p.ref: p.reason for p in parked(client)}
    assert set(reasons) == {"swapped@1", "truncated@1", "vanished@1"}
    for name in ("swapped", "truncated"):
        assert reasons[f"{name}@1"].startswith(f"the file {store / artifact.format(name)} "
                                               "differs from the registered one")  # fmt: skip
    assert "is not in this worker's model store" in reasons["vanished@1"]
    # Never unpickled, never answered: a file swapped for another valid model would have
    # shown up as 'ok' rows with iris labels.
    assert pipeline.client.results([j for ids in held.values() for j in ids]) == []
    client.close()


@pytest.mark.parametrize(
    "make, name, words",
    [
        (lambda p: joblib.dump({"weights": [1, 2]}, p), "adict",
         "it holds a dict, not a scikit-learn estimator or Pipeline"),
        (lambda p: joblib.dump(_fitted_scaler(), p), "scaler",
         "StandardScaler is a transformer: it cannot score rows (register a classifier, "
         "regressor, outlier detector or clusterer)"),
        (lambda p: p.write_text("not a pickle"), "text", "not a readable joblib file"),
        (lambda p: joblib.dump([1], p), SQL, f"invalid model name {SQL!r}"),
    ],
    ids=["dict", "fitted transformer", "text file", "SQL in the name"],
)  # fmt: skip
def test_models_register_refuses_what_cannot_score(pipeline, tmp_path, make, name, words):
    path = tmp_path / "offered.joblib"
    make(path)
    out = pipeline.cli("models", "register", str(path), "--name", name, "--alias", "production")
    assert out.returncode == 2, out
    assert words in out.stderr.replace("\n", "")
    assert "Traceback" not in out.stderr
    assert name not in {mv.name for mv in registry.list_models(pipeline.engine)}
    assert not (pipeline.settings.model_store_dir / name).exists()


def _fitted_scaler() -> object:
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(np.arange(8.0).reshape(4, 2))


# ----- SQL-looking text and hand-made messages ----------------------------------------------
def test_sql_looking_keys_and_job_ids_are_stored_literally(pipeline, regressor_model):
    keys = [
        SQL,
        "1 OR 1=1; --",
        "$$; SELECT pg_sleep(30); $$",
        "tab\there, newline\nthere, back\\slash, quote\" and '",
        "\\N",  # COPY's NULL marker, as text
        None,
    ]
    job_ids = [f"j{uuid.uuid4().hex[:6]}--or--1=1", "x:1=1/../drop+table@predictions",
               *(f"k{i}-{uuid.uuid4().hex[:6]}" for i in range(4))]  # fmt: skip
    x = np.asarray(regressor_model.x[:6])
    ids = pipeline.client.submit("reg", x, job_ids=job_ids, keys=keys)
    assert ids == job_ids
    results = pipeline.answered(ids)
    assert [results[j].key for j in ids] == keys
    assert all(results[j].ok for j in ids)  # and the checker found `predictions` intact


def test_hand_made_messages_bypassing_the_producer_are_answered(pipeline, multiclass_model):
    """Messages the producer would refuse, sent straight to the worker's queue."""
    sql_ids = ["1'; DELETE FROM predictions; --", "a b\tc\nd"]
    sql_model = contract.Batch(model=SQL, version=1, job_ids=sql_ids, x=np.zeros((2, 4)),
                               keys=[SQL, None])  # fmt: skip
    huge = contract.Batch(model="iris", version=1, job_ids=[f"huge-{uuid.uuid4().hex[:6]}"],
                          x=np.zeros((1, TEN_MB_OF_FLOATS)))  # fmt: skip
    ghost = contract.Batch(model="iris", version=9, job_ids=[f"v9-{uuid.uuid4().hex[:6]}"],
                           x=np.zeros((1, 4)))  # fmt: skip
    empty = contract.Batch(model="iris", version=1, job_ids=[], x=np.zeros((0, 4)))
    sent = [pipeline.send_raw(b) for b in (sql_model, huge, ghost, empty)]
    fine = pipeline.client.submit("iris", multiclass_model.x[:5])
    results = pipeline.answered([j for ids in sent for j in ids] + fine)

    for j in sql_ids:  # stored literally, answered, nothing executed
        assert results[j].job_id == j and results[j].model_name == SQL
        assert results[j].error.startswith(f"model {SQL}@1 unavailable: model {SQL!r} version 1 "
                                           "is not registered")  # fmt: skip
    assert results[sql_ids[0]].key == SQL
    assert results[huge.job_ids[0]].error == f"row 0: expected 4 features, got {TEN_MB_OF_FLOATS}"
    assert results[ghost.job_ids[0]].error.startswith(
        "model iris@9 unavailable: model 'iris' version 9 is not registered"
    )
    assert all(results[j].ok for j in fine)
    # The 0-row message has nothing to answer; it must not break the worker either.
    log = pipeline.worker.output()
    assert empty.batch_id in log
    assert "Traceback" not in log, log[-3000:]


def test_worker_never_logs_feature_values(pipeline, regressor_model):
    """After every bad input above, the worker log holds no raw feature value (default level)."""
    x = np.full((2, 10), 123456.789012)
    pipeline.answered(pipeline.client.submit("reg", x))
    assert "123456.789" not in pipeline.worker.output()
    assert Path(pipeline.worker.log).stat().st_size < 5_000_000  # no 10 MB values echoed
