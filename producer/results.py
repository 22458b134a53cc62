"""Reading results back from `predictions`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from inferq.common.failures import translated
from inferq.common.schema import model_versions, predictions
from sqlalchemy import Engine, and_, select

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


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value  # some drivers give text


def binary_probabilities(classes: Any, score: float) -> dict[str, float]:
    """A binary classifier's probabilities from its score, P(classes[1]) (the row stores no
    `probabilities`: workers/results.py)."""
    c0, c1 = _json(classes)
    return {c0: 1.0 - score, c1: score}


def row_to_result(row: Any) -> Result:
    """Map a `predictions` row (with the version's ``classes`` and ``has_proba``, when
    selected, to fill in a binary classifier's probabilities) to a Result."""
    m = row._mapping
    probs = _json(m["probabilities"])
    if (
        probs is None
        and m["status"] == "ok"
        and m["score"] is not None
        and m.get("has_proba")
        and len(_json(m.get("classes")) or ()) == 2
    ):
        probs = binary_probabilities(m["classes"], m["score"])
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


def with_classes() -> Any:
    """SELECT of `predictions` rows with what row_to_result needs of their model version."""
    mv = model_versions
    return select(predictions, mv.c.classes, mv.c.has_proba).outerjoin(
        mv, and_(mv.c.name == predictions.c.model_name, mv.c.version == predictions.c.model_version)
    )


def fetch_results(engine: Engine, job_ids: Sequence[str]) -> dict[str, Result]:
    """Results of the given job ids that exist now, keyed by job id (inferq errors only)."""
    out: dict[str, Result] = {}
    ids = list(job_ids)
    with translated(database_url=str(engine.url)), engine.connect() as conn:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            for row in conn.execute(with_classes().where(predictions.c.job_id.in_(chunk))):
                out[row.job_id] = row_to_result(row)
    return out
