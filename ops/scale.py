"""`inferq scale`: how many worker processes drain the backlog within a target time.

The arithmetic (:func:`plan_processes`) is pure; :func:`measure` reads its inputs: queue depth
from Redis (:mod:`ops.metrics`) and per-process throughput from the `prediction_batches`
ledger. A ledger row belongs to the bulk queue when it has a run id (``inferq score``) and to
the online queue otherwise.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from inferq.common.schema import model_versions, prediction_batches
from inferq.common.settings import Settings
from sqlalchemy import Engine, case, func, select


@dataclass(frozen=True)
class QueueLoad:
    """What one queue holds and how fast one worker process empties it."""

    queue: str
    messages: int
    #: Measured average rows per committed message (None: nothing committed in the window).
    rows_per_message: float | None
    #: Fallback when nothing was measured: the configured message size of this queue.
    default_rows_per_message: int
    #: Rows one busy worker process scores per second (None: not measured yet).
    rows_per_process_second: float | None

    @property
    def rows(self) -> float:
        """Estimated rows waiting: messages times (measured, else configured) rows/message."""
        per = self.rows_per_message or self.default_rows_per_message
        return self.messages * per


@dataclass
class QueuePlan:
    """Per-queue share of the plan."""

    queue: str
    messages: int
    rows_estimate: float
    rows_per_message: float
    rows_per_process_second: float | None
    process_seconds: float | None
    #: KEDA `listLength` per worker process: messages one process drains in the target time.
    list_length_per_process: int | None


@dataclass
class ScalePlan:
    """Worker processes needed to drain the backlog within ``target_seconds``."""

    processes: int
    exact: bool
    target_seconds: float
    backlog_rows: float
    queues: list[QueuePlan]
    notes: list[str] = field(default_factory=list)
    current_processes: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain dict for `--json`."""
        return asdict(self)


def plan_processes(loads: list[QueueLoad], target_seconds: float) -> ScalePlan:
    """Pure arithmetic: process-seconds of work per queue, summed, divided by the target."""
    if not target_seconds > 0:
        raise ValueError(f"target seconds must be positive, got {target_seconds}")
    total_seconds, exact, notes, queues = 0.0, True, [], []
    for load in loads:
        rows = load.rows
        rate = load.rows_per_process_second if (load.rows_per_process_second or 0) > 0 else None
        seconds: float | None = 0.0
        if rows > 0 and rate is None:
            seconds, exact = None, False
            notes.append(
                f"{load.queue}: {load.messages} message(s) waiting but no throughput measured "
                "yet (nothing committed in the window); counting at least 1 process"
            )
        elif rows > 0 and rate is not None:
            seconds = rows / rate
            total_seconds += seconds
        per_message = load.rows_per_message or float(load.default_rows_per_message)
        list_length = max(1, math.floor(target_seconds * rate / per_message)) if rate else None
        queues.append(
            QueuePlan(load.queue, load.messages, rows, per_message, rate, seconds, list_length)
        )
    # 1e-9: 600 s of work in a 300 s target is 2 processes, not 3 through rounding noise.
    processes = math.ceil(total_seconds / target_seconds - 1e-9) if total_seconds > 0 else 0
    if not exact:
        processes = max(processes, 1)
    return ScalePlan(processes, exact, target_seconds, sum(q.rows_estimate for q in queues),
                     queues, notes)  # fmt: skip


@dataclass(frozen=True)
class Throughput:
    """Ledger measurements of one queue over a window."""

    batches: int
    rows: int
    busy_seconds: float

    @property
    def rows_per_message(self) -> float | None:
        """Average rows per committed message."""
        return self.rows / self.batches if self.batches else None

    @property
    def rows_per_process_second(self) -> float | None:
        """Rows per second of one busy process (rows / time between receive and commit)."""
        return self.rows / self.busy_seconds if self.busy_seconds > 0 else None


def _busy_seconds(dialect: str) -> Any:
    c = prediction_batches.c
    if dialect == "postgresql":
        return func.extract("epoch", c.committed_at - c.received_at)
    return (func.julianday(c.committed_at) - func.julianday(c.received_at)) * 86400.0


def measure_throughput(
    engine: Engine, settings: Settings, window_seconds: float, now: dt.datetime | None = None
) -> dict[str, Throughput]:
    """Per queue: batches, rows and busy seconds committed in the last ``window_seconds``."""
    c = prediction_batches.c
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=window_seconds)
    is_bulk = case((c.run_id.is_(None), 0), else_=1)
    # NOTE: filtering on the registered model names lets Postgres use the
    # (model_name, committed_at) index instead of scanning the whole ledger.
    names = select(model_versions.c.name).distinct().scalar_subquery()
    query = (
        select(
            is_bulk,
            func.count(),
            func.coalesce(func.sum(c.n_rows), 0),
            func.coalesce(func.sum(_busy_seconds(engine.dialect.name)), 0.0),
        )
        .where(c.model_name.in_(names), c.committed_at > since)
        .group_by(is_bulk)
    )
    with engine.connect() as conn:
        found = {int(b): Throughput(int(n), int(r), float(s)) for b, n, r, s in conn.execute(query)}
    empty = Throughput(0, 0, 0.0)
    return {
        settings.online_queue: found.get(0, empty),
        settings.bulk_queue: found.get(1, empty),
    }


def build_loads(
    settings: Settings, messages: dict[str, int], measured: dict[str, Throughput]
) -> list[QueueLoad]:
    """Combine queue depths and ledger measurements into the planner's inputs."""
    defaults = {settings.online_queue: settings.batch_size,
                settings.bulk_queue: settings.bulk_chunk_size}  # fmt: skip
    loads = []
    for queue, default in defaults.items():
        t = measured.get(queue, Throughput(0, 0, 0.0))
        loads.append(QueueLoad(queue, messages.get(queue, 0), t.rows_per_message, default,
                               t.rows_per_process_second))  # fmt: skip
    return loads


def current_processes(app: Any, timeout: float = 1.0) -> int | None:
    """Worker processes running now (sum of pool sizes from `inspect stats`), None if unknown."""
    try:
        stats = app.control.inspect(timeout=timeout).stats() or {}
    except Exception:  # the broker is unreachable: the plan is still useful without this
        return None
    sizes = [s.get("pool", {}).get("max-concurrency") for s in stats.values()]
    return sum(int(n) for n in sizes if isinstance(n, int)) if stats else 0
