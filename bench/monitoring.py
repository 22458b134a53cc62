"""`python -m inferq.bench.monitoring`: what drift counting costs bulk throughput.

The same mixed-type model (5 text categories + 15 numbers) is registered twice: without a
reference (no baseline: workers count nothing) and with one (workers add exact bin counts
per feature and for the output, and the accuracy estimate, in each batch's transaction).
`inferq score` runs over the same Parquet file for each, alternating, `--repeat` times; the
best run of each is compared (the machine's noise is larger than the effect).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path
from typing import Any

import joblib
from inferq.bench import scenarios
from inferq.bench.data import MIXED_FEATURES, _mixed_model, make_mixed_rows
from inferq.bench.env import ROOT, bench_env
from rich.console import Console

console = Console()
START, END = "<!-- bench-monitoring:start -->", "<!-- bench-monitoring:end -->"


def run(rows: int, workers: int, repeat: int, chunk: int) -> dict[str, Any]:
    """Throughput with counting off and on (best of ``repeat`` alternating runs each)."""
    from inferq.common.db import make_engine
    from inferq.models import gates, registry

    out: dict[str, Any] = {"rows": rows, "workers": workers, "chunk": chunk, "runs": []}
    with bench_env() as settings:
        folder = settings.home_dir / "data"
        folder.mkdir(parents=True)
        model: Any = _mixed_model(20_000)
        path = folder / "mixed.joblib"
        joblib.dump(model, path)
        reference = make_mixed_rows(5_000, seed=5)
        reference["y"] = model.predict(reference[MIXED_FEATURES])
        ref_file = folder / "reference.csv"
        reference.drop(columns=["id"]).to_csv(ref_file, index=False)
        engine = make_engine(settings)
        store = settings.model_store_dir
        registry.register(engine, store, path, "plain", "production")
        mv = registry.register(engine, store, path, "counted", "production", reference=ref_file)
        gates.baseline_version(engine, store, mv, None, "y")
        engine.dispose()
        data = folder / "rows.parquet"
        make_mixed_rows(rows, seed=11).to_parquet(data, row_group_size=100_000)
        for i in range(repeat):
            for name in ("plain", "counted"):
                console.print(f"[{name}] run {i + 1}/{repeat}: {rows:,} rows ...")
                r = scenarios.bulk(settings, name, data, workers, chunk, f"{name}-{i}")
                out["runs"].append({"model": name, **r})
        counted = make_engine(settings)
        with counted.connect() as conn:
            out["count_rows"] = conn.exec_driver_sql("SELECT count(*) FROM drift_counts").scalar()
        counted.dispose()
    for name in ("plain", "counted"):
        out[name] = max(r["rows_per_s"] for r in out["runs"] if r["model"] == name)
    out["ratio"] = out["counted"] / out["plain"]
    return out


def drift_query(predictions: int = 100_000_000, days: int = 30, procs: int = 8) -> dict[str, Any]:
    """How long `inferq drift` takes over counts equal to ``predictions`` rows spread over
    ``days`` days and ``procs`` worker processes (synthetic counts, drawn like the reference)."""
    import numpy as np
    from inferq.common import drift
    from inferq.common.db import make_engine
    from inferq.models import gates, registry
    from inferq.ops.drift import drift_report

    out: dict[str, Any] = {"predictions": predictions, "days": days, "procs": procs}
    with bench_env() as settings:
        folder = settings.home_dir / "data"
        folder.mkdir(parents=True)
        joblib.dump(_mixed_model(5_000), folder / "m.joblib")
        make_mixed_rows(5_000, seed=3).drop(columns=["id"]).to_csv(folder / "ref.csv", index=False)
        engine = make_engine(settings)
        store = settings.model_store_dir
        mv = registry.register(
            engine, store, folder / "m.joblib", "big", reference=folder / "ref.csv"
        )
        mv = gates.baseline_version(engine, store, mv, None, None)
        base, bid = (
            drift.Baseline.from_json(mv.baseline or {}),
            drift.baseline_id(mv.baseline or {}),
        )
        hours = days * 24
        per_row = predictions // (hours * procs)
        now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        rng = np.random.default_rng(0)
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            sql = (
                "COPY drift_counts (model_name, model_version, baseline, bucket, worker, "
                "counts) FROM STDIN"
            )
            with cursor.copy(sql) as copy:
                for h in range(hours):
                    for p in range(procs):
                        vec = np.zeros(base.width, dtype=np.int64)
                        for fb, off in base.layout():
                            vec[off : off + fb.n_bins] = rng.multinomial(per_row, fb.ref_share)
                        stamp = now - dt.timedelta(hours=h)
                        copy.write_row(("big", 1, bid, stamp, f"n{p % 4}:{p}", vec.tolist()))
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE drift_counts")
        since = now - dt.timedelta(days=days + 1)
        for by in (None, "day"):
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                groups = drift_report(engine, "big", since, None, by)
                best = min(best, time.perf_counter() - started)
            out[by or "all"] = {"ms": best * 1000, "groups": len(groups),
                                "flagged": sum(len(g.flagged) for g in groups)}  # fmt: skip
        out["count_rows"] = hours * procs
        out["counted"] = hours * procs * per_row
        engine.dispose()
    return out


def markdown(res: dict[str, Any]) -> str:
    """The BENCHMARKS.md block."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    runs = ", ".join(f"{r['model']} {r['rows_per_s']:,.0f}" for r in res["runs"])
    return "\n".join(
        [
            START,
            f"Run {dt.date.today()} on {os.cpu_count()} cores ({cpu}), "
            f"`python -m inferq.bench.monitoring --rows {res['rows']}`: mixed-type model, "
            f"{res['workers']} worker processes, chunks of {res['chunk']:,} rows, best of "
            f"{len(res['runs']) // 2} alternating runs each.",
            "",
            "| drift counting | bulk rows/s |",
            "| --- | ---: |",
            f"| off (no baseline) | {res['plain']:,.0f} |",
            f"| on (20 features + output + estimate) | {res['counted']:,.0f} |",
            f"| on / off | {res['ratio']:.3f} |",
            "",
            f"All runs (rows/s): {runs}. `drift_counts` rows after the counted runs: "
            f"{res['count_rows']:,}.",
            *_query_lines(res.get("query")),
            END,
        ]
    )


def _query_lines(q: dict[str, Any] | None) -> list[str]:
    if not q:
        return []
    return [
        "",
        f"`inferq drift` over counts of {q['counted']:,} predictions ({q['days']} days x 24 "
        f"hours x {q['procs']} worker processes = {q['count_rows']:,} `drift_counts` rows, "
        f"synthetic, drawn like the reference), best of 3: whole window "
        f"{q['all']['ms']:,.0f} ms, `--by day` ({q['day']['groups']} groups) "
        f"{q['day']['ms']:,.0f} ms; features flagged: {q['all']['flagged']} and "
        f"{q['day']['flagged']} (no drift was drawn).",
    ]


def write(path: Path, block: str) -> None:
    """Replace the block between the markers (append a section the first time)."""
    text = path.read_text()
    if START in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Drift counting cost (issue 14)\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m inferq.bench.monitoring", description=__doc__)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=5000)
    p.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    res = run(args.rows, args.workers, args.repeat, args.chunk_size)
    console.print("drift query over counts of 100M predictions ...")
    res["query"] = drift_query()
    block = markdown(res)
    console.print(block)
    if not args.no_write:
        write(args.output, block)


if __name__ == "__main__":
    main()
