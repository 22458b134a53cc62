"""The BENCHMARKS.md block of `python -m inferq.bench.lifecycle` (bench/lifecycle.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np

START, END = "<!-- bench-lifecycle:start -->", "<!-- bench-lifecycle:end -->"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table after a blank line; the first column left-aligned, others right."""
    rule = "| --- |" + " ---: |" * (len(head) - 1)
    return ["", "| " + " | ".join(head) + " |", rule,
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]  # fmt: skip


def markdown(res: dict[str, Any], args: argparse.Namespace, seconds: float) -> str:
    """The block between the bench-lifecycle markers."""
    from inferq.bench.__main__ import machine

    cmd = "python -m inferq.bench.lifecycle" + (" --quick" if args.quick else "")
    out = [f"Measured by `{cmd}` on {dt.date.today():%Y-%m-%d}: {machine()}; Redis and "
           f"PostgreSQL on the same machine; one worker node, {args.workers} pool processes; "
           f"total time {seconds:.0f}s."]  # fmt: skip
    if "onnx" in res:
        r = res["onnx"]
        out += ["", f"v1 scikit-learn, v2 the same file optimized to ONNX. Online: "
                f"{int(args.online_rate * args.online_seconds):,} one-row jobs at "
                f"{args.online_rate:g}/s, latency `scored_at - submitted_at` of each row. Bulk: "
                f"`inferq score`, {args.rows:,} rows, chunk {args.chunk_size:,}; model call = "
                "mean `predict_ms` per chunk. Checked: the version's rows in `predictions`; "
                "wrong: not ok, or `runtime` not the version's."]  # fmt: skip
        rows = []
        for key, x in r["versions"].items():
            o, b = r["optimize"][key.split("@")[0]], x["bulk"]
            onnx = f"{o['optimize_s']:.1f} s, {o['onnx_kb']:,.0f} KB, {o['max_abs_diff']:.0e}"
            rows.append([key, "onnx" if key.endswith("@2") else "sklearn",
                         f"{x['p50_ms']:.1f}", f"{x['p99_ms']:.1f}", f"{b['rows_per_s']:,.0f}",
                         f"{b['predict_ms']:.0f}", f"{x['checked']:,}", x["wrong"],
                         onnx if key.endswith("@2") else ""])  # fmt: skip
        out += _table(["version", "runtime", "online p50 ms", "p99 ms", "bulk rows/s", "model "
                       "call ms", "checked", "wrong", "ONNX: convert + parity, size, max abs diff"],
                      rows)  # fmt: skip
    if "shadow" in res:
        s = res["shadow"]
        out += ["", f"Shadow: bulk forest@1 alone, then with forest@3 (another 100-tree forest) "
                f"as its shadow; INFERQ_SHADOW_MAX_MS={s['max_ms']:g}. The shadow cost "
                f"{1 - s['on']['rows_per_s'] / s['off']['rows_per_s']:.0%} of bulk throughput "
                f"and scored {s['on']['shadow_rows'] / max(1, s['on']['rows']):.1%} of the "
                "primary rows."]  # fmt: skip
        out += _table(["shadow", "rows", "rows/s", "shadow rows"],
                      [[k, f"{s[k]['rows']:,}", f"{s[k]['rows_per_s']:,.0f}",
                        f"{s[k]['shadow_rows']:,}"] for k in ("off", "on")])  # fmt: skip
    if "reload" in res:
        h = res["reload"]
        b, a = h["before"], h["after"]

        def sec(v: float | None) -> str:
            return "not seen" if v is None else f"{v:.1f} s"

        out += ["", f"Hot reload: `lifecycle.promote` of big@2 (ExtraTrees, {h['file_mb']:.0f} MB "
                f"file, {h['loaded_mb']:.0f} MB once loaded) while {args.reload_rate:g} one-row "
                f"jobs/s go to big:production (producer alias cache {h['alias_cache']:g} s, "
                f"INFERQ_RELOAD_INTERVAL={h['interval']:g} s)."]  # fmt: skip
        out += _table(["after the promote", "value"], [
            ["main process had loaded v2 (worker log)", sec(h["loaded_s"])],
            ["of which loading (sha256 + unpickle)", sec(h["load_s"])],
            ["every pool process new (psutil)", sec(h["recycled_s"])],
            ["first row scored by v2", sec(h["first_v2_s"])],
            ["jobs submitted / unanswered / failed submits",
             f"{h['jobs']:,} / {h['unanswered']} / {h['submit_failed']}"],
            ["rows by version", ", ".join(f"v{k}: {n:,}" for k, n in h["versions"].items())],
            ["error rows", f"{sum(h['errors'].values())} {dict(h['errors']) or ''}".strip()],
            ["latency p50 / p99 / max", f"{h['p50_ms']:.0f} / {h['p99_ms']:.0f} / "
             f"{h['max_ms']:.0f} ms"],
            ["models loaded on demand in children", h["on_demand"]],
        ])  # fmt: skip
        kids = zip(b["child_uss"], b["child_pss"], a["child_uss"], a["child_pss"], strict=False)
        out += _table(["process", "before promote: USS / PSS MB", "after (v2 scored)"], [
            [f"main (RSS {b['rss']:.0f} → {a['rss']:.0f} MB)", f"{b['uss']:.0f} / {b['pss']:.0f}",
             f"{a['uss']:.0f} / {a['pss']:.0f}"],
            *([f"child {i + 1}", f"{bu:.0f} / {bp:.0f}", f"{au:.0f} / {ap:.0f}"]
              for i, (bu, bp, au, ap) in enumerate(kids)),
        ])  # fmt: skip
        grew = round(np.mean(a["child_uss"]) - np.mean(b["child_uss"])) + 0  # no "-0"
        out += ["", f"The main process grew {a['rss'] - b['rss']:.0f} MB (RSS; it keeps the "
                "previous version too); a new child's USS differs from an old one's by "
                f"{grew:+d} MB on average, where loading the model in each child would cost "
                f"~{h['loaded_mb']:.0f} MB per child ({h['loaded_mb'] * args.workers:.0f} MB for "
                f"{args.workers})."]  # fmt: skip
    return "\n".join(out) + "\n"


def write(path: Path, block: str) -> None:
    """Replace the block between the markers (adding the section at the end if absent)."""
    text = path.read_text() if path.exists() else "# inferq benchmarks\n"
    if START not in text:
        text = text.rstrip("\n") + f"\n\n## Model lifecycle (issue 13)\n\n{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    path.write_text(pattern.sub(lambda _: f"{START}\n{block}{END}", text))
