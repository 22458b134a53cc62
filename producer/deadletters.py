"""Dead letters: list the batches workers took out of circulation, and send them again.

A batch is dead-lettered when its worker process died on it `INFERQ_MAX_DELIVERIES` times
(its jobs were answered with error rows), when its results could not be written for a
non-transient reason (its jobs may have no row yet), or when its job ids were unreadable.
The payload is kept whole, so the rows are never lost: `replay` publishes it again once the
cause is fixed, with the same job ids; a batch already answered with error rows is sent as a
rescore (new batch id), whose results replace those error rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import msgpack
from inferq.common import contract
from inferq.common.errors import ContractError
from inferq.common.schema import dead_letters, prediction_batches
from sqlalchemy import Engine, delete, select


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered batch (the payload stays in the table)."""

    batch_id: str
    run_id: str | None
    model: str | None
    version: int | None
    rows: int
    deliveries: int
    reason: str
    created_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class Replayed:
    """What `replay` did with one batch id."""

    batch_id: str
    outcome: str  # "sent" | "unreadable" | "not found"
    detail: str = ""


def list_dead_letters(engine: Engine, limit: int = 100) -> list[DeadLetter]:
    """Most recent dead letters first."""
    t = dead_letters.c
    query = select(
        t.batch_id, t.run_id, t.model_name, t.model_version, t.n_rows, t.deliveries, t.reason,
        t.created_at,
    ).order_by(t.created_at.desc()).limit(limit)  # fmt: skip
    with engine.connect() as conn:
        return [DeadLetter(*row) for row in conn.execute(query).all()]


def replay(client: Any, batch_ids: list[str] | None) -> list[Replayed]:
    """Publish dead-lettered batches again (all of them when ``batch_ids`` is None).

    Each one is removed from `dead_letters` once the broker took it; if it fails again
    it comes back. A batch whose jobs were already answered with error rows (its worker
    died on it) is sent as a rescore: the new results replace those error rows.
    """
    engine = client.engine
    settings = client.settings
    t = dead_letters.c
    query = select(t.batch_id, t.run_id, t.payload)
    if batch_ids is not None:
        query = query.where(t.batch_id.in_(batch_ids))
    with engine.connect() as conn:
        found = {row.batch_id: row for row in conn.execute(query).all()}
        answered = set(
            conn.scalars(
                select(prediction_batches.c.batch_id).where(
                    prediction_batches.c.batch_id.in_(list(found))
                )
            )
        )
    out = [Replayed(b, "not found") for b in batch_ids or [] if b not in found]
    for batch_id, row in found.items():
        try:
            batch = contract.decode_batch(msgpack.unpackb(row.payload, raw=False))
        except (ContractError, ValueError) as exc:
            out.append(Replayed(batch_id, "unreadable", str(exc)))
            continue
        detail = f"{batch.n_rows} rows"
        if batch_id in answered:
            # Its jobs got error rows ("dead-lettered: ..."): send it as a rescore under a new
            # batch id, so the new results replace those error rows (one row per job).
            batch.batch_id = f"{batch_id}~replay-{contract.new_id()[:8]}"
            batch.rescore = True
            detail += ", replacing their error rows"
        queue = settings.bulk_queue if row.run_id else settings.online_queue
        client.publish([batch], queue=queue)  # raises EnqueueError: the letter stays
        with engine.begin() as conn:
            conn.execute(delete(dead_letters).where(t.batch_id == batch_id))
        out.append(Replayed(batch_id, "sent", f"{detail} to {queue}"))
    return out
