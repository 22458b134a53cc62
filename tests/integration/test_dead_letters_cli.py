"""`inferq dead-letters export` and `purge` on real dead letters."""

import json
import time

import numpy as np
import pandas as pd
import pytest
from inferq.common import contract
from inferq.common.db import make_engine
from inferq.models import registry
from inferq.producer import InferenceClient
from sqlalchemy import text

from tests.integration.test_workers_cli import inferq

pytestmark = [pytest.mark.integration]


def _dead_letters(engine, n, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            letters = {r.batch_id: r for r in conn.execute(text("SELECT * FROM dead_letters"))}
        if len(letters) >= n:
            return letters
        time.sleep(0.5)
    raise AssertionError(f"{n} dead letters expected, found {len(letters)}")


@pytest.mark.e2e
def test_export_then_purge_real_dead_letters(pg_settings, binary_model, start_worker, tmp_path):
    """A batch whose results Postgres refuses, and a message without job ids, dead-lettered
    by a real worker; their rows out as Parquet and CSV, then purged by id and --all."""
    from inferq.common.celery import create_celery

    engine = make_engine(pg_settings)
    registry.register(engine, pg_settings.model_store_dir, binary_model.path, "blocked",
                      "production")  # fmt: skip
    with engine.begin() as conn:  # Postgres refuses every result row: the batch dead-letters
        conn.execute(text("""
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'refused by the test trigger'; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON predictions FOR EACH ROW
            EXECUTE FUNCTION refuse();
        """))  # fmt: skip
    start_worker(pg_settings, concurrency=1)
    x = binary_model.x.iloc[:12]
    keys = [f"c{i}" for i in range(11)] + ["=HYPERLINK(1)"]  # untrusted text, formula-like
    with InferenceClient(pg_settings, engine=engine) as client:
        jobs = client.submit("blocked", x, keys=keys)
    app = create_celery(pg_settings)
    app.send_task(contract.SCORE_BATCH, kwargs={"batch_id": "no-ids", "model": "blocked"},
                  queue=pg_settings.online_queue)  # fmt: skip
    app.close()
    letters = _dead_letters(engine, 2)
    (blocked,) = [b for b in letters if b != "no-ids"]

    out = inferq(pg_settings, "dead-letters", "export", str(tmp_path / "dl.parquet"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["batches"], report["rows"], report["unreadable"]) == (2, 12, ["no-ids"])
    frame = pd.read_parquet(tmp_path / "dl.parquet")
    assert len(frame) == 13
    rows = frame[frame.batch_id == blocked].sort_values("row")
    assert rows.job_id.tolist() == jobs and rows.key.tolist() == keys
    assert rows.row.tolist() == list(range(12)) and set(rows.model) == {"blocked"}
    assert rows.reason.iloc[0].startswith("results could not be written after 3 attempts")
    features = list(binary_model.x.columns)  # named after the model's schema, values exact
    np.testing.assert_array_equal(rows[features].to_numpy(), x.to_numpy())
    (bad,) = frame[frame.batch_id == "no-ids"].itertuples()
    assert "ContractError" in bad.payload_error and pd.isna(bad.job_id)

    out = inferq(pg_settings, "dead-letters", "export", str(tmp_path / "dl.csv"), blocked)
    assert out.returncode == 0 and out.stdout == ""
    assert f"wrote 12 row(s) of 1 dead letter(s) to {tmp_path / 'dl.csv'}" in out.stderr
    csv = pd.read_csv(tmp_path / "dl.csv")
    assert csv.key.tolist()[-1] == "'=HYPERLINK(1)"  # a spreadsheet shows it, never runs it
    assert csv[features[0]].tolist() == pytest.approx(x[features[0]].tolist())

    out = inferq(pg_settings, "dead-letters", "export", str(tmp_path / "dl.xlsx"))
    assert out.returncode == 2 and "name it .csv or .parquet" in out.stderr

    # purge: nothing is removed without --yes when nobody can answer the prompt
    out = inferq(pg_settings, "dead-letters", "purge", blocked)
    assert out.returncode == 2 and "would remove 1 dead letter(s) holding 12 row(s)" in out.stderr
    out = inferq(pg_settings, "dead-letters", "purge", "--older-than", "7d", "--yes", "--json")
    assert json.loads(out.stdout)["batches"] == 0  # both are minutes old
    out = inferq(pg_settings, "dead-letters", "purge", blocked, "--yes", "--json")
    assert out.returncode == 0, out.stderr
    purged = json.loads(out.stdout)
    assert (purged["batches"], purged["rows"], purged["removed"]) == (1, 12, True)
    assert purged["unanswered"] == [blocked]  # its jobs have no result row
    out = inferq(pg_settings, "dead-letters", "purge", blocked, "--yes")
    assert out.returncode == 1 and f"not found: {blocked}" in out.stderr
    out = inferq(pg_settings, "dead-letters", "purge", "--all", "--older-than", "1d")
    assert out.returncode == 2 and "exactly one of them" in out.stderr
    out = inferq(pg_settings, "dead-letters", "purge", "--all", "--yes")
    assert out.returncode == 0 and "removed 1 dead letter(s) holding 0 row(s)" in out.stderr
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM dead_letters")) == 0
    engine.dispose()


def test_export_puts_text_and_number_features_back_in_schema_order(sqlite_settings, tmp_path):
    """A typed message (text columns between numbers) as a worker stores it: the export has
    every feature in its place, and a model version that is not registered gets f0, f1..."""
    from inferq.workers.results import write_dead_letter

    engine = make_engine(sqlite_settings)
    batch = contract.Batch(
        model="ghost", version=3, job_ids=["j1", "j2"], keys=["k1", None],
        x=np.array([[1.5, 10.0], [np.nan, 20.0]]), text=[["paris", None]],
        text_positions=(1,), width=3, row_offset=40, row_errors={1: "row 41: bad"},
    )  # fmt: skip
    write_dead_letter(engine, contract.encode_batch(batch), 4, "delivered 4 times")
    out = inferq(sqlite_settings, "dead-letters", "export", str(tmp_path / "t.parquet"), "--json")
    assert out.returncode == 0, out.stderr
    frame = pd.read_parquet(tmp_path / "t.parquet")
    assert list(frame.columns[-3:]) == ["f0", "f1", "f2"]
    nulls = frame.isna()  # missing text reads back as None or NaN, per pandas version
    assert frame.f1.iloc[0] == "paris" and nulls.f1.iloc[1] and frame.f2.tolist() == [10.0, 20.0]
    assert frame.f0.iloc[0] == 1.5 and np.isnan(frame.f0.iloc[1])
    assert frame.row.tolist() == [40, 41] and frame.row_error.iloc[1] == "row 41: bad"
    assert nulls.row_error.iloc[0] and nulls.key.iloc[1] and frame.key.iloc[0] == "k1"
    assert frame.deliveries.tolist() == [4, 4]
    engine.dispose()
