"""The message contract: binary matrix, strict decoding, names that cannot smuggle SQL."""

import numpy as np
import pytest
from inferq.common import contract
from inferq.common.errors import ContractError, InvalidName
from kombu.serialization import dumps, loads


def _batch(n=3, w=4, **kw):
    rng = np.random.default_rng(0)
    return contract.Batch(
        model="m", version=2, job_ids=[f"j{i}" for i in range(n)], x=rng.normal(size=(n, w)), **kw
    )


def test_roundtrip_through_celery_msgpack_is_exact_and_binary():
    batch = _batch(keys=["a", None, "c"], row_errors={1: "row 1: bad"}, run_id="r1", row_offset=7)
    payload = contract.encode_batch(batch)
    assert isinstance(payload["x"], bytes) and len(payload["x"]) == 3 * 4 * 8
    content_type, encoding, body = dumps(((), payload, {}), serializer=contract.SERIALIZER)
    assert content_type == "application/x-msgpack"
    _, decoded_kwargs, _ = loads(body, content_type, encoding, accept=[content_type])
    back = contract.decode_batch(decoded_kwargs)
    np.testing.assert_array_equal(back.x, batch.x)  # bit-exact floats
    assert back.job_ids == batch.job_ids and back.keys == ["a", None, "c"]
    assert back.row_errors == {1: "row 1: bad"}
    assert (back.run_id, back.row_offset, back.version) == ("r1", 7, 2)


def test_partition_day_and_caller_ids_travel_and_default_to_the_submission_day():
    import datetime as dt

    late = dt.datetime(2026, 5, 31, 23, 59, 59, 900000, tzinfo=dt.UTC).timestamp()
    plain = contract.decode_batch(contract.encode_batch(_batch(submitted_at=late)))
    assert plain.partition_day == dt.date(2026, 5, 31) and not plain.ids_given
    assert "day" not in contract.encode_batch(_batch()) and "ids" not in contract.encode_batch(
        _batch()
    )
    bulk = contract.decode_batch(contract.encode_batch(_batch(submitted_at=late, day="2026-05-20")))
    assert bulk.partition_day == dt.date(2026, 5, 20)
    given = contract.decode_batch(contract.encode_batch(_batch(ids_given=True)))
    assert given.ids_given


def test_matrix_is_raw_little_endian_float64_not_a_list():
    batch = _batch(n=1, w=2)
    batch.x = np.array([[1.5, -2.0]])
    payload = contract.encode_batch(batch)
    assert payload["x"] == np.array([1.5, -2.0], dtype="<f8").tobytes()
    assert payload["shape"] == [1, 2]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.update(v=99), "contract version 99"),
        (lambda p: p.update(x=p["x"][:-8]), "expected 96"),
        (lambda p: p.update(shape=[4, 4]), "shape says 4 rows"),
        (lambda p: p.update(job_ids="nope"), "job_ids"),
        (lambda p: p.update(keys=["only-one"]), "keys"),
        (lambda p: p.update(err_rows=[5], err_msgs=["x"]), "inconsistent"),
        (lambda p: p.pop("model"), "'model'"),
        (lambda p: p.update(day="2026-13-01"), "is not a date"),
        (lambda p: p.update(day="1999-01-01"), "between 2001 and 2100"),
        (lambda p: p.update(day=20260101), "is not a date"),
        (lambda p: p.update(submitted_at=-5.0), "between 2001 and 2100"),
        (lambda p: p.update(submitted_at=1e300), "between 2001 and 2100"),
    ],
)
def test_decode_rejects_malformed_payloads(mutate, message):
    payload = contract.encode_batch(_batch())
    mutate(payload)
    with pytest.raises(ContractError, match=message):
        contract.decode_batch(payload)


def test_describe_has_no_feature_values():
    batch = _batch(n=1, w=1)
    batch.x = np.array([[123456.789]])
    assert "123456" not in batch.describe()
    assert "model=m version=2 rows=1" in batch.describe()


@pytest.mark.parametrize("bad", ["", "a b", "x'; DROP TABLE predictions;--", "-lead", "a" * 129])
def test_names_with_sql_or_spaces_are_refused(bad):
    with pytest.raises(InvalidName, match="invalid model name"):
        contract.check_name(bad)


@pytest.mark.parametrize("good", ["churn", "churn-v2", "fraud_model.2026"])
def test_plain_names_are_accepted(good):
    assert contract.check_name(good) == good


def test_job_ids_are_validated():
    assert contract.check_job_id("order-123:a/b") == "order-123:a/b"
    with pytest.raises(InvalidName, match="job id"):
        contract.check_job_id("1'; DELETE FROM predictions; --")
