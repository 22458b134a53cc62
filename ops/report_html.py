"""Rendering of `inferq report` (ops/report.py gathers the numbers): the terminal screen (rich)
and one self-contained HTML page.

The page has no external URL: styles are inline and the plots are PNGs drawn with
matplotlib's Agg canvas and embedded as base64 ``data:`` URIs, so it can be mailed, attached
to a ticket or opened offline. matplotlib is imported only here, only for --html.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path
from typing import Any

from inferq.common.drift import OUTPUT, PSI_DRIFT, PSI_WARN
from inferq.ops.report import Report

DASH = "—"
#: Features shown per version in the terminal's drift table (flagged ones always are).
TOP_FEATURES = 10
#: Lines in the drift-over-time plot (flagged features first, then by PSI).
PLOT_FEATURES = 8
_STYLE = {"drift": "bold red", "warn": "yellow", "ok": "green", "too few rows": "dim"}


# ----- numbers as text --------------------------------------------------------------------
def pct(v: float | None, digits: int = 1) -> str:
    """0.1234 -> "12.3%"; None -> a dash."""
    return DASH if v is None else f"{v:.{digits}%}"


def ms(v: float | None) -> str:
    """Milliseconds in the unit that reads best."""
    if v is None:
        return DASH
    if v < 1000:
        return f"{v:,.0f} ms"
    return f"{v / 1000:,.1f} s" if v < 60_000 else f"{v / 60_000:,.1f} min"


def delay(seconds: float | None) -> str:
    """A label delay in hours or days."""
    if seconds is None:
        return DASH
    return f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.1f} d"


def feature_name(name: str) -> str:
    """The output's bins are stored as feature ``__output__``."""
    return "output (score)" if name == OUTPUT else name


def accuracy_line(r: Report) -> str:
    """Estimate beside realised, with the label coverage that says how far to trust each."""
    s = r.summary
    cov = f"{pct(s['label_coverage'])} of rows labelled" if s["labelled"] else "no labels"
    if r.task == "regressor":
        if s["mae"] is None:
            return f"realised error: {DASH} ({cov})"
        return f"realised MAE {s['mae']:.4g}, RMSE {s['rmse']:.4g} on {cov}"
    line = f"accuracy: estimated {pct(s['estimated_accuracy'])} · realised "
    line += f"{pct(s['realised_accuracy'])} ({cov}"
    delays = [d["label_delay_median_s"] for d in r.daily if d["label_delay_median_s"]]
    line += f", labels ~{delay(sorted(delays)[len(delays) // 2])} late)" if delays else ")"
    if s["estimate_on_labelled_days"] is not None and s["realised_on_labelled_days"] is not None:
        line += (f" · on labelled days: estimated {pct(s['estimate_on_labelled_days'])}"
                 f" vs realised {pct(s['realised_on_labelled_days'])}")  # fmt: skip
    return line


def _realised_cell(d: dict[str, Any], regressor: bool) -> str:
    if regressor:
        return DASH if d["mae"] is None else f"{d['mae']:.4g}"
    return pct(d["realised_accuracy"])


