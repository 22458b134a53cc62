"""Pure helpers of dynamic batching: merge small messages into one batch, split the results.

The merged batch is scored with one model call; each message still gets its own result rows,
ledger row and acknowledgement, so merging is invisible in `predictions` except for the
shared model time (`predict_ms` is the merged call's time for each message).
"""

from __future__ import annotations

import numpy as np
from inferq.common.contract import Batch, new_id
from inferq.workers.inference import ScoredBatch


def merge_batches(pieces: list[Batch]) -> Batch:
    """One batch holding every row of ``pieces`` (same model, version and width), in order."""
    first = pieces[0]
    if any((p.model, p.version, p.x.shape[1]) != (first.model, first.version, first.x.shape[1])
           for p in pieces):  # fmt: skip
        raise ValueError("only messages for one model version and width can be merged")
    keys: list[str | None] | None = None
    if any(p.keys is not None for p in pieces):
        keys = [k for p in pieces for k in (p.keys or [None] * p.n_rows)]
    row_errors: dict[int, str] = {}
    numbers: list[int] = []
    start = 0
    for p in pieces:
        row_errors.update({start + i: m for i, m in p.row_errors.items()})
        numbers.extend(p.row_number(i) for i in range(p.n_rows))
        start += p.n_rows
    return Batch(
        model=first.model,
        version=first.version,
        job_ids=[j for p in pieces for j in p.job_ids],
        x=np.concatenate([p.x for p in pieces]) if len(pieces) > 1 else first.x,
        keys=keys,
        row_errors=row_errors,
        batch_id=new_id(),
        submitted_at=min(p.submitted_at for p in pieces),
        row_numbers=numbers,
    )


def split_scored(scored: ScoredBatch, pieces: list[Batch]) -> list[ScoredBatch]:
    """The merged result cut back into one ScoredBatch per original message."""
    out = []
    start = 0
    for p in pieces:
        stop = start + p.n_rows
        out.append(
            ScoredBatch(
                batch=p,
                model_name=scored.model_name,
                model_version=scored.model_version,
                ok=scored.ok[start:stop],
                errors={i - start: m for i, m in scored.errors.items() if start <= i < stop},
                labels=None if scored.labels is None else scored.labels[start:stop],
                scores=None if scored.scores is None else scored.scores[start:stop],
                proba=None if scored.proba is None else scored.proba[start:stop],
                classes=scored.classes,
                predict_ms=scored.predict_ms,
            )
        )
        start = stop
    return out
