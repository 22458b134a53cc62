"""What one row costs Postgres: the hand-written 3-column writer (the floor inferq's bulk path
is compared with), and storage + WAL per row of the results tables.

`python -m inferq.bench.writers` prints the storage/WAL figures ARCHITECTURE.md "Beyond one
Postgres" extrapolates from; `python -m inferq.bench` runs :func:`hand_written` next to
inferq's bulk run on the same Parquet file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from inferq.common.settings import Settings

#: Rows per COPY + commit of the hand-written writer (as in issue 15's measurement).
HAND_CHUNK = 5000


def hand_written(settings: Settings, model_path: Path, parquet: Path) -> dict[str, Any]:
    """The short script a data team would write instead of inferq: read the Parquet file,
    ``predict_proba`` per 5,000 rows, COPY (job id, key, score) into a plain table with no
    index or constraint, commit per chunk; one process, no queue, no lineage."""
    import joblib
    import psycopg
    import pyarrow.parquet as pq
    from inferq.bench.data import FEATURES
    from inferq.workers.preload import limit_threads

    limit_threads()
    model = joblib.load(model_path)
    url = settings.effective_database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_handwritten")
        conn.execute("CREATE TABLE bench_handwritten (job_id text, key text, score float8)")
    started = time.perf_counter()
    rows = 0
    with psycopg.connect(url) as conn:
        for record_batch in pq.ParquetFile(parquet).iter_batches(
            batch_size=HAND_CHUNK, columns=["id", *FEATURES]
        ):
            frame = record_batch.to_pandas()
            ids = frame["id"].astype(str).tolist()
            scores = model.predict_proba(frame[FEATURES].to_numpy())[:, 1].tolist()
            with conn.cursor().copy("COPY bench_handwritten FROM STDIN") as copy:
                copy.write("".join(f"{i}\t{i}\t{s!r}\n" for i, s in zip(ids, scores, strict=True)))
            conn.commit()
            rows += len(ids)
    seconds = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE bench_handwritten")
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def row_cost(settings: Settings, rows: int = 200_000, chunk: int = 10_000) -> dict[str, Any]:
    """Write ``rows`` binary-classifier rows through inferq's own writer (``write_results``,
    one message per ``chunk`` rows, one process) and measure rows/s, bytes stored per row
    (heap + indexes of `predictions` and its ledger) and WAL bytes per row."""
    import numpy as np
    from inferq.common.contract import Batch
    from inferq.common.db import make_engine
    from inferq.workers.inference import ScoredBatch
    from inferq.workers.results import write_results
    from sqlalchemy import text

    engine = make_engine(settings)
    rng = np.random.default_rng(0)
    now = time.time()

    def size() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                        "WHERE c.relkind = 'r' AND (c.relname LIKE 'predictions_p%' "
                        "OR c.relname LIKE 'prediction_batches_p%')"
                    )
                ).scalar_one()
            )

    def lsn() -> int:
        with engine.connect() as conn:
            wal = conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
            return int(wal.scalar_one())

    # One warm-up message creates the partitions and the connection.
    scored_batches = []
    for start in range(0, rows + chunk, chunk):
        n = chunk
        p1 = rng.random(n)
        ids: list[str | None] = [f"{start + i:012d}" for i in range(n)]
        batch = Batch("bench", 1, [f"0123456789abcdef:{i}" for i in ids], np.zeros((n, 1)),
                      keys=ids, run_id="bench-run", submitted_at=now,
                      day=dt.date.today().isoformat())  # fmt: skip
        scored_batches.append(
            ScoredBatch(
                batch=batch,
                model_name="bench",
                model_version=1,
                ok=np.ones(n, bool),
                errors={},
                labels=np.where(p1 > 0.5, "1", "0").tolist(),
                scores=p1,
                proba=np.column_stack([1 - p1, p1]),
                classes=["0", "1"],
            )
        )
    write_results(engine, scored_batches[0], "bench:1", received_at=now)
    size0, lsn0 = size(), lsn()
    started = time.perf_counter()
    for scored in scored_batches[1:]:
        write_results(engine, scored, "bench:1", received_at=now)
    seconds = time.perf_counter() - started
    stored, wal = size() - size0, lsn() - lsn0
    engine.dispose()
    return {
        "rows": rows,
        "rows_per_s": rows / seconds,
        "bytes_per_row": stored / rows,
        "wal_bytes_per_row": wal / rows,
        "wal_mb_per_s": wal / seconds / 1e6,
    }


def main() -> None:
    """Measure row_cost in a throwaway database and print it (``--json`` for a document)."""
    parser = argparse.ArgumentParser(prog="python -m inferq.bench.writers", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from inferq.bench.env import bench_env

    with bench_env() as settings:
        res = row_cost(settings, args.rows)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{res['rows']:,} rows through write_results: {res['rows_per_s']:,.0f} rows/s, "
            f"{res['bytes_per_row']:.0f} B/row stored, {res['wal_bytes_per_row']:.0f} B/row of "
            f"WAL ({res['wal_mb_per_s']:.1f} MB/s)"
        )


if __name__ == "__main__":
    main()
