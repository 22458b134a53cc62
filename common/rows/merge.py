"""One merge for typed batches: the client's coalescer and the worker's dynamic batcher.

Several messages (or submit calls) for one model version become one batch with every row in
order: the float block and each text column concatenated, keys, per-row errors re-indexed,
and each row's caller-visible row number kept (``row_numbers``, which travels on the wire
when it is not simply ``row_offset + i``), so an error row always names the row its caller
knows, however messages were merged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from inferq.common.contract import Batch, new_id


def layout(batch: Batch) -> tuple[str, int, int, tuple[int, ...], int, bool]:
    """What must be equal for two batches to merge: model, version, columns, rescore flag."""
    return (batch.model, batch.version, int(batch.x.shape[1]), batch.text_positions,
            batch.n_features, batch.rescore)  # fmt: skip


def merge(pieces: Sequence[Batch], batch_id: str | None = None) -> Batch:
    """One batch holding every row of ``pieces`` in order (a lone piece is returned as is)."""
    if len(pieces) == 1 and batch_id is None:
        return pieces[0]
    first = pieces[0]
    if any(layout(p) != layout(first) for p in pieces):
        raise ValueError("only batches for one model version with the same columns can merge")
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
    text = None
    if first.text is not None:
        text = [[v for p in pieces for v in (p.text or [])[k]] for k in range(len(first.text))]
    return Batch(
        model=first.model,
        version=first.version,
        job_ids=[j for p in pieces for j in p.job_ids],
        x=np.concatenate([p.x for p in pieces]) if len(pieces) > 1 else first.x,
        keys=keys,
        row_errors=row_errors,
        batch_id=batch_id or new_id(),
        run_id=first.run_id if all(p.run_id == first.run_id for p in pieces) else None,
        submitted_at=min(p.submitted_at for p in pieces),
        row_numbers=numbers,
        text=text,
        text_positions=first.text_positions,
        width=first.width,
        rescore=first.rescore,
        day=first.day if all(p.day == first.day for p in pieces) else None,
        ids_given=any(p.ids_given for p in pieces),
    )