# ----- terminal ---------------------------------------------------------------------------
def render_terminal(r: Report, console: Any) -> None:
    """Summary panel, one row per day, the drift table of the window, notes."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    s, regressor = r.summary, r.task == "regressor"
    lines = [
        f"{s['rows']:,} rows in {s['messages']:,} messages · {s['errors']:,} errors "
        f"({pct(s['error_rate'], 2)}) · latency p50 {ms(s['latency_p50_ms'])}, "
        f"p95 {ms(s['latency_p95_ms'])}",
        escape(accuracy_line(r)),
        *([f"[bold red]! {escape(x)}[/]" for x in r.findings] or ["[green]nothing flagged[/]"]),
    ]
    versions = ", ".join(map(str, r.versions)) or "none"
    console.print(Panel(
        "\n".join(lines), expand=False,
        title=f"[bold]{escape(r.model)}[/] · last {len(r.days)} days "
              f"({r.days[0]} → {r.days[-1]} UTC)",
        subtitle=f"v{r.version} {r.task} · versions scored: {versions} · {r.database}",
    ))  # fmt: skip
    table = Table("day", "rows", "errors", "p50", "p95", "est. acc" if not regressor else "",
                  "realised" if not regressor else "MAE", "labelled", "max PSI",
                  box=None, header_style="bold", pad_edge=False)  # fmt: skip
    for c in table.columns[1:]:
        c.justify = "right"
    for d in r.daily:
        psi = DASH
        if d["max_psi"] is not None:
            style = _STYLE.get(d["max_psi_verdict"] or "", "")
            psi = f"[{style}]{d['max_psi']:.3f} {escape(feature_name(d['max_psi_feature']))}[/]"
        quiet = "[dim]" if not d["rows"] else ""
        table.add_row(
            f"{quiet}{d['day']}", f"{quiet}{d['rows']:,}",
            f"{d['errors']:,} ({pct(d['error_rate'])})" if d["rows"] else DASH,
            ms(d["latency_p50_ms"]), ms(d["latency_p95_ms"]),
            "" if regressor else pct(d["estimated_accuracy"]), _realised_cell(d, regressor),
            f"{d['labelled']:,} ({pct(d['label_coverage'], 0)})" if d["labelled"] else DASH,
            psi,
        )  # fmt: skip
    table.add_row(
        "[bold]window", f"[bold]{s['rows']:,}", f"{s['errors']:,} ({pct(s['error_rate'])})",
        ms(s["latency_p50_ms"]), ms(s["latency_p95_ms"]),
        "" if regressor else pct(s["estimated_accuracy"]), _realised_cell(s, regressor),
        f"{s['labelled']:,} ({pct(s['label_coverage'], 0)})" if s["labelled"] else DASH, "",
    )  # fmt: skip
    console.print(table)
    for g in r.drift:
        if g.missing_baseline or not g.features:
            continue
        ranked = sorted(g.features, key=lambda f: -f.psi)
        shown = [f for i, f in enumerate(ranked) if i < TOP_FEATURES or f in g.flagged]
        more = len(ranked) - len(shown)
        drift = Table("feature", "rows", "PSI", "noise (99%)", "JS", "verdict", box=None,
                      header_style="bold", title_justify="left", pad_edge=False,
                      title=f"drift of v{g.version} over the window, against its baseline",
                      caption=f"+ {more} more features, none flagged" if more else None,
                      caption_justify="left")  # fmt: skip
        for c in drift.columns[1:5]:
            c.justify = "right"
        for f in shown:
            style = _STYLE.get(f.verdict, "")
            drift.add_row(escape(feature_name(f.feature)), f"{f.rows:,}", f"{f.psi:.4f}",
                          f"{f.noise:.4f}", f"{f.js:.4f}", f"[{style}]{f.verdict}[/]")  # fmt: skip
        console.print(drift)
    for note in r.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


# ----- plots ------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas: no pyplot, so no global state and no GUI backend.
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no URL in the file
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _day_axis(ax: Any, days: list[str]) -> None:
    step = max(1, len(days) // 14)
    ax.set_xticks(range(0, len(days), step), [d[5:] for d in days[::step]])
    ax.set_xlim(-0.5, len(days) - 0.5)
    ax.grid(axis="y", alpha=0.3)


def drift_plot(r: Report) -> str | None:
    """PSI per feature per day (the version's baseline), with the warn and drift lines."""
    series: dict[str, list[float]] = {}
    index = {d: i for i, d in enumerate(r.days)}
    flagged: set[str] = set()
    for g in r.drift_daily:
        for f in g.features:
            if f.rows and g.group in index:
                series.setdefault(f.feature, [float("nan")] * len(r.days))[index[g.group]] = f.psi
                flagged.update(x.feature for x in g.flagged)
    if not series:
        return None
    ranked = sorted(series, key=lambda k: (k not in flagged, -max(v for v in series[k] if v == v)))
    fig = _figure(11, 3.6)
    ax = fig.add_subplot()
    for name in ranked[:PLOT_FEATURES]:
        ax.plot(range(len(r.days)), series[name], marker="o", ms=4,
                lw=2.2 if name in flagged else 1.2, label=feature_name(name))  # fmt: skip
    ax.axhline(PSI_WARN, color="#d98e04", ls="--", lw=1, label=f"warn ({PSI_WARN})")
    ax.axhline(PSI_DRIFT, color="#c0392b", ls="--", lw=1, label=f"drift ({PSI_DRIFT})")
    _day_axis(ax, r.days)
    ax.set_ylabel("PSI")
    ax.set_ylim(bottom=0)
    shown = (f"top {PLOT_FEATURES} of {len(series)} by PSI" if len(series) > PLOT_FEATURES
             else f"{len(series) - (OUTPUT in series)} features and the output")  # fmt: skip
    ax.set_title(f"PSI per day against the baseline of v{r.version} ({shown})", loc="left",
                 fontsize=11)  # fmt: skip
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return _png(fig)


def score_plot(r: Report) -> str | None:
    """The output's distribution in the window beside the reference's, per baseline bin."""
    bins = r.output_bins()
    if not bins:
        return None
    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot()
    x = range(len(bins))
    ax.bar([i - 0.2 for i in x], [b["reference"] for b in bins], 0.4, label="reference",
           color="#9aa5b1")  # fmt: skip
    ax.bar([i + 0.2 for i in x], [b["window"] for b in bins], 0.4,
           label=f"last {len(r.days)} days", color="#2f6fde")  # fmt: skip
    ax.set_xticks(list(x), [b["label"] for b in bins], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of rows")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"Score distribution, v{r.version}", loc="left", fontsize=11)
    return _png(fig)


def accuracy_plot(r: Report) -> str | None:
    """Estimated and realised accuracy (regressors: MAE) per day, label coverage as bars."""
    regressor = r.task == "regressor"
    est = [d["estimated_accuracy"] for d in r.daily]
    real = [d["mae"] if regressor else d["realised_accuracy"] for d in r.daily]
    if all(v is None for v in est + real):
        return None
    from matplotlib.ticker import PercentFormatter

    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot()
    cov = ax.twinx()
    x = range(len(r.days))
    cov.bar(list(x), [d["label_coverage"] or 0 for d in r.daily], 0.6, color="#2e9e5b",
            alpha=0.15, label="label coverage")  # fmt: skip
    cov.set_ylim(0, 1)
    cov.yaxis.set_major_formatter(PercentFormatter(1.0))
    cov.set_ylabel("label coverage", color="#2e9e5b")
    nan = float("nan")
    if not regressor:
        ax.plot(x, [nan if v is None else v for v in est], marker="o", color="#2f6fde",
                label="estimated (no labels)")  # fmt: skip
    ax.plot(x, [nan if v is None else v for v in real], marker="s", color="#2e9e5b",
            label="realised MAE" if regressor else "realised (labelled rows)")  # fmt: skip
    if not regressor:  # at least 10 points tall: a 1-point wobble must not look like a fall
        seen = [v for v in est + real if v is not None]
        mid, half = (min(seen) + max(seen)) / 2, max(0.05, (max(seen) - min(seen)) / 2 + 0.01)
        ax.set_ylim(max(0.0, mid - half), min(1.0, mid + half))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_zorder(cov.get_zorder() + 1)
    ax.patch.set_visible(False)
    _day_axis(ax, r.days)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.set_title("MAE per day" if regressor else "Accuracy per day", loc="left", fontsize=11)
    return _png(fig)


# ----- the page ---------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2933;margin:0;
background:#f5f7fa}main{max-width:1140px;margin:0 auto;padding:20px 24px}
h1{font-size:24px;margin:0}h1 small{color:#616e7c;font-weight:400;font-size:15px}
h2{font-size:16px;margin:22px 0 8px}.sub{color:#616e7c;margin:2px 0 14px}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:10px}
.card{background:#fff;border-radius:8px;padding:10px 12px;box-shadow:0 1px 2px #0001}
.card b{display:block;font-size:20px}.card span{color:#616e7c;font-size:12px}
ul.findings{padding:0;list-style:none;margin:12px 0}ul.findings li{padding:6px 10px;
border-radius:6px;margin:4px 0;background:#fdecea;color:#8a1c1c}ul.findings li.ok{
background:#e6f4ea;color:#1e6b34}table{border-collapse:collapse;background:#fff;width:100%;
font-size:13px;box-shadow:0 1px 2px #0001}th,td{padding:4px 10px;text-align:right;
border-bottom:1px solid #e4e7eb}th:first-child,td:first-child{text-align:left}
th{background:#eef2f7}tr.total td{font-weight:600}.drift{color:#c0392b;font-weight:600}
.warn{color:#b7791f;font-weight:600}.dim{color:#9aa5b1}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:12px}.plots .wide{grid-column:1/3}
figure{margin:0;background:#fff;border-radius:8px;padding:6px;box-shadow:0 1px 2px #0001}
figure img{width:100%;display:block}.empty{color:#616e7c;padding:40px 12px;text-align:center}
ul.notes{color:#616e7c}code{background:#eef2f7;padding:1px 4px;border-radius:3px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _figure_html(png: str | None, alt: str, empty: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    if png is None:
        return f'<figure{cls}><div class="empty">{_e(empty)}</div></figure>'
    return f'<figure{cls}><img alt="{_e(alt)}" src="data:image/png;base64,{png}"></figure>'


def _row(cells: list[str], cls: str = "") -> str:
    return f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_html(r: Report) -> str:
    """The whole page as one string: no external URL, plots embedded as base64 PNG."""
    s, regressor = r.summary, r.task == "regressor"
    latest = s["flagged_latest_day"]
    flagged = (str(len(latest)), f"features flagged on {latest[0]['day']}, "
               f"{len(r.flagged)} over the window") if latest else (
               str(len(r.flagged)), "features flagged over the window")  # fmt: skip
    cards = [
        (f"{s['rows']:,}", f"rows ({s['messages']:,} messages)"),
        (pct(s["error_rate"], 2), f"error rate ({s['errors']:,} rows)"),
        (ms(s["latency_p95_ms"]), f"latency p95 (p50 {ms(s['latency_p50_ms'])})"),
        (DASH if regressor else pct(s["estimated_accuracy"]), "estimated accuracy"),
        (_realised_cell(s, regressor),
         f"realised {'MAE' if regressor else 'accuracy'}, {pct(s['label_coverage'])} labelled"),
        flagged,
    ]  # fmt: skip
    cards_html = "".join(f"<div class=card><b>{_e(v)}</b><span>{_e(t)}</span></div>"
                         for v, t in cards)  # fmt: skip
    findings = "".join(f"<li>{_e(f)}</li>" for f in r.findings) or '<li class="ok">nothing '\
        "flagged</li>"  # fmt: skip
    head = ["day", "rows", "errors", "latency p50", "p95", "estimated acc.",
            "realised " + ("MAE" if regressor else "acc."), "labelled", "label delay",
            "max PSI"]  # fmt: skip
    rows = []
    for d in r.daily:
        psi = DASH
        if d["max_psi"] is not None:
            psi = (f'<span class="{_e(d["max_psi_verdict"])}">{d["max_psi"]:.3f}</span> '
                   f"{_e(feature_name(d['max_psi_feature']))}")  # fmt: skip
        rows.append(_row([
            _e(d["day"]), f"{d['rows']:,}",
            f"{d['errors']:,} ({pct(d['error_rate'])})" if d["rows"] else DASH,
            ms(d["latency_p50_ms"]), ms(d["latency_p95_ms"]),
            DASH if regressor else pct(d["estimated_accuracy"]), _realised_cell(d, regressor),
            f"{d['labelled']:,} ({pct(d['label_coverage'], 0)})" if d["labelled"] else DASH,
            delay(d["label_delay_median_s"]), psi,
        ], "" if d["rows"] else ' class="dim"'))  # fmt: skip
    drift_rows = []
    for g in r.drift:
        for f in sorted(g.features, key=lambda f: -f.psi):
            drift_rows.append(_row([
                _e(feature_name(f.feature)), f"v{g.version}", f"{f.rows:,}", f"{f.psi:.4f}",
                f"{f.noise:.4f}", f"{f.js:.4f}", f'<span class="{_e(f.verdict)}">{_e(f.verdict)}'
                "</span>"]))  # fmt: skip
    plots = "".join([
        _figure_html(drift_plot(r), "PSI per feature and day", "no drift counts in the window "
                     "(no baseline, or nothing scored)", wide=True),
        _figure_html(score_plot(r), "score distribution vs reference",
                     "no output counts in the window"),
        _figure_html(accuracy_plot(r), "accuracy per day", "no accuracy estimate or labels"),
    ])  # fmt: skip
    notes = "".join(f"<li>{_e(n)}</li>" for n in r.notes)
    generated = r.until.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>inferq report: {_e(r.model)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{_e(r.model)} <small>v{r.version} · {_e(r.task)}</small></h1>
<p class="sub">last {len(r.days)} days, {r.days[0]} → {r.days[-1]} (UTC) · versions scored:
{_e(", ".join(map(str, r.versions)) or "none")} · {_e(r.database)} · generated {generated}</p>
<div class="cards">{cards_html}</div>
<ul class="findings">{findings}</ul>
<p>{_e(accuracy_line(r))}</p>
<h2>Per day</h2>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{"".join(rows)}</table>
<h2>Plots</h2><div class="plots">{plots}</div>
<h2>Drift over the whole window</h2>
<table><tr><th>feature</th><th>version</th><th>rows</th><th>PSI</th><th>noise (99%)</th>
<th>JS</th><th>verdict</th></tr>{"".join(drift_rows) or _row(["no drift counts"])}</table>
{f'<h2>Notes</h2><ul class="notes">{notes}</ul>' if notes else ""}
</main></body></html>
"""


def write_html(r: Report, path: Path) -> Path:
    """Write the page to ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(r), encoding="utf-8")
    return path
