"""Checks before a bulk run enqueues anything (producer/preflight.py): repeated ids found and
named in CSV, Parquet and SQL inputs; whole columns of the wrong type."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from inferq.common.rows.coerce import whole_column_problem
from inferq.producer import preflight
from inferq.producer.preflight import (
    DuplicateIds,
    WrongColumnType,
    check_column_types,
    check_unique_ids,
    find_duplicate_ids,
)
from inferq.producer.sources import open_source


def _frame(ids: list) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "x": np.arange(len(ids), dtype=float)})


def test_repeated_ids_are_named_with_their_rows_in_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "ID_BLOCK_ROWS", 4)  # duplicates across blocks too
    ids = ["a", "007", "b", "7", "a", None, "c", None, "b", "a"]
    _frame(ids).to_csv(tmp_path / "in.csv", index=False)
    source = open_source(str(tmp_path / "in.csv"), None, None, "sqlite://")
    found, total = find_duplicate_ids(source, "id")
    assert total == 2  # "007" and "7" differ as text; missing ids are not duplicates
    assert [(d.id, d.rows) for d in found] == [("a", [0, 4, 9]), ("b", [2, 8])]
    with pytest.raises(DuplicateIds) as caught:
        check_unique_ids(source, "id")
    message = str(caught.value)
    assert "2 id(s) in column 'id' appear on more than one row" in message
    assert "'a' at rows 0, 4, 9; 'b' at rows 2, 8" in message
    assert "nothing was enqueued" in message


def test_unique_ids_pass_and_only_five_duplicates_are_listed(tmp_path):
    _frame([f"r{i}" for i in range(1000)]).to_parquet(tmp_path / "ok.parquet")
    ok = open_source(str(tmp_path / "ok.parquet"), None, None, "sqlite://")
    assert find_duplicate_ids(ok, "id") == ([], 0)
    ids = np.arange(40) % 20  # integer ids, each twice
    _frame(ids.tolist()).to_parquet(tmp_path / "dup.parquet")
    dup = open_source(str(tmp_path / "dup.parquet"), None, None, "sqlite://")
    found, total = find_duplicate_ids(dup, "id")
    assert total == 20 and [d.id for d in found] == ["0", "1", "2", "3", "4"]
    assert found[0].rows == [0, 20]
    with pytest.raises(DuplicateIds, match=r"\(and 15 more ids\)"):
        check_unique_ids(dup, "id")


def test_sql_duplicates_are_grouped_by_the_database(tmp_path):
    from sqlalchemy import create_engine

    url = f"sqlite:///{tmp_path / 'src.db'}"
    engine = create_engine(url)
    _frame(["x", "y", "x", "z", "x", "y"]).to_sql("rows", engine, index=False)
    engine.dispose()
    source = open_source(None, "SELECT * FROM rows", url, url)
    found, total = find_duplicate_ids(source, "id")
    assert total == 2 and [(d.id, d.count) for d in found] == [("x", 3), ("y", 2)]
    with pytest.raises(DuplicateIds, match="'x' on 3 rows; 'y' on 2 rows"):
        check_unique_ids(source, "id")
    source.close()


@pytest.mark.parametrize(
    ("values", "kind", "problem"),
    [
        (["abc", "n.a.", None, "x"], "number", "holds text, not numbers (e.g. 'abc', 'n.a.', 'x')"),
        (["abc", "12", None], "number", None),  # one number: the others are row errors
        ([None, None], "integer", None),  # all missing: the model decides
        ([1.5, 2.25], "category", "holds fractional numbers, not categories"),
        ([1.0, 2.0], "category", None),  # integral numbers read as codes
        ([True, False], "category", "holds booleans"),
        (["yes", "no"], "boolean", "holds text, not numbers"),
        ([1, 0], "boolean", None),
    ],
)
def test_whole_column_problems(values, kind, problem):
    column = pd.Series(values)
    if all(isinstance(v, bool) for v in values):
        column = column.astype(bool)
    got = whole_column_problem(column, kind)
    assert (got is None) if problem is None else (problem in got)


def test_a_wrong_column_refuses_the_run_naming_every_bad_column():
    frame = pd.DataFrame({"age": ["old", "young"], "city": ["lyon", "paris"],
                          "spend": ["lots", "few"]})  # fmt: skip
    with pytest.raises(WrongColumnType) as caught:
        check_column_types(frame, ["age", "city", "spend"], ["integer", "category", "number"],
                           "churn@2")  # fmt: skip
    message = str(caught.value)
    assert "column 'age' holds text, not numbers" in message
    assert "column 'spend' holds text" in message and "'city'" not in message
    assert "first 2 rows" in message and "inferq models show churn@2" in message
