"""Scoring again what was answered wrongly: error rows that were not the data's fault.

Before 0.2 a worker that could not load a model (wrong model store, missing module...)
answered every job with an error row, and a crash or a time limit still does (dead letters).
Those rows say nothing about the data, so `inferq score --run-id R --rescore-errors` sends
the chunks holding them again, whole, as *rescore* messages: the worker replaces error rows
with the new result and leaves ok rows alone, so there is still exactly one row per job.

Each pass uses new batch ids (``<run>.<chunk>~<tag>``), so a pass is idempotent under
redelivery while a later pass can still replace what an earlier one could not.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from inferq.common import contract
from inferq.common.errors import InvalidInput
from inferq.common.schema import prediction_batches, predictions
from inferq.producer.bulk import PUBLISH_GROUP, BulkScorer, Run
from inferq.producer.runs import FINAL, RunFailed, RunProgress, run_rows
from sqlalchemy import func, or_, select


def rescorable_filter() -> object:
    """SQL condition: an error row that was not the data's fault — by its code, or, for rows
    written before error codes, by its message (contract.RESCORABLE_ERRORS)."""
    c = predictions.c
    legacy = c.error_code.is_(None) & or_(*(c.error.like(p) for p in contract.RESCORABLE_ERRORS))
    return (c.status == "error") & or_(c.error_code.in_(contract.RESCORABLE_CODES), legacy)


def chunk_of(run_id: str, batch_id: str) -> int | None:
    """The chunk number of a run's batch id (``<run>.<k>`` or a rescore's ``<run>.<k>~<tag>``)."""
    prefix = f"{run_id}."
    if not batch_id.startswith(prefix):
        return None
    head = batch_id[len(prefix) :].split("~", 1)[0]
    return int(head) if head.isdigit() else None


def rescorable_chunks(scorer: BulkScorer, run_id: str) -> dict[int, int]:
    """Chunk number -> how many of its rows have an error that was not the data's fault."""
    query = (
        select(predictions.c.batch_id, func.count())
        .where(run_rows(run_id), rescorable_filter())  # type: ignore[arg-type]
        .group_by(predictions.c.batch_id)
    )
    out: dict[int, int] = {}
    with scorer.engine.connect() as conn:
        for batch_id, n in conn.execute(query):
            chunk = chunk_of(run_id, batch_id)
            if chunk is not None:
                out[chunk] = out.get(chunk, 0) + n
    return out


def send_rescore(scorer: BulkScorer, run: Run, chunks: set[int]) -> list[str]:
    """Send the given chunks again as rescore messages; returns their batch ids."""
    if scorer.progress(run.run_id).status not in FINAL:
        raise InvalidInput(
            f"run {run.run_id} is still running: let it finish (or resume it) before "
            "--rescore-errors"
        )
    tag = uuid.uuid4().hex[:8]
    pending: list[contract.Batch] = []
    sent: list[str] = []
    for chunk_no, first_row, piece in scorer.pieces(run):
        if chunk_no in chunks:
            batch = scorer.build_chunk(run, piece, chunk_no, first_row)
            batch.batch_id = f"{batch.batch_id}~{tag}"
            batch.rescore = True
            pending.append(batch)
        if len(pending) >= PUBLISH_GROUP:
            scorer.client.publish(pending, queue=scorer.client.settings.bulk_queue, batched=True)
            sent += [b.batch_id for b in pending]
            pending = []
    if pending:
        scorer.client.publish(pending, queue=scorer.client.settings.bulk_queue, batched=True)
        sent += [b.batch_id for b in pending]
    return sent


def wait_rescored(
    scorer: BulkScorer,
    run_id: str,
    batch_ids: list[str],
    *,
    timeout: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    poll: float = 0.5,
) -> RunProgress:
    """Wait until every rescore message committed, then recount the run from `predictions`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    remaining = set(batch_ids)
    while remaining:
        left = list(remaining)
        with scorer.engine.connect() as conn:
            for start in range(0, len(left), 1000):  # bounded IN lists, every id each poll
                remaining -= set(
                    conn.scalars(
                        select(prediction_batches.c.batch_id).where(
                            prediction_batches.c.batch_id.in_(left[start : start + 1000])
                        )
                    )
                )
        if on_progress:
            on_progress(len(batch_ids) - len(remaining), len(batch_ids))
        if not remaining:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise RunFailed(
                f"{len(remaining)} of {len(batch_ids)} rescore messages of run {run_id} not "
                f"committed after {timeout:g}s; they keep running on the workers"
            )
        time.sleep(poll)
    return scorer.refinalise(run_id)
