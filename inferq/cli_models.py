"""`inferq models`: register, list and show model versions (lifecycle commands in
cli_lifecycle.py, archive and describe in cli_registry.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from inferq.common.errors import InvalidInput, LifecycleRefused
from inferq.common.settings import get_settings

if TYPE_CHECKING:
    from inferq.common.rows.schema import InputSchema
    from inferq.models.registry import ModelVersion

models_app = typer.Typer(
    help="The model registry: register, list, show, describe, promote, shadow, retire, archive.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")
_SHORT = {"number": "num", "integer": "int", "boolean": "bool", "category": "cat"}
_SHOWN_CATEGORIES = 5


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _engine(settings: Any = None) -> Any:
    from inferq.common.db import make_engine

    return make_engine(settings or get_settings())


def parse_feature_types(values: list[str]) -> dict[str, str]:
    """``["city=text", "age=int"]`` -> ``{"city": "text", "age": "int"}`` (kinds checked later)."""
    kinds: dict[str, str] = {}
    for value in values:
        name, sep, kind = value.rpartition("=")  # kinds never hold '=', names might
        if not sep or not name or not kind:
            raise InvalidInput(f"--feature-type expects NAME=KIND (e.g. city=text), got {value!r}")
        kinds[name] = kind
    return kinds


def schema_summary(mv: ModelVersion) -> str:
    """Short schema cell for `models list`: "20: 15 num, 5 cat, 3 missing-ok"."""
    schema = mv.schema
    counts: dict[str, int] = {}
    for f in schema.features:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    parts = [f"{n} {_SHORT.get(k, k)}" for k, n in counts.items()]
    parts.append(f"{sum(f.missing for f in schema.features)} missing-ok")
    legacy = " (pre-schema)" if mv.input_schema is None else ""
    return f"{schema.width}: {', '.join(parts)}{legacy}"


@models_app.command("register")
def register(
    path: Path = typer.Argument(..., help="joblib file of a fitted scikit-learn estimator."),
    name: str = typer.Option(..., "--name", "-n", help="Model name (letters, digits . _ -)."),
    alias: str | None = typer.Option(
        None, "--alias", "-a", help="Also point this alias (e.g. production) at the new version."
    ),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        help="CSV or Parquet sample of the model's input: feature kinds from its dtypes, a "
        "typical row for the missing-value probe; its path and sha256 are recorded.",
    ),
    feature_type: list[str] = typer.Option(
        [],
        "--feature-type",
        help="NAME=KIND (number, integer, boolean, category/text); repeatable; overrides.",
    ),
    schema: Path | None = typer.Option(
        None, "--schema", help="JSON schema file (as `models show --json` prints) to use as is."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Column of the reference holding the true label/value: the checks record "
        "accuracy and ROC AUC (classifiers) or R² and MAE (regressors).",
    ),
    trust: list[str] = typer.Option(
        [],
        "--trust",
        help="skops files: a type the file needs that skops does not trust by default "
        "(repeatable; forests need sklearn.tree._tree.Tree). Review it first.",
    ),
    optimize: str | None = typer.Option(
        None, "--optimize", help="'onnx': compile and serve with onnxruntime if parity holds."
    ),
    description: str | None = typer.Option(
        None, "--description", "-d", help="Free text about this version (`models show`)."
    ),
    tag: list[str] = typer.Option(
        [], "--tag", "-t", help="KEY=VALUE label (repeatable), e.g. --tag team=risk."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Register even if this file (same sha256) already is a version of NAME; with "
        "--alias, also point it here even if the checks failed.",
    ),
    accept_schema_change: bool = typer.Option(
        False,
        "--accept-schema-change",
        help="With --alias: point it here even if its features differ from the alias's "
        "current version.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Register PATH (joblib or skops) as the next version of NAME; `latest` moves to it.

    The file is copied into the store and its input schema derived. The same file twice is
    refused (--force). Features that differ from the production version's are printed and
    recorded: promoting it then needs --accept-schema-change. With --reference the version
    is checked at once, in a clean process (see `models check`); --alias then promotes it
    only past the gates (the same as `models promote`). Without --alias the model's bare
    name still serves it while the model has no production alias.
    """
    from inferq.cli_registry import parse_tags, print_schema_changes
    from inferq.models import gates, lifecycle, registry
    from inferq.models.artifacts import unneeded_trust

    if target is not None and reference is None:
        raise InvalidInput("--target needs --reference (the sample holding that column)")
    if optimize not in (None, "onnx"):
        raise InvalidInput(f"--optimize {optimize!r}: the only optimization is 'onnx'")
    if optimize and reference is None:
        raise InvalidInput("--optimize onnx needs --reference (the parity sample)")
    kinds = parse_feature_types(feature_type)
    tags = parse_tags(tag)
    settings = get_settings()
    engine = _engine(settings)
    mv = registry.register(
        engine,
        settings.model_store_dir,
        path,
        name,
        None,
        reference=reference,
        feature_types=kinds or None,
        schema_file=schema,
        trusted=list(trust) or None,
        description=description,
        tags=tags,
        force=force,
    )
    print_schema_changes(mv)
    for warning in mv.schema_warnings:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    for extra in unneeded_trust(path, list(trust)) if trust else []:
        err_console.print(
            f"[bold yellow]warning:[/] --trust {escape(extra)}: the file does not need it"
        )
    if reference is not None:
        mv = gates.check_version(engine, settings.model_store_dir, mv, reference, target)
        try:
            mv = gates.baseline_version(engine, settings.model_store_dir, mv, reference, target)
        except InvalidInput as exc:  # the version is registered: say why drift is not tracked
            err_console.print(f"[bold yellow]warning:[/] no drift baseline: {escape(str(exc))}")
    if optimize:
        mv = gates.optimize_version(engine, settings.model_store_dir, mv, reference)
    promoted = None
    if alias is not None:
        try:
            promoted = lifecycle.promote(
                engine, name, mv.version, alias, force=force,
                accept_schema_change=accept_schema_change,
            )  # fmt: skip
        except LifecycleRefused as exc:  # the version stays registered: say so
            raise LifecycleRefused(
                f"registered {mv.ref} but did not point {alias} at it: {exc}"
            ) from None
        mv = promoted.promoted
    if as_json:
        print_json(mv.to_json())
        return
    console.print(
        f"registered [bold]{mv.ref}[/] ({mv.estimator}, {mv.task}, {mv.n_features} features, "
        f"{mv.format}{', aliases: ' + ', '.join(mv.aliases) if mv.aliases else ''})"
    )
    console.print(f"schema: {escape(mv.schema.describe())}")
    if mv.reference:
        console.print(f"reference: {escape(_reference_text(mv.reference))}")
    if mv.trusted:
        console.print(f"trusted types: {escape(', '.join(mv.trusted))}")
    if reference is not None:
        cli_lifecycle.print_checks(mv.checks)
        cli_lifecycle.print_baseline(mv)
    if optimize:
        cli_lifecycle.print_onnx(mv)
    for note in promoted.notes if promoted else []:
        err_console.print(f"[bold yellow]note:[/] {escape(note)}")


