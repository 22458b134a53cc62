"""Producer-side conversion of caller rows to the wire matrix (no scikit-learn involved)."""

import numpy as np
import pandas as pd
import pytest
from inferq.common.errors import InvalidInput, MissingColumns
from inferq.producer.encoding import to_matrix

NAMES = ["a", "b", "c"]


def test_dataframe_columns_are_matched_by_name_not_position():
    df = pd.DataFrame({"c": [3.0, 30.0], "extra": ["x", "y"], "a": [1, 10], "b": [2.0, 20.0]})
    x, errors = to_matrix(df, 3, NAMES)
    np.testing.assert_array_equal(x, [[1, 2, 3], [10, 20, 30]])
    assert errors == {}


def test_dataframe_missing_columns_refuse_the_submission():
    df = pd.DataFrame({"a": [1.0], "zzz": [2.0]})
    with pytest.raises(MissingColumns, match=r"'m'.*b, c"):
        to_matrix(df, 3, NAMES, "'m'")


def test_dataframe_with_text_column_gives_per_row_errors():
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["4.5", 5.0], "c": [None, 6.0]}, dtype=object)
    x, errors = to_matrix(df, 3, NAMES)
    assert errors == {0: "row 0: feature 'b' (column 1) has a non-numeric value '4.5' (text)"}
    np.testing.assert_array_equal(x[1], [2, 5, 6])


def test_list_rows_with_bad_values_are_flagged_and_others_kept():
    rows = [[1, 2, 3], [1, None, 3], [1, "abc", 3], [1, 2], [1, 2, 3, 4], "oops", [4.0, 5.0, 6.0]]
    x, errors = to_matrix(rows, 3, None)
    assert errors == {
        1: "row 1: column 1 is missing (None)",
        2: "row 2: column 1 has a non-numeric value 'abc' (text)",
        3: "row 3: expected 3 features, got 2",
        4: "row 4: expected 3 features, got 4",
        5: "row 5: expected a list of numbers or a dict, got str",
    }
    np.testing.assert_array_equal(x[[0, 6]], [[1, 2, 3], [4, 5, 6]])
    assert np.isnan(x[1:6]).all()


def test_dict_rows_use_feature_names():
    x, errors = to_matrix([{"c": 3, "b": 2, "a": 1, "x": 9}, {"a": 1}], 3, NAMES)
    np.testing.assert_array_equal(x[0], [1, 2, 3])
    assert errors == {1: "row 1: missing feature(s) 'b', 'c'"}


def test_dict_rows_without_feature_names_explain_why():
    _, errors = to_matrix([{"a": 1}], 1, None)
    assert "need a model fitted with feature names" in errors[0]


def test_numeric_ndarray_passes_through_unchanged():
    arr = np.arange(12, dtype=np.int32).reshape(4, 3)
    x, errors = to_matrix(arr, 3, None)
    assert x.dtype == np.float64 and errors == {}
    np.testing.assert_array_equal(x, arr)


@pytest.mark.parametrize(
    "rows, message",
    [
        (np.zeros(3), "use x.reshape"),
        (np.zeros((2, 4)), "rows have 4 columns but m expects 3 features"),
        ("1,2,3", "got str"),
        (42, "got int"),
    ],
)
def test_unreadable_submissions_raise(rows, message):
    with pytest.raises(InvalidInput, match=message):
        to_matrix(rows, 3, None, "m")
