"""Score a sample (a reference file's rows) through the worker's own path.

The validation gate (models/checks.py) and the ONNX parity gate (models/optimize.py) must
see exactly what a worker would produce for these rows: the same coercion
(common/rows/coerce.py), the same model input (common/rows/model_input.py) and the same
output mapping (workers/inference.py). This module is that path, without queue or database.
"""

from __future__ import annotations

from typing import Any

from inferq.common.contract import Batch
from inferq.common.rows.coerce import to_columns
from inferq.common.rows.schema import InputSchema


def sample_batch(frame: Any, schema: InputSchema, name: str = "sample", version: int = 0) -> Batch:
    """The rows of ``frame`` (model features in training order) as one score message would
    carry them; rows that would be refused at submission become row errors, as in a message."""
    cols = to_columns(frame, schema, name)
    n = cols.n_rows
    text_positions = schema.text_positions if cols.text is not None else ()
    return Batch(
        model=name,
        version=version,
        job_ids=[f"sample-{i}" for i in range(n)],
        x=cols.x,
        row_errors=dict(cols.errors),
        text=cols.text,
        text_positions=tuple(text_positions),
        width=schema.width if cols.text is not None else None,
    )


def score_sample(model: Any, info: Any, frame: Any) -> Any:
    """ScoredBatch of ``model`` (an estimator, or anything with its predict methods) on
    ``frame``; ``info`` is a workers.inference.ModelInfo."""
    from inferq.workers.inference import score_batch

    return score_batch(model, info, sample_batch(frame, info.schema, info.name, info.version))
