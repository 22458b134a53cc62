"""Time windows on the command line: ``--since 24h`` (s, m, h, d, w)."""

from __future__ import annotations

import datetime as dt
import re

from inferq.common.errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> dt.timedelta:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``, ``"2w"`` as a timedelta (else a clear error)."""
    found = _PATTERN.match(text.lower())
    if not found:
        raise InvalidInput(
            f"{text!r} is not a duration: use a number and a unit, e.g. 30m, 24h or 7d "
            "(units: s, m, h, d, w)"
        )
    return dt.timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])


def since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """The start of the window ``text`` long that ends ``now`` (UTC)."""
    return (now or dt.datetime.now(dt.UTC)) - parse_duration(text)
