"""`inferq models` registry management: archive (and back), describe (description and tags),
and what `register` and `show` print about them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from inferq.cli_models import JSON_OPT, _engine, console, err_console, models_app, print_json
from inferq.common.contract import check_name
from inferq.common.errors import InvalidInput

if TYPE_CHECKING:
    from inferq.models.registry import ModelVersion

_REF_HELP = "NAME@VERSION, or NAME followed by VERSION."


def parse_tags(values: list[str]) -> dict[str, str]:
    """``["team=risk", "ticket=ML-7"]`` -> ``{"team": "risk", "ticket": "ML-7"}``."""
    tags: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")  # keys never hold '=', values might
        if not sep or not key.strip():
            raise InvalidInput(f"--tag expects KEY=VALUE (e.g. team=risk), got {value!r}")
        tags[check_name(key.strip(), "tag key")] = text
    return tags


def pinned(ref: str, version: int | None) -> tuple[str, int]:
    """(name, version) from ``NAME@VERSION`` or ``NAME VERSION``; anything else is refused."""
    from inferq.models.registry import parse_ref

    name, found, _alias = parse_ref(ref)
    if found is not None and version is not None and found != version:
        raise InvalidInput(f"{ref} and version {version} disagree: give the version once")
    number = found if found is not None else version
    if number is None or ":" in ref:
        raise InvalidInput(f"name the version: {name}@VERSION (or {name} VERSION), got {ref!r}")
    return name, int(number)


def print_schema_changes(mv: ModelVersion) -> None:
    """register's warning when the features differ from the production version's."""
    doc = mv.schema_changes or {}
    if not doc.get("changes"):
        return
    err_console.print(
        f"[bold yellow]warning:[/] {mv.ref}'s features differ from {escape(str(doc['against']))} "
        f"(production): {escape('; '.join(doc['changes']))}; promoting it needs "
        "--accept-schema-change"
    )


def registry_rows(mv: ModelVersion) -> list[tuple[str, str]]:
    """`models show`'s lines about who registered the version, its description, tags, and
    how its features differed from production at registration."""
    who = mv.registered_by or "unknown (registered before inferq recorded it)"
    rows = [("registered", f"{mv.created_at:%Y-%m-%d %H:%M:%S %Z}".strip() + f" by {who}")]
    rows.append(("description", mv.description or "-"))
    rows.append(("tags", ", ".join(f"{k}={v}" for k, v in sorted(mv.tags.items())) or "-"))
    changes = (mv.schema_changes or {}).get("changes")
    if changes:
        against = (mv.schema_changes or {}).get("against")
        rows.append(("schema change", f"vs {against} (production then): {'; '.join(changes)}"))
    return rows


def show_json(mv: ModelVersion) -> dict[str, Any]:
    """`models show --json`: the version's record, its schema, and a summary of the metrics
    stored with it (checks, ONNX parity, drift baseline)."""
    checks = mv.checks or {}
    base = mv.baseline or {}
    return {
        **mv.to_json(),
        "schema": mv.schema.to_json(),
        "archived": mv.archived,
        "metrics": checks.get("metrics"),
        "checks_passed": checks.get("passed") if checks else None,
        "onnx_parity": (mv.onnx or {}).get("parity"),
        "baseline_summary": {
            "features": len(base.get("features") or []),
            "reference_rows": base.get("ref_rows"),
            "calibrated": bool(base.get("calibration")),
        }
        if base
        else None,
    }


@models_app.command("archive")
def archive(
    ref: str = typer.Argument(..., help=_REF_HELP),
    version: int | None = typer.Argument(None, help="Version (when REF is a bare NAME)."),
    undo: bool = typer.Option(
        False, "--undo", help="List it again (it stays retired: archived versions never serve)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Archive a version: retire it and hide it from `models list` (--all shows it).

    Refused while an alias (other than `latest`, which moves back) or the shadow points at
    it. Submits to it are refused like a retired version's; --undo lists it again.
    """
    from inferq.models import lifecycle

    name, number = pinned(ref, version)
    mv = lifecycle.archive(_engine(), name, number, undo=undo)
    if as_json:
        print_json(mv.to_json())
    elif undo:
        console.print(f"[bold]{mv.ref}[/] is listed again ({mv.status}: it is not served)")
    else:
        console.print(
            f"[bold]{mv.ref}[/] archived: retired, hidden from `models list` "
            f"(`inferq models archive {mv.ref} --undo` lists it again)"
        )


@models_app.command("describe")
def describe(
    ref: str = typer.Argument(..., help=_REF_HELP),
    version: int | None = typer.Argument(None, help="Version (when REF is a bare NAME)."),
    description: str | None = typer.Option(
        None, "--description", "-d", help='New description ("" clears it).'
    ),
    tag: list[str] = typer.Option(
        [], "--tag", "-t", help="KEY=VALUE to set or replace (repeatable)."
    ),
    untag: list[str] = typer.Option([], "--untag", help="Tag KEY to remove (repeatable)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Change a version's description and tags; with no option, print them."""
    from inferq.models import lifecycle, registry

    name, number = pinned(ref, version)
    engine = _engine()
    if description is None and not tag and not untag:
        mv = registry.get_version(engine, name, number)
    else:
        tags = parse_tags(tag)
        mv = lifecycle.describe(
            engine, name, number, description=description, tags=tags, untag=list(untag)
        )
    if as_json:
        print_json({"model": mv.ref, "description": mv.description, "tags": mv.tags})
        return
    console.print(f"[bold]{mv.ref}[/]: {escape(mv.description or '(no description)')}")
    for key, value in sorted(mv.tags.items()):
        console.print(f"  {escape(key)}={escape(value)}")
