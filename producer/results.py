"""Reading results back from `predictions`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from inferq.common.failures import translated
from inferq.common.schema import predictions
from sqlalchemy import Engine, select

_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Result:
    """One job's result row."""

    job_id: str
    key: str | None
    status: str  # 'ok' | 'error'
    label: str | None
    score: float | None
    probabilities: dict[str, float] | None
    error: str | None
    model_name: str
    model_version: int
    run_id: str | None = None
    batch_id: str | None = None
    worker: str | None = None
    submitted_at: dt.datetime | None = None
    scored_at: dt.datetime | None = None
    #: Machine-readable kind of an error (contract.ERROR_CODES); None for ok rows.
    error_code: str | None = None
    #: 'sklearn' | 'onnx': the runtime that scored the row (None where no model ran).
    runtime: str | None = None

    @property
    def ok(self) -> bool:
        """True when the row was scored (status 'ok')."""
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        for k in ("submitted_at", "scored_at"):
            if data[k] is not None:
                data[k] = data[k].isoformat()
        return data


def row_to_result(row: Any) -> Result:
    """Map a `predictions` row to a Result."""
    m = row._mapping
    probs = m["probabilities"]
    if isinstance(probs, str):  # some drivers hand JSON back as text
        probs = json.loads(probs)
    return Result(
        job_id=m["job_id"],
        key=m["key"],
        status=m["status"],
        label=m["label"],
        score=m["score"],
        probabilities=probs,
        error=m["error"],
        model_name=m["model_name"],
        model_version=m["model_version"],
        run_id=m["run_id"],
        batch_id=m["batch_id"],
        worker=m["worker"],
        submitted_at=m["submitted_at"],
        scored_at=m["scored_at"],
        error_code=m.get("error_code"),
        runtime=m.get("runtime"),
    )


def fetch_results(engine: Engine, job_ids: Sequence[str]) -> dict[str, Result]:
    """Results of the given job ids that exist now, keyed by job id (inferq errors only)."""
    out: dict[str, Result] = {}
    ids = list(job_ids)
    with translated(database_url=str(engine.url)), engine.connect() as conn:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            for row in conn.execute(select(predictions).where(predictions.c.job_id.in_(chunk))):
                out[row.job_id] = row_to_result(row)
    return out
