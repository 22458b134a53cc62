"""Typed rows (issue 12), our own logic: coercion to a schema, the wire format (untrusted
decode included), one merge for client and worker, and the model input a worker builds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from inferq.common import contract
from inferq.common.errors import ContractError, InvalidInput, MissingColumns
from inferq.common.rows.coerce import MAX_TEXT_CHARS, to_columns
from inferq.common.rows.merge import merge
from inferq.common.rows.model_input import model_input, validate
from inferq.common.rows.schema import Feature, InputSchema

NUM = InputSchema.numeric(3, ["a", "b", "c"])
MIXED = InputSchema(
    (
        Feature("age", "integer", missing=True),
        Feature("city", "category", missing=True, categories=("lyon", "paris")),
        Feature("income", "number"),
        Feature("plan", "category"),
        Feature("vip", "boolean"),
    )
)


# ----- coercion --------------------------------------------------------------------------
def test_dataframe_columns_are_matched_by_name_not_position():
    df = pd.DataFrame({"c": [3.0, 30.0], "extra": ["x", "y"], "a": [1, 10], "b": [2.0, 20.0]})
    cols = to_columns(df, NUM)
    np.testing.assert_array_equal(cols.x, [[1, 2, 3], [10, 20, 30]])
    assert cols.errors == {} and cols.text is None


def test_dataframe_missing_columns_refuse_the_submission():
    df = pd.DataFrame({"a": [1.0], "zzz": [2.0]})
    with pytest.raises(MissingColumns, match=r"'m'.*b, c"):
        to_columns(df, NUM, "'m'")


def test_text_in_a_number_column_is_that_rows_error():
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["4.5", 5.0], "c": [None, 6.0]}, dtype=object)
    cols = to_columns(df, NUM)
    assert cols.errors == {0: "row 0: feature 'b' (column 1) has a non-numeric value '4.5' (text)"}
    np.testing.assert_array_equal(cols.x[1], [2, 5, 6])


def test_list_rows_none_is_missing_and_bad_rows_are_flagged():
    rows = [[1, 2, 3], [1, None, 3], [1, "abc", 3], [1, 2], [1, 2, 3, 4], "oops", [4.0, 5.0, 6.0]]
    cols = to_columns(rows, InputSchema.numeric(3))
    assert cols.errors == {
        2: "row 2: column 1 has a non-numeric value 'abc' (text)",
        3: "row 3: expected 3 features, got 2",
        4: "row 4: expected 3 features, got 4",
        5: "row 5: expected a list of values or a dict, got str",
    }
    assert np.isnan(cols.x[1, 1]) and cols.x[1, 0] == 1  # missing: the worker decides
    np.testing.assert_array_equal(cols.x[[0, 6]], [[1, 2, 3], [4, 5, 6]])


def test_dict_rows_use_feature_names():
    cols = to_columns([{"c": 3, "b": 2, "a": 1, "x": 9}, {"a": 1}], NUM)
    np.testing.assert_array_equal(cols.x[0], [1, 2, 3])
    assert cols.errors == {1: "row 1: missing feature(s) 'b', 'c'"}
    unnamed = to_columns([{"a": 1}], InputSchema.numeric(1))
    assert "need a model fitted with feature names" in unnamed.errors[0]


def test_numeric_ndarray_passes_through_unchanged():
    arr = np.arange(12, dtype=np.int32).reshape(4, 3)
    cols = to_columns(arr, InputSchema.numeric(3))
    assert cols.x.dtype == np.float64 and cols.errors == {}
    np.testing.assert_array_equal(cols.x, arr)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros(3), "use x.reshape"),
        (np.zeros((2, 4)), "rows have 4 columns but m expects 3 features"),
        ("1,2,3", "got str"),
        (42, "got int"),
    ],
)
def test_unreadable_submissions_raise(rows, message):
    with pytest.raises(InvalidInput, match=message):
        to_columns(rows, InputSchema.numeric(3), "m")


def test_mixed_dataframe_with_category_bool_and_missing_values():
    df = pd.DataFrame(
        {
            "plan": pd.Categorical(["gold", "free", "gold", None]),
            "vip": [True, False, True, False],
            "city": ["lyon", None, 'Zürich, "centre"\nnord', 75001],
            "income": [1.5, 2.5, np.nan, 4.0],
            "age": pd.array([30, None, 40, 50], dtype="Int64"),  # pd.NA must never leak
        }
    )
    cols = to_columns(df, MIXED, "m@1")
    assert cols.errors == {}
    np.testing.assert_array_equal(cols.x[:, [1, 2]], [[1.5, 1], [2.5, 0], [np.nan, 1], [4, 0]])
    assert np.isnan(cols.x[1, 0]) and cols.x[0, 0] == 30
    assert cols.text == [
        ["lyon", None, 'Zürich, "centre"\nnord', "75001"],  # an integer reads as its text
        ["gold", "free", "gold", None],
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (2.5, "has a number 2.5 where a category (text) is expected"),
        (True, "has a boolean True where a category (text) is expected"),
        (
            "x" * (MAX_TEXT_CHARS + 1),
            f"has a text of {MAX_TEXT_CHARS + 1:,} characters (limit 10,000)",
        ),
        ({"k": 1}, "has a value of type dict where a category (text) is expected"),
    ],
)
def test_category_values_that_are_not_text_are_that_rows_error(value, problem):
    cols = to_columns([[1, value, 2.0, "free", 0], [1, "lyon", 2.0, "free", 1]], MIXED, "m")
    assert cols.errors == {0: f"row 0: feature 'city' (column 1) {problem}"}
    assert cols.text is not None and cols.text[0] == [None, "lyon"]


# ----- wire ------------------------------------------------------------------------------
def _typed_batch(n: int = 3, **kw) -> contract.Batch:
    cols = to_columns(
        [[20 + i, "lyon" if i % 2 else None, 1.0 * i, "free", i % 2] for i in range(n)], MIXED
    )
    return contract.Batch(
        "m", 1, [f"j{i}" for i in range(n)], cols.x, text=cols.text,
        text_positions=MIXED.text_positions, width=MIXED.width, **kw,
    )  # fmt: skip


def test_typed_batch_round_trips_and_numeric_messages_stay_version_1():
    batch = _typed_batch()
    payload = contract.encode_batch(batch)
    assert payload["v"] == 2 and payload["x"] == batch.x.tobytes()  # numbers: one float block
    back = contract.decode_batch(payload)
    assert back.text == batch.text and back.text_positions == (1, 3) and back.n_features == 5
    np.testing.assert_array_equal(back.x, batch.x)
    numeric = contract.encode_batch(contract.Batch("m", 1, ["a"], np.zeros((1, 3))))
    assert numeric["v"] == 1 and "text" not in numeric and "rows" not in numeric


def test_messages_written_before_typed_rows_still_decode():
    """A v1 payload exactly as 0.1 wrote it (in Redis, the ledger or dead_letters)."""
    old = {
        "v": 1, "batch_id": "b", "run_id": None, "model": "m", "version": 2,
        "job_ids": ["a", "b"], "keys": None, "shape": [2, 3],
        "x": np.arange(6, dtype="<f8").tobytes(), "err_rows": [1], "err_msgs": ["row 1: bad"],
        "submitted_at": 1764547200.0, "row_offset": 5,
    }  # fmt: skip
    batch = contract.decode_batch(old)
    assert batch.text is None and batch.n_features == 3 and batch.row_number(1) == 6
    assert validate(NUM, batch.x, None, batch.row_number, "m@2", dict(batch.row_errors)) == {
        1: "row 1: bad"
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"text": [["a", "b", "c"]]}, "1 text columns but 2 positions"),
        ({"text": [["a", "b"], ["c", "d", "e"]]}, "does not hold one value per row"),
        ({"text": [["a", 5, "c"], ["x", "y", "z"]]}, "holds a int, not text"),
        ({"tpos": [3, 1]}, "distinct, ascending and in range"),
        ({"tpos": [1, 9]}, "distinct, ascending and in range"),
        ({"width": 9}, r"width 9 is not 3 number columns \+ 2 text columns"),
        ({"tpos": "1,3"}, "of the right types"),
        ({"rows": [1, 2]}, "one non-negative row number per job id"),
        ({"rows": [1, -2, 3]}, "one non-negative row number per job id"),
        ({"v": 3}, "version 3 is not supported"),
    ],
)
def test_hostile_typed_payloads_are_refused_with_the_reason(change, reason):
    payload = {**contract.encode_batch(_typed_batch()), **change}
    with pytest.raises(ContractError, match=reason):
        contract.decode_batch(payload)


def test_a_column_layout_that_lies_about_the_model_fails_every_row_with_the_reason():
    from inferq.common.rows.model_input import layout_problem

    assert layout_problem(MIXED, 3, (1, 3), 5) is None
    assert layout_problem(MIXED, 4, (1,), 5) == "expected 5 features (2 text), got 5 (1 text)"
    assert layout_problem(MIXED, 3, (0, 4), 5) == (
        "text features at columns [0, 4], but the model's are at [1, 3]"
    )
    assert layout_problem(NUM, 2, (), 2) == "expected 3 features, got 2"


# ----- validation and model input --------------------------------------------------------
def test_missing_values_only_where_the_model_accepts_them():
    batch = _typed_batch(4)
    batch.x[2, 1] = np.nan  # income (block column 1): missing not accepted
    batch.x[3, 1] = np.inf
    assert batch.text is not None
    batch.text[1][1] = None  # plan: missing not accepted
    errors = validate(MIXED, batch.x, batch.text, batch.row_number, "m@1", {})
    assert {i: e.code for i, e in errors.items()} == {  # type: ignore[attr-defined]
        1: "missing_value",
        2: "missing_value",
        3: "non_finite",
    }
    assert errors == {
        1: "row 1: feature 'plan' (column 3) is missing, and m@1 does not accept missing "
        "values there",
        2: "row 2: feature 'income' (column 2) is missing, and m@1 does not accept missing "
        "values there",
        3: "row 3: feature 'income' (column 2) is +inf",
    }  # row 0: age and city missing, both accepted


def test_model_input_is_a_frame_in_training_order_with_nan_for_missing_text():
    batch = _typed_batch(3)
    frame = model_input(MIXED, batch.x, batch.text, np.array([0, 2]), array_ok=True)
    assert list(frame.columns) == ["age", "city", "income", "plan", "vip"]
    assert frame["city"].dtype == object and frame["city"].isna().all()
    assert frame["plan"].tolist() == ["free", "free"] and frame["age"].tolist() == [20, 22]
    assert not any(v is pd.NA or v is None for v in frame["city"])
    cat = InputSchema((Feature("x"), Feature("c", "category", True, ("a", "b"), True)))
    frame = model_input(cat, np.ones((2, 1)), [["b", None]], None, array_ok=True)
    assert str(frame["c"].dtype) == "category" and list(frame["c"].cat.categories) == ["a", "b"]
    x = np.ones((2, 3))
    assert model_input(NUM, x, None, None, array_ok=True) is x  # the fast path
    assert list(model_input(NUM, x, None, None, array_ok=False).columns) == ["a", "b", "c"]


# ----- one merge -------------------------------------------------------------------------
def test_one_merge_keeps_each_rows_number_for_its_caller_on_the_wire():
    a = _typed_batch(2, row_offset=10, keys=["k0", "k1"])
    b = _typed_batch(3, row_offset=0, row_errors={1: "row 1: bad"})
    merged = merge([a, b])
    assert merged.n_rows == 5 and merged.row_errors == {3: "row 1: bad"}
    assert merged.keys == ["k0", "k1", None, None, None]
    assert merged.text is not None and merged.text[1] == ["free"] * 5
    back = contract.decode_batch(contract.encode_batch(merged))
    assert [back.row_number(i) for i in range(5)] == [10, 11, 0, 1, 2]
    assert merge([a]) is a
    with pytest.raises(ValueError, match="same columns"):
        merge([a, contract.Batch("m", 1, ["z"], np.zeros((1, 3)))])


# ----- error codes -----------------------------------------------------------------------
def test_every_row_error_carries_a_code_beside_its_message_on_the_wire():
    cols = to_columns(
        [[1, "lyon", "x", "free", 0], [1, 2.5, 1.0, "free", 0], [1], "?",
         [1, "y" * (MAX_TEXT_CHARS + 1), 1.0, "free", 1]],
        MIXED,
    )  # fmt: skip
    assert {i: e.code for i, e in cols.errors.items()} == {
        0: "invalid_value", 1: "invalid_value", 2: "wrong_shape", 3: "bad_row",
        4: "text_too_long",
    }  # fmt: skip
    batch = contract.Batch("m", 1, [f"j{i}" for i in range(5)], cols.x, row_errors=cols.errors,
                           text=cols.text, text_positions=(1, 3), width=5)  # fmt: skip
    back = contract.decode_batch(contract.encode_batch(batch))
    assert back.row_errors == cols.errors  # the messages, as before
    assert {i: e.code for i, e in back.row_errors.items()} == {
        i: e.code for i, e in cols.errors.items()
    }
    # the worker keeps the producer's errors (and codes) and adds its own
    assert validate(MIXED, back.x, back.text, back.row_number, "m@1", dict(back.row_errors)) \
        == cols.errors  # fmt: skip


def test_a_message_from_before_codes_gets_invalid_value():
    payload = contract.encode_batch(
        contract.Batch("m", 1, ["a"], np.zeros((1, 3)), row_errors={0: "row 0: text"})
    )
    del payload["err_codes"]
    (error,) = contract.decode_batch(payload).row_errors.values()
    assert error == "row 0: text" and error.code == "invalid_value"
    payload["err_codes"] = ["no-such-code"]
    (error,) = contract.decode_batch(payload).row_errors.values()
    assert error.code == "invalid_value"
