"""How two versions' input schemas differ, in the terms a caller of the model cares about.

Used by `register` (a warning, recorded on the version) and by `promote` (refused unless the
change is accepted). Pure: no database, no scikit-learn.
"""

from __future__ import annotations

from inferq.common.rows.schema import InputSchema

_SHOWN = 10


def _narrower(before: str, after: str) -> bool:
    """A kind change a caller can notice: integer -> number is not one (every integer still
    is a number); e.g. number -> integer or number -> category is."""
    return before != after and (before, after) != ("integer", "number")


def _names(values: list[str]) -> str:
    more = f" ... (+{len(values) - _SHOWN})" if len(values) > _SHOWN else ""
    return ", ".join(values[:_SHOWN]) + more


def schema_changes(old: InputSchema, new: InputSchema) -> list[str]:
    """What a caller sending ``old``'s rows would find changed in ``new`` (empty: nothing).

    Features added or removed, a kind changed (except integer -> number), the order changed
    (rows given as lists are matched by position), a feature that no longer accepts missing
    values. Categories are not compared: a retrained encoder may know more of them, and
    unknown ones are the model's business. Models fitted without column names are compared by
    position.
    """
    if not (old.named and new.named):
        return _positional(old, new)
    before, after = {f.name: f for f in old.features}, {f.name: f for f in new.features}
    changes = []
    added = [n for n in new.names if n not in before]
    removed = [n for n in old.names if n not in after]
    if added:
        changes.append(f"added {_names(added)}")
    if removed:
        changes.append(f"removed {_names(removed)}")
    kinds = [
        f"{n} {before[n].kind} -> {after[n].kind}"
        for n in new.names
        if n in before and _narrower(before[n].kind, after[n].kind)
    ]
    if kinds:
        changes.append(f"kind changed: {_names(kinds)}")
    common_old = [n for n in old.names if n in after]
    common_new = [n for n in new.names if n in before]
    if common_old != common_new:
        moved = [n for j, n in enumerate(common_new) if common_old[j] != n]
        changes.append(f"order changed ({_names(moved)} moved; matters for rows sent as lists)")
    stricter = [n for n in new.names if n in before and before[n].missing and not after[n].missing]
    if stricter:
        changes.append(f"no longer accept missing values: {_names(stricter)}")
    return changes


def _positional(old: InputSchema, new: InputSchema) -> list[str]:
    """Models fitted on arrays: features are positions x0, x1..."""
    changes = []
    if old.named != new.named:
        changes.append(
            "column names: " + ("now positional" if old.named else f"now named ({new.width})")
        )
    if old.width != new.width:
        changes.append(f"{old.width} -> {new.width} features")
    kinds = [
        f"#{j} {a.kind} -> {b.kind}"
        for j, (a, b) in enumerate(zip(old.features, new.features, strict=False))
        if _narrower(a.kind, b.kind)
    ]
    if kinds:
        changes.append(f"kind changed: {_names(kinds)}")
    stricter = [
        f"#{j}"
        for j, (a, b) in enumerate(zip(old.features, new.features, strict=False))
        if a.missing and not b.missing
    ]
    if stricter:
        changes.append(f"no longer accept missing values: {_names(stricter)}")
    return changes
