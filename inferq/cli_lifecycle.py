"""`inferq models` lifecycle commands: promote (behind the gate), retire, shadow, compare,
check and optimize. Running workers follow every change within INFERQ_RELOAD_INTERVAL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from inferq.cli_models import JSON_OPT, _engine, console, err_console, models_app, print_json
from inferq.common.settings import get_settings

_FOLLOW = "running workers serve it within a few seconds (INFERQ_RELOAD_INTERVAL)"


@models_app.command("promote")
def promote(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version to point the alias at."),
    alias: str = typer.Option("production", "--alias", "-a", help="Alias to move."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Promote even if the version failed its checks, or has none while the current "
        "version has (a retired version is refused always).",
    ),
    accept_schema_change: bool = typer.Option(
        False,
        "--accept-schema-change",
        help="Promote even if its features differ from the current version's (added, removed, "
        "kind or order changed): the alias's callers must send the new features.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Point an alias (default production) of NAME at VERSION, behind the gates.

    Refused when the version failed its checks, or has none while the current version passed
    its own (unless --force), and when its features differ from the current version's
    (unless --accept-schema-change). Prints the candidate's metrics beside the current one's.
    """
    from inferq.models import lifecycle

    result = lifecycle.promote(
        _engine(), name, version, alias, force=force, accept_schema_change=accept_schema_change
    )
    if as_json:
        print_json(result.to_json())
        return
    for line in result.comparison():
        console.print(escape(line))
    for note in result.notes:
        err_console.print(f"[bold yellow]note:[/] {escape(note)}")
    console.print(f"{name}:{alias} -> [bold]{result.promoted.ref}[/]; {_FOLLOW}")


@models_app.command("retire")
def retire(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version to retire."),
    as_json: bool = JSON_OPT,
) -> None:
    """Stop serving NAME@VERSION for good (refused while an alias or the shadow points at it).

    Its jobs get an error row (code `retired`), new submits to it are refused, and running
    workers free it within a few seconds. `latest` moves back to the newest active version.
    """
    from inferq.models import lifecycle

    mv = lifecycle.retire(_engine(), name, version)
    if as_json:
        print_json(mv.to_json())
        return
    when = mv.retired_at.strftime("%Y-%m-%d %H:%M:%S %Z") if mv.retired_at else "now"
    console.print(f"[bold]{mv.ref}[/] retired ({when}); workers free it within a few seconds")


@models_app.command("shadow")
def shadow(
    name: str = typer.Argument(..., help="Model name."),
    version: int | None = typer.Argument(None, help="Version to score beside production."),
    off: bool = typer.Option(False, "--off", help="Stop shadow scoring for NAME."),
    as_json: bool = JSON_OPT,
) -> None:
    """Score NAME's jobs also with VERSION; --off stops; no VERSION shows the shadow.

    Shadow outputs go to `shadow_predictions`, never to `predictions`: a shadow that fails or
    is slow never changes, fails or (beyond INFERQ_SHADOW_MAX_MS) delays a primary result.
    """
    from inferq.models import lifecycle, registry

    engine = _engine()
    registry.find(engine, name)  # ModelNotFound for an unknown model
    if off and version is not None:
        raise typer.BadParameter("give a VERSION or --off, not both")
    if off or version is not None:
        lifecycle.set_shadow(engine, name, None if off else version)
    current = lifecycle.shadow_of(engine, name)
    if as_json:
        print_json({"model": name, "shadow_version": current})
    elif current is None:
        console.print(f"{name}: no shadow" + (" (stopped)" if off else ""))
    else:
        console.print(
            f"{name}: jobs are also scored by [bold]{name}@{current}[/] "
            f"(see `inferq models compare {name}`); {_FOLLOW}"
        )


@models_app.command("compare")
def compare(
    name: str = typer.Argument(..., help="Model name."),
    since: str = typer.Option("24h", "--since", help="Window: 30m, 24h, 7d..."),
    as_json: bool = JSON_OPT,
) -> None:
    """Compare NAME's shadow with the primary on the rows both scored.

    Label agreement and score differences (mean, p95, max), per version pair; where ground
    truth was loaded (`inferq feedback load`), both versions' accuracy (or MAE) on those rows.
    """
    from inferq.common.timewindow import since as window_start
    from inferq.models.compare import compare as run

    start = window_start(since)
    found = run(_engine(), name, start)
    if as_json:
        print_json(
            {"model": name, "since": start.isoformat(), "pairs": [c.to_json() for c in found]}
        )
        return
    if not found:
        console.print(f"no shadow results for {name} since {since} (see `inferq models shadow`)")
        return
    table = Table("primary", "shadow", "rows", "errors (p/s)", "label agreement",
                  "|Δscore| mean", "p95", "max", title=f"{name}, last {since}")  # fmt: skip
    for c in found:
        table.add_row(
            f"@{c.primary_version}",
            f"@{c.shadow_version}",
            f"{c.rows:,}",
            f"{c.primary_errors:,} / {c.shadow_errors:,}",
            _pct(c.label_agreement),
            _num(c.score_diff_mean),
            _num(c.score_diff_p95),
            _num(c.score_diff_max),
        )
    console.print(table)
    for c in found:
        if not c.labelled:
            console.print(
                f"@{c.primary_version} vs @{c.shadow_version}: no ground truth for these rows yet "
                "(`inferq feedback load`)"
            )
        elif c.primary_accuracy is not None:
            console.print(
                f"@{c.primary_version} vs @{c.shadow_version} on {c.labelled:,} labelled rows: "
                f"accuracy {_pct(c.primary_accuracy)} vs {_pct(c.shadow_accuracy)}"
            )
        else:
            console.print(
                f"@{c.primary_version} vs @{c.shadow_version} on {c.labelled:,} labelled rows: "
                f"MAE {_num(c.primary_mae)} vs {_num(c.shadow_mae)}"
            )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@models_app.command("check")
