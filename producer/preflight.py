"""Checks a bulk run makes before it enqueues anything: duplicate ids, and whole columns of
the wrong type. Both refuse the run with the rows or the column named (README "Nightly bulk
scoring"); nothing is sent, no run is recorded.

Duplicate ids: each row's job id is ``<run token>:<id>``, so two rows with one id would be
one job, and one of them would silently get no result. The id column is read once more
(only that column where the source allows it) and hashed to 8 bytes per row: 80 MB for 10
million rows, whatever the ids' length. Equal hashes are then checked on the ids themselves,
so a hash collision never refuses a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from inferq.common.errors import InvalidInput
from inferq.common.rows.coerce import whole_column_problem

#: Rows read per block by the duplicate-id pass.
ID_BLOCK_ROWS = 200_000
#: Duplicates named in the error message (the count says how many more there are).
SHOWN = 5


class DuplicateIds(InvalidInput):
    """Two or more input rows share an id: refused before anything is enqueued."""


class WrongColumnType(InvalidInput):
    """A feature column holds no value of the feature's kind: refused before enqueueing."""


@dataclass(frozen=True, slots=True)
class Duplicate:
    """One id found on several rows (row numbers from 0, as in error rows)."""

    id: str
    count: int
    rows: list[int]  # empty when the source cannot number its rows (SQL: ordered by id)


def _ids(source: Any, id_column: str) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row number, ids as text, positions of the present ones) per input block."""
    first = 0
    for frame in source.chunks(ID_BLOCK_ROWS, [id_column], id_column):
        ids = frame[id_column]
        values = np.array(ids.to_numpy(dtype=object), dtype=object)  # a writable copy
        present = np.flatnonzero(ids.notna().to_numpy())
        if not pd.api.types.is_string_dtype(ids):  # e.g. integer ids: as the job ids say them
            values[present] = [str(v) for v in values[present].tolist()]
        yield first, values, present
        first += len(frame)


def _hashes(values: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(values, categorize=False)


def find_duplicate_ids(source: Any, id_column: str) -> tuple[list[Duplicate], int]:
    """(the first SHOWN duplicated ids with their rows, how many ids are duplicated)."""
    if hasattr(source, "duplicate_ids"):  # SQL: the database groups them
        found, total = source.duplicate_ids(id_column, SHOWN)
        return [Duplicate(str(k), int(n), []) for k, n in found], total
    hashes = [_hashes(values[present]) for _, values, present in _ids(source, id_column)]
    if not hashes:
        return [], 0
    ordered = np.sort(np.concatenate(hashes))
    del hashes
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if repeated.size == 0:
        return [], 0
    # Second pass, only when some hash repeats: the ids and rows behind those hashes.
    rows: dict[str, list[int]] = {}
    for first, values, present in _ids(source, id_column):
        hit = present[np.isin(_hashes(values[present]), repeated)]
        for i in hit.tolist():
            rows.setdefault(values[i], []).append(first + i)
    found = [Duplicate(k, len(v), v) for k, v in rows.items() if len(v) > 1]
    found.sort(key=lambda d: d.rows[0])
    return found[:SHOWN], len(found)


def check_unique_ids(source: Any, id_column: str) -> None:
    """Raise DuplicateIds naming the repeated ids and their rows, if any."""
    shown, total = find_duplicate_ids(source, id_column)
    if not total:
        return
    listed = "; ".join(
        f"{d.id!r} on {d.count:,} rows"
        if not d.rows
        else f"{d.id!r} at rows {', '.join(f'{r:,}' for r in d.rows[:6])}"
        + (f" and {len(d.rows) - 6:,} more" if len(d.rows) > 6 else "")
        for d in shown
    )
    more = f" (and {total - len(shown):,} more ids)" if total > len(shown) else ""
    raise DuplicateIds(
        f"{total:,} id(s) in column {id_column!r} appear on more than one row: {listed}{more}. "
        "Each row needs its own id (it names the row's result); nothing was enqueued. "
        "Remove the repeated rows, or pick a unique --id-column."
    )


#: Rows of the input's first block whose columns are checked for their type.
FIRST_BLOCK_ROWS = 50_000


def check_input(source: Any, mv: Any, id_column: str, features: list[str],
                check_ids: bool = True) -> None:  # fmt: skip
    """Every check a new run makes before it is recorded or sends anything."""
    schema = mv.schema
    kinds = [f.kind for f in schema.features]
    if len(kinds) == len(features):
        text = [features[j] for j in schema.text_positions]
        frames = source.chunks(FIRST_BLOCK_ROWS, [id_column, *features], id_column, text)
        try:
            first = next(iter(frames), None)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # stop reading: a CSV reader or a server-side cursor
        if first is not None:
            check_column_types(first, features, kinds, mv.ref)
    if check_ids:
        check_unique_ids(source, id_column)


def check_column_types(frame: pd.DataFrame, columns: list[str], kinds: list[str],
                       model: str) -> None:  # fmt: skip
    """Raise WrongColumnType when a feature column of the input's first block holds no value
    the feature's kind takes (a column of text for a number feature, say). A column with
    some good values is not refused: its bad values become those rows' errors."""
    problems = []
    for column, kind in zip(columns, kinds, strict=True):
        problem = whole_column_problem(frame[column], kind)
        if problem:
            problems.append(f"column {column!r} {problem}")
    if problems:
        raise WrongColumnType(
            f"{'; '.join(problems)} — in all of the first {len(frame):,} rows, so the run "
            f"would be all error rows. Nothing was enqueued: fix the column(s), or check them "
            f"against `inferq models show {model}`."
        )


__all__ = [
    "Duplicate", "DuplicateIds", "WrongColumnType", "check_column_types", "check_input",
    "check_unique_ids", "find_duplicate_ids",
]  # fmt: skip
