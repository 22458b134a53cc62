"""What results as files and the checks before a run cost, at 10 million rows.

`python -m inferq.bench.export [--rows 10000000]`:

- **export:** a run of ``--rows`` result rows of a 3-class classifier is written into a fresh
  database by Postgres itself (``generate_series``; ids in an order unrelated to the input
  order, so the export must sort), then `inferq results RUN -o` writes it as Parquet and as
  CSV. Reported: time, rows/s, file size, and the peak RSS of the `inferq results` process
  (the bound the server-side cursor gives).
- **id check:** a CSV of ``--rows`` rows (an id and 20 float features) is checked for
  repeated ids the way `inferq score` does before it enqueues (producer/preflight.py), in a
  child process: time and peak RSS, without and with a few duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_CHILD_PEAK = """
import resource, sys, time
sys.argv = {argv!r}
start = time.perf_counter()
try:
    from inferq.cli import main
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("BENCH", code, round(time.perf_counter() - start, 2), round(peak, 1), file=sys.stderr)
"""


def _timed_cli(argv: list[str], env: dict[str, str]) -> tuple[int, float, float, str]:
    """(exit code, seconds, peak RSS MB, stderr) of one `inferq` command in a child process."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD_PEAK.format(argv=["inferq", *argv])],
        env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    line = next(x for x in out.stderr.splitlines() if x.startswith("BENCH "))
    _, code, seconds, peak = line.split()
    return int(code or 0), float(seconds), float(peak), out.stderr


def _fill(settings: Any, rows: int) -> None:
    """A done run 'big' of ``rows`` rows of model m@1 (classes a, b, c), written by SQL."""
    import psycopg
    from inferq.producer.runs import run_token

    token = run_token("big")
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO model_versions (name, version, sha256, sklearn_version, task, estimator,"
            " classes, n_features, has_proba, artifact, size_bytes, created_at) VALUES ('m', 1,"
            " 'x', '1.5', 'classifier', 'LogisticRegression', '[\"a\", \"b\", \"c\"]', 20, 1,"
            " 'm/1', 1, now())"
        )
        conn.execute(
            "INSERT INTO scoring_runs (run_id, model_name, model_version, source, id_column,"
            " chunk_size, total_rows, n_chunks, enqueued, scored_ok, scored_error, status,"
            " started_at, updated_at) VALUES ('big', 'm', 1, 'csv:/bench', 'customer_id',"
            f" 10000, {rows}, {rows // 10000}, {rows}, {rows}, 0, 'done', now(), now())"
        )
        conn.execute("SELECT inferq_create_partition('predictions', current_date)")
        # Ids are md5 hashes, so their order (the primary key's) is not the input order and
        # the export must sort; rows go in in key order (the index fills sequentially).
        conn.execute(
            f"""
            INSERT INTO predictions (job_id, day, run_id, key, model_name, model_version, status,
                label, score, probabilities, submitted_at, scored_at, worker, batch_id, runtime,
                row_no)
            SELECT '{token}:' || k, current_date, 'big', k, 'm', 1, 'ok',
                (ARRAY['a','b','c'])[1 + i % 3], p, jsonb_build_object('a', p, 'b', (1 - p) / 2,
                'c', (1 - p) / 2), now(), now(), 'bench:1', 'big.' || (i / 10000), 'sklearn', i
            FROM (SELECT i, md5(i::text) AS k, (i % 1000) / 1000.0 AS p
                  FROM generate_series(0, {rows - 1}) AS i) AS g
            ORDER BY k
            """
        )
        conn.execute("ANALYZE predictions")


def _csv(path: Path, rows: int) -> None:
    """An id column and 20 float features, written by pyarrow (pandas' writer is ~20x
    slower), in blocks of a million rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    block = 1_000_000
    names = ["customer_id", *(f"f{i}" for i in range(20))]
    schema = pa.schema([(n, pa.string() if n == names[0] else pa.float32()) for n in names])
    with pacsv.CSVWriter(str(path), schema) as writer:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            ids = pa.array([f"c{i:09d}" for i in range(start, start + n)])
            feats = [pa.array(rng.normal(size=n).astype(np.float32)) for _ in range(20)]
            writer.write_batch(pa.RecordBatch.from_arrays([ids, *feats], names=names))


def _with_duplicates(path: Path, target: Path, copies: int) -> None:
    """``path`` plus ``copies`` rows repeating its first row's id, at the end."""
    import shutil

    shutil.copyfile(path, target)
    with path.open() as src:
        src.readline()
        first = src.readline()
    with target.open("a") as out:
        out.write(first * copies)


def run(rows: int) -> dict[str, Any]:
    from inferq.bench.env import bench_env, env_for

    report: dict[str, Any] = {"rows": rows}
    with bench_env() as settings, tempfile.TemporaryDirectory(prefix="inferq-export-") as tmp:
        env = env_for(settings)
        started = time.perf_counter()
        _fill(settings, rows)
        report["fill_seconds"] = round(time.perf_counter() - started, 1)
        print("filled", report["fill_seconds"], file=sys.stderr, flush=True)
        for name in ("preds.parquet", "preds.csv"):
            target = Path(tmp) / name
            code, seconds, peak, err = _timed_cli(["results", "big", "-o", str(target)], env)
            if code != 0:
                raise RuntimeError(err)
            report[name] = {
                "seconds": seconds, "rows_per_second": round(rows / seconds),
                "mb": round(target.stat().st_size / 1e6, 1), "peak_rss_mb": peak,
            }  # fmt: skip
            target.unlink()
            print(name, report[name], file=sys.stderr, flush=True)
        source = Path(tmp) / "input.csv"
        _csv(source, rows)
        dup = Path(tmp) / "input-dup.csv"
        _with_duplicates(source, dup, 3)
        for name, path in (("id_check_unique", source), ("id_check_3_duplicates", dup)):
            out = subprocess.run(
                [sys.executable, "-m", "inferq.bench.export", "--id-check", str(path)],
                capture_output=True, text=True, timeout=3600, check=True,
            )  # fmt: skip
            checked = json.loads(out.stdout)
            checked["csv_mb"] = round(path.stat().st_size / 1e6, 1)
            report[name] = checked
            print(name, checked, file=sys.stderr, flush=True)
    report["machine"] = f"{os.cpu_count()} CPUs, {_memory_gb():.0f} GiB RAM"
    return report


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def id_check(path: str) -> dict[str, Any]:
    """The duplicate-id pass of `inferq score` on a CSV, in this process: time, peak RSS."""
    from inferq.producer import preflight
    from inferq.producer.sources import open_source

    started = time.perf_counter()
    source = open_source(path, None, None, "sqlite://")
    try:
        preflight.check_unique_ids(source, "customer_id")
        result = "unique"
    except preflight.DuplicateIds as exc:
        result = str(exc)[:100]
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "result": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="Rows of the run.")
    parser.add_argument("--id-check", metavar="CSV", help="Only time the id check of CSV.")
    args = parser.parse_args()
    print(json.dumps(id_check(args.id_check) if args.id_check else run(args.rows), indent=2))


if __name__ == "__main__":
    main()
