"""Pure parts of bulk runs: exact re-chunking, deterministic ids, column rules, CSV cells."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from inferq.common.errors import InvalidInput, MissingColumns
from inferq.models.registry import ModelVersion
from inferq.producer.bulk import BulkScorer
from inferq.producer.runs import job_id_for, job_ids_for, run_token
from inferq.producer.sources import CsvSource, open_source, rechunk


def _frames(sizes):
    start = 0
    for n in sizes:
        yield pd.DataFrame({"i": range(start, start + n)})
        start += n


@pytest.mark.parametrize("sizes", [[10, 10, 10], [3, 7, 1, 30, 2], [25], [1] * 23, [0, 12, 0]])
def test_rechunk_gives_exact_chunks_whatever_the_read_blocks(sizes):
    pieces = list(rechunk(_frames(sizes), 5))
    total = sum(sizes)
    assert [len(p) for p in pieces] == [5] * (total // 5) + ([total % 5] if total % 5 else [])
    assert np.concatenate([p.i.to_numpy() for p in pieces]).tolist() == list(range(total))


def test_job_ids_are_deterministic_per_run_and_row_id():
    assert job_id_for("run1", "c1") == job_id_for("run1", "c1")
    assert job_id_for("run1", "c1") != job_id_for("run2", "c1")
    assert job_id_for("run1", "c1") != job_id_for("run1", "c2")
    assert job_id_for("run1", "c1") == run_token("run1") + ":c1"  # readable
    ids = job_ids_for("run1", ["a", None, "x" * 500, "x" * 501, None], first_row=10)
    assert len(set(ids)) == 5 and ids[1] == run_token("run1") + "#11"
    assert all(len(i) <= 217 for i in ids)  # long ids are hashed
    # A real id can never collide with the id of a row whose id is missing.
    assert job_id_for("run1", "#11") != ids[1]


def _mv(names, n=3):
    return ModelVersion(
        name="m", version=1, sha256="x", sklearn_version="1", task="classifier",
        estimator="E", classes=["0", "1"], n_features=n, feature_names=names,
        has_proba=True, artifact="a", size_bytes=1, created_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip


def test_feature_columns_by_name_or_by_position():
    cols = ["id", "c", "b", "a", "extra"]
    assert BulkScorer._feature_columns(_mv(["a", "b", "c"]), cols, "id") == ["a", "b", "c"]
    with pytest.raises(MissingColumns, match="needs: z"):
        BulkScorer._feature_columns(_mv(["a", "z", "c"]), cols, "id")
    with pytest.raises(InvalidInput, match="id column 'key' is not in the input"):
        BulkScorer._feature_columns(_mv(["a"]), cols, "key")
    assert BulkScorer._feature_columns(_mv(None, 4), cols, "id") == ["c", "b", "a", "extra"]
    with pytest.raises(InvalidInput, match="needs 3, the input has 4"):
        BulkScorer._feature_columns(_mv(None, 3), cols, "id")


def test_csv_cells_are_numbers_unless_they_are_text(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("id,a,b\n007,1.5,2\n008,oops,3\n009,,4\n")
    (frame,) = CsvSource(path).chunks(10, ["id", "a", "b"], "id")
    assert frame.id.tolist() == ["007", "008", "009"]  # ids keep leading zeros
    assert frame.a.tolist()[0] == 1.5 and frame.a.tolist()[1] == "oops"
    assert np.isnan(frame.a.tolist()[2]) and frame.b.dtype.kind == "i"


def test_source_selection_errors():
    with pytest.raises(InvalidInput, match="exactly one of --input"):
        open_source(None, None, None, "sqlite://")
    with pytest.raises(InvalidInput, match="must be a SELECT"):
        open_source(None, "DELETE FROM predictions", None, "sqlite://")


def test_parquet_reading_memory_does_not_grow_with_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from inferq.producer.sources import ParquetSource

    path = tmp_path / "many-groups.parquet"
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("x", pa.float64())])) as w:
        for g in range(40):
            w.write_table(pa.table({"id": [f"r{g}-{i}" for i in range(5000)],
                                    "x": rng.normal(size=5000)}))  # fmt: skip
    allocated = []
    for frame in ParquetSource(path).chunks(5000, ["id", "x"], "id"):
        assert len(frame) == 5000
        allocated.append(pa.total_allocated_bytes())
    # Arrow memory is bounded by about one row group, not by the file (40 row groups).
    assert max(allocated) < path.stat().st_size / 3
