"""The COPY text payload of result rows: built column-wise, escaped once, exact floats.

One string per row from pre-formatted columns (no per-row tuple, dict or json.dumps), which
keeps the writer (workers/results.py) near COPY speed; shadow rows (workers/shadow.py) reuse
the same column formatters.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
from inferq.common.contract import code_of
from inferq.workers.inference import ScoredBatch

COLUMNS = (
    "job_id", "run_id", "key", "model_name", "model_version", "status", "label", "score",
    "probabilities", "error", "submitted_at", "scored_at", "worker", "batch_id", "error_code",
    "runtime", "day",
)  # fmt: skip
_COPY_SQL = f"COPY {{table}} ({', '.join(COLUMNS)}) FROM STDIN"
NULL = "\\N"
_SPECIAL = ("\\", "\t", "\n", "\r", "\x00")


def esc(value: str) -> str:
    """Escape one value for COPY's text format."""
    if any(ch in value for ch in _SPECIAL):
        # NOTE: Postgres text cannot hold NUL: it becomes U+FFFD instead of failing the batch.
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\x00", "\ufffd")
        )
    return value


def text_column(values: list[str | None]) -> list[str]:
    """COPY-escape a column of text; one scan of the joined column decides if any work is due."""
    try:
        joined = "".join(values)  # type: ignore[arg-type]
    except TypeError:  # some values are None
        joined = "".join(v for v in values if v is not None)
        if any(ch in joined for ch in _SPECIAL):
            return [NULL if v is None else esc(v) for v in values]
        return [NULL if v is None else v for v in values]
    if any(ch in joined for ch in _SPECIAL):
        return [esc(v) for v in values]  # type: ignore[arg-type]
    return values  # type: ignore[return-value]


def _float_column(values: Any) -> list[str]:
    # NOTE: repr() is the shortest text that reads back as the same double: scores and
    # probabilities round-trip bit-exactly. NaN (no score) becomes NULL.
    return [NULL if v != v else repr(v) for v in values.tolist()]


def _null_where_not_ok(column: list[str], ok: Any) -> list[str]:
    return [v if good else NULL for v, good in zip(column, ok.tolist(), strict=True)]


def proba_and_score_columns(scored: ScoredBatch) -> tuple[list[str], list[str]]:
    """(probabilities as JSON text, score) columns.

    A binary classifier whose score is P(classes_[1]) stores no probabilities: the other one
    is 1 - score (the `predictions_full` view and the client's Result fill it in), which
    saves Postgres a jsonb parse and ~60 bytes per row.
    """
    n = len(scored.ok)

    def formatted_scores() -> list[str]:
        return _float_column(scored.scores) if scored.scores is not None else [NULL] * n

    if scored.proba is None or scored.classes is None:
        return [NULL] * n, formatted_scores()
    keys = [json.dumps(c) for c in scored.classes]
    if (
        len(keys) == 2
        and scored.scores is not None
        and np.array_equal(scored.scores, scored.proba[:, 1], equal_nan=True)
    ):
        return [NULL] * n, formatted_scores()  # error rows' NaN scores become NULL
    docs = ["{" + ", ".join(f"{k}: {v!r}" for k, v in zip(keys, row, strict=True)) + "}"
            for row in scored.proba.tolist()]  # fmt: skip
    scores = formatted_scores()
    if any("\\" in k for k in keys):
        docs = [esc(d) for d in docs]
    if scored.n_ok < n:  # error rows carry NaN placeholders: NULL them
        docs, scores = _null_where_not_ok(docs, scored.ok), _null_where_not_ok(scores, scored.ok)
    return docs, scores


def copy_payload(
    scored: ScoredBatch, worker: str, now: dt.datetime, days: list[str] | None = None
) -> str:
    """The batch's rows in COPY text format, in COLUMNS order; ``days`` overrides the batch's
    partition day row by row (rows whose job id already lives on another day)."""
    b = scored.batch
    n = b.n_rows
    ids = text_column(list(b.job_ids))
    keys = text_column(b.keys) if b.keys is not None else [NULL] * n
    all_ok = scored.n_ok == n
    status = ["ok"] * n if all_ok else ["ok" if v else "error" for v in scored.ok.tolist()]
    if scored.labels is None:
        labels = [NULL] * n
    else:
        labels = text_column(scored.labels if all_ok else scored.label)
    probs, scores = proba_and_score_columns(scored)
    if scored.errors:
        messages = [scored.errors.get(i) for i in range(n)]
        errors = text_column(messages)
        codes = [NULL if m is None else str(code_of(m)) for m in messages]
    else:
        errors = codes = [NULL] * n
    submitted = dt.datetime.fromtimestamp(b.submitted_at, dt.UTC).isoformat()
    run = esc(b.run_id) if b.run_id else NULL
    middle = f"\t{esc(scored.model_name)}\t{scored.model_version}\t"
    tail = f"\t{submitted}\t{now.isoformat()}\t{esc(worker)}\t{esc(b.batch_id)}\t"
    end = f"\t{scored.runtime or NULL}\t"
    if days is None:
        end += f"{b.partition_day.isoformat()}\n"
        return "".join(
            f"{i}\t{run}\t{k}{middle}{st}\t{lb}\t{sc}\t{pr}\t{er}{tail}{cd}{end}"
            for i, k, st, lb, sc, pr, er, cd in zip(
                ids, keys, status, labels, scores, probs, errors, codes, strict=True
            )
        )
    return "".join(
        f"{i}\t{run}\t{k}{middle}{st}\t{lb}\t{sc}\t{pr}\t{er}{tail}{cd}{end}{d}\n"
        for i, k, st, lb, sc, pr, er, cd, d in zip(
            ids, keys, status, labels, scores, probs, errors, codes, days, strict=True
        )
    )


def copy_rows(cursor: Any, table: str, payload: str) -> None:
    """COPY a ``copy_payload`` text into ``table`` (same columns as `predictions`)."""
    with cursor.copy(_COPY_SQL.format(table=table)) as copy:
        copy.write(payload)