@models_app.command("list")
def list_cmd(
    name: str | None = typer.Argument(None, help="Only this model."),
    show_all: bool = typer.Option(
        False, "--all", help="Also list archived versions (`models archive`)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """List model versions: aliases, task and input schema (archived ones with --all)."""
    from inferq.models import registry

    versions = registry.list_models(_engine(), name)
    hidden = 0 if show_all else sum(mv.archived for mv in versions)
    versions = [mv for mv in versions if show_all or not mv.archived]
    if hidden:
        err_console.print(f"{hidden:,} archived version(s) not shown (--all lists them)")
    if as_json:
        print_json([mv.to_json() for mv in versions])
        return
    table = Table("name", "version", "status", "aliases", "estimator", "task", "schema",
                  "checks", "runtime", "created")  # fmt: skip
    for mv in versions:
        table.add_row(
            escape(mv.name),
            str(mv.version),
            ("archived" if mv.archived else mv.status) + (" (shadow)" if mv.shadow else ""),
            ", ".join(mv.aliases),
            mv.estimator,
            mv.task,
            schema_summary(mv),
            _checks_cell(mv.checks),
            mv.runtime + ("" if mv.format == "joblib" else f" ({mv.format})"),
            mv.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table if versions else "no models registered (see `inferq models register`)")


@models_app.command("show")
def show(
    ref: str = typer.Argument(
        ..., help="NAME@VERSION, NAME:ALIAS, or NAME (its production version, else the latest)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Show one version: aliases, sha256, size, who registered it and when, and more.

    Also description and tags, checks and metrics, ONNX parity, drift baseline, schema
    changes and the input schema.
    """
    from inferq.cli_registry import registry_rows, show_json
    from inferq.models import registry

    mv = registry.find(_engine(), ref)
    if as_json:
        print_json(show_json(mv))
        return
    classes = mv.classes or []
    rows = [
        ("version", f"{mv.ref}" + (f"  (aliases: {', '.join(mv.aliases)})" if mv.aliases else "")),
        ("estimator", f"{mv.estimator} ({mv.task}{', predict_proba' if mv.has_proba else ''})"),
        ("classes", _first(classes, 10) if classes else "-"),
        ("artifact", f"{mv.artifact} ({mv.size_bytes:,} bytes, sha256 {mv.sha256[:12]})"),
        ("sha256", mv.sha256),
        ("scikit-learn", mv.sklearn_version),
        *registry_rows(mv),
        ("schema", f"{mv.schema.describe()} ({_source(mv)})"),
    ]
    if mv.reference:
        rows.append(("reference", _reference_text(mv.reference)))
    rows.append(
        (
            "status",
            ("archived" if mv.archived else mv.status)
            + (f" since {mv.retired_at:%Y-%m-%d %H:%M}" if mv.retired_at else "")
            + (f", archived {mv.archived_at:%Y-%m-%d %H:%M}" if mv.archived_at else "")
            + ("; the model's shadow" if mv.shadow else ""),
        )
    )
    rows.append(
        (
            "format",
            mv.format
            + (f" (trusted: {', '.join(mv.trusted)})" if mv.trusted else "")
            + f", served with {mv.runtime}",
        )
    )
    rows.extend(("warning", w) for w in mv.schema_warnings)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        console.print(f"{key:<{width}}  {escape(value)}", soft_wrap=True)
    cli_lifecycle.print_onnx(mv)
    cli_lifecycle.print_checks(mv.checks)
    cli_lifecycle.print_baseline(mv)
    console.print(_schema_table(mv.schema))


def _checks_cell(checks: dict[str, Any] | None) -> str:
    """`models list`'s checks cell: passed/FAILED and the first metric."""
    if not checks:
        return "-"
    metrics = checks.get("metrics") or {}
    first = next(((k, v) for k, v in metrics.items() if isinstance(v, int | float)), None)
    state = "passed" if checks.get("passed") else "FAILED"
    return state + (f" ({first[0]} {first[1]:.3f})" if first else "")


def _schema_table(schema: InputSchema) -> Table:
    table = Table("#", "feature", "kind", "missing accepted", "categories")
    for j, f in enumerate(schema.features):
        kind = f.kind + (" (pandas category)" if f.pandas_category else "")
        cats = _first(list(f.categories), _SHOWN_CATEGORIES) if f.categories else ""
        table.add_row(str(j), escape(f.name), kind, "yes" if f.missing else "no", escape(cats))
    return table


def _first(values: list[str], n: int) -> str:
    """The first ``n`` values, and how many more there are."""
    more = f" ... (+{len(values) - n})" if len(values) > n else ""
    return ", ".join(values[:n]) + more


def _source(mv: ModelVersion) -> str:
    if mv.input_schema is None:
        return "registered before schemas: all numbers"
    return {
        "model": "kinds from the model",
        "reference": "kinds from the reference sample and the model",
        "file": "kinds from a schema file",
    }.get(str(mv.input_schema.get("source")), "recorded at registration")


def _reference_text(ref: dict[str, Any]) -> str:
    return f"{ref.get('path')} ({ref.get('rows')} rows, sha256 {str(ref.get('sha256'))[:12]})"


# Lifecycle commands (promote, retire, shadow, compare, check, optimize) and the registry's
# (archive, describe) register here.
from inferq import cli_lifecycle, cli_registry  # noqa: E402, F401
