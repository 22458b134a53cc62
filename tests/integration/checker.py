"""Lost / duplicated / unexpected checker (after Jepsen's RabbitMQ queue checker).

After a fault scenario, compare the job ids the producer reported as accepted with the rows
in `predictions`: lost = accepted but no row; duplicated = more than one row for a job id
(the primary key should make this impossible: the checker counts instead of trusting it);
unexpected = rows for job ids nobody accepted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, text


@dataclass(frozen=True)
class Counts:
    """What a scenario ended with."""

    accepted: int
    rows: int
    lost: int
    duplicated: int
    unexpected: int

    @property
    def clean(self) -> bool:
        """True when every accepted job has exactly one row and nothing else is there."""
        return self.lost == self.duplicated == self.unexpected == 0


def check(engine: Engine, accepted: Iterable[str]) -> Counts:
    """Count lost, duplicated and unexpected rows in this (per-test) database."""
    ids = set(accepted)
    with engine.connect() as conn:
        per_job = dict(
            conn.execute(text("SELECT job_id, count(*) FROM predictions GROUP BY 1")).all()
        )
    counts = Counts(
        accepted=len(ids),
        rows=sum(per_job.values()),
        lost=len(ids - per_job.keys()),
        duplicated=sum(n - 1 for n in per_job.values() if n > 1),
        unexpected=len(per_job.keys() - ids),
    )
    print(f"checker: {counts}")  # shown with -s and in the CI log of a failing run
    return counts


def committed_batches(engine: Engine) -> int:
    """Messages whose results are committed (rows of the `prediction_batches` ledger)."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM prediction_batches")).scalar() or 0


def wait_for_batches(engine: Engine, n: int, timeout: float = 60) -> int:
    """Poll until at least ``n`` messages are committed (or timeout); returns the count."""
    deadline = time.monotonic() + timeout
    while (done := committed_batches(engine)) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return done


def wait_until_clean(engine: Engine, accepted: list[str], timeout: float) -> tuple[Counts, float]:
    """Poll until nothing is lost (or timeout); returns the final counts and seconds waited."""
    started = time.monotonic()
    counts = check(engine, accepted)
    while counts.lost and time.monotonic() - started < timeout:
        time.sleep(0.5)
        counts = check(engine, accepted)
    return counts, time.monotonic() - started