def check(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version to check."),
    reference: Path | None = typer.Option(
        None, "--reference", help="CSV/Parquet sample (default: the one given at registration)."
    ),
    target: str | None = typer.Option(
        None, "--target", help="Column of the sample holding the true label/value: metrics."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Run and record the validation checks of NAME@VERSION (promote's gate reads them).

    In a clean process: it loads, predicts every row of the reference sample, its outputs
    have the registered kind/classes; with --target, accuracy and ROC AUC (classifiers) or
    R² and MAE (regressors) are recorded. Exit code 1 when a check fails.
    """
    from inferq.models import gates, registry

    settings = get_settings()
    engine = _engine(settings)
    mv = gates.check_version(
        engine, settings.model_store_dir, registry.get_version(engine, name, version), reference,
        target,
    )  # fmt: skip
    if as_json:
        print_json(mv.checks)
    else:
        print_checks(mv.checks)
    if not (mv.checks or {}).get("passed"):
        raise typer.Exit(1)


def print_checks(checks: dict[str, Any] | None) -> None:
    """The validation report as lines (shared by `check`, `register` and `show`)."""
    if not checks:
        console.print("checks: none (`inferq models check NAME VERSION --reference FILE`)")
        return
    state = "[green]passed[/]" if checks.get("passed") else "[bold red]FAILED[/]"
    rows = f" on {checks['rows']:,} rows" if checks.get("rows") is not None else ""
    console.print(f"checks: {state}{rows} ({checks.get('ran_at')})")
    for c in checks.get("checks") or []:
        mark = "ok " if c.get("passed") else "FAIL"
        console.print(f"  {mark} {escape(str(c.get('name')))}: {escape(str(c.get('detail')))}")
    metrics = checks.get("metrics") or {}
    if metrics:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float))
        console.print(f"  metrics: {shown}")


@models_app.command("optimize")
def optimize(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version to compile to ONNX."),
    reference: Path | None = typer.Option(
        None, "--reference", help="Parity sample (default: the one given at registration)."
    ),
    max_diff: float | None = typer.Option(
        None, "--max-diff", help="Largest |Δ| allowed per probability/prediction (1e-4)."
    ),
    min_agreement: float | None = typer.Option(
        None, "--min-agreement", help="Share of labels that must agree (1.0 = every one)."
    ),
    off: bool = typer.Option(False, "--off", help="Serve it with scikit-learn again."),
    as_json: bool = JSON_OPT,
) -> None:
    """Compile NAME@VERSION to ONNX; serve it with onnxruntime only if parity holds.

    Parity is checked against scikit-learn on the reference sample (max |Δ probability or
    prediction|, label agreement). A model that does not convert or fails parity keeps
    scikit-learn, with the reason recorded (exit code 1).
    """
    from inferq.models import gates, registry

    settings = get_settings()
    engine = _engine(settings)
    mv = registry.get_version(engine, name, version)
    if off:
        mv = gates.deoptimize(engine, mv)
    else:
        mv = gates.optimize_version(
            engine, settings.model_store_dir, mv, reference,
            max_abs_diff=max_diff, min_label_agreement=min_agreement,
        )  # fmt: skip
    if as_json:
        print_json({"model": mv.ref, "runtime": mv.runtime, "onnx": mv.onnx})
        return
    print_onnx(mv)
    if not off and mv.runtime != "onnx":
        raise typer.Exit(1)


def print_onnx(mv: Any) -> None:
    """One line for the version's runtime and the ONNX report."""
    doc = mv.onnx or {}
    parity = doc.get("parity") or {}
    if mv.runtime == "onnx":
        console.print(
            f"{mv.ref} is served with [bold]onnxruntime[/]: parity on {parity.get('rows')} rows, "
            f"max |Δ| {parity.get('max_abs_diff', 0):.2e}, label agreement "
            f"{_pct(parity.get('label_agreement'))}; {_FOLLOW}"
        )
    elif doc:
        console.print(
            f"{mv.ref} stays on scikit-learn: {escape(str(doc.get('reason') or 'turned off'))}"
        )
    else:
        console.print(f"{mv.ref} is served with scikit-learn (not optimized)")


@models_app.command("baseline")
def baseline(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version to freeze the drift baseline of."),
    reference: Path | None = typer.Option(
        None, "--reference", help="CSV/Parquet sample (default: the one given at registration)."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Column with the true label: also fit the calibration that estimated accuracy "
        "needs (use held-out data, not the training set).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Freeze NAME@VERSION's drift baseline from a reference sample.

    Per feature: bin edges (numbers: reference quantiles; text: the most frequent categories
    plus "other" and "missing") and the reference's share per bin; the same for the output.
    Workers count every batch against these bins from now on (see `inferq drift`).
    """
    from inferq.models import gates, registry

    settings = get_settings()
    engine = _engine(settings)
    mv = registry.get_version(engine, name, version)
    mv = gates.baseline_version(engine, settings.model_store_dir, mv, reference, target)
    if as_json:
        print_json({"model": mv.ref, "baseline": mv.baseline})
        return
    print_baseline(mv)


def print_baseline(mv: Any) -> None:
    """One line about the version's drift baseline."""
    doc = mv.baseline or {}
    if not doc:
        console.print(
            f"{mv.ref}: no drift baseline (`inferq models baseline {mv.name} {mv.version} "
            "--reference FILE`)"
        )
        return
    n = len(doc.get("features") or [])
    cal = ", calibrated for estimated accuracy" if doc.get("calibration") else ""
    console.print(
        f"drift baseline: {n} features + output, from {doc.get('ref_rows', '?'):,} reference "
        f"rows{cal}"
    )
