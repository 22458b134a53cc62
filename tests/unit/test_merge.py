"""Dynamic batching's pure steps: merging messages and cutting the result back per message."""

import numpy as np
import pytest
from inferq.common.contract import Batch
from inferq.models.artifacts import inspect_estimator
from inferq.workers.inference import ModelInfo, score_batch
from inferq.workers.merge import merge_batches, split_scored
from sklearn.linear_model import LogisticRegression


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    est = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    return est, ModelInfo.of("m", 1, est, inspect_estimator(est))


def _piece(rows, offset=0, keys=None, errors=None):
    x = np.asarray(rows, dtype=float)
    return Batch("m", 1, [f"j{offset}-{i}-{x[i, 0]}" for i in range(len(x))], x, keys=keys,
                 row_errors=errors or {}, row_offset=offset)  # fmt: skip


def test_merge_keeps_order_keys_errors_and_each_callers_row_numbers():
    p1 = _piece([[1, 2, 3]], offset=5, keys=["k1"])
    p2 = _piece([[4, 5, 6], [7, 8, 9]], errors={1: "row 1: feature 'f' is text"})
    p2.submitted_at = p1.submitted_at - 10
    merged = merge_batches([p1, p2])
    assert merged.job_ids == p1.job_ids + p2.job_ids
    assert merged.x.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert merged.keys == ["k1", None, None]
    assert merged.row_errors == {2: "row 1: feature 'f' is text"}
    assert [merged.row_number(i) for i in range(3)] == [5, 0, 1]
    assert merged.submitted_at == p2.submitted_at
    assert merged.batch_id not in {p1.batch_id, p2.batch_id}
    with pytest.raises(ValueError, match="one model version with the same columns"):
        merge_batches([p1, _piece([[1, 2]])])


def test_one_call_on_the_merge_equals_scoring_each_message_alone(model):
    est, info = model
    rng = np.random.default_rng(1)
    pieces = [_piece(rng.normal(size=(n, 3)), offset=o) for n, o in ((1, 0), (3, 7), (2, 0))]
    pieces[1].x[2, 1] = np.nan  # the caller's row 9
    parts = split_scored(score_batch(est, info, merge_batches(pieces)), pieces)
    for piece, part in zip(pieces, parts, strict=True):
        alone = score_batch(est, info, piece)
        assert part.batch is piece
        assert part.ok.tolist() == alone.ok.tolist() and part.errors == alone.errors
        assert part.label == alone.label
        np.testing.assert_array_equal(part.scores, alone.scores)
        np.testing.assert_array_equal(part.proba, alone.proba)
    assert parts[1].errors == {
        2: "row 9: column 1 is missing, and m@1 does not accept missing values there"
    }
