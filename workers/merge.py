"""Pure helpers of dynamic batching: merge small messages into one batch, split the results.

The merged batch is scored with one model call; each message still gets its own result rows,
ledger row and acknowledgement, so merging is invisible in `predictions` except for the
shared model time (`predict_ms` is the merged call's time for each message).
"""

from __future__ import annotations

from inferq.common.contract import Batch, new_id
from inferq.common.rows.merge import merge
from inferq.workers.inference import ScoredBatch


def merge_batches(pieces: list[Batch]) -> Batch:
    """One batch holding every row of ``pieces`` (same model version and columns), in order:
    the one merge of common/rows/merge.py, always under a new batch id."""
    return merge(pieces, batch_id=new_id())


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
                runtime=scored.runtime,
                # The shadow's rows carry their own job ids: written once, with the first part.
                shadow=scored.shadow if start == 0 else None,
                monitor=scored.monitor if start == 0 else None,  # counts of the whole group
            )
        )
        start = stop
    return out
