"""Typed columns on the wire: the text part of a score message.

A message carries its number/integer/boolean features as one raw little-endian float64
block (``x``, exactly as before typed rows: numeric-only models pay nothing new) and, when
the model has category features, one msgpack array of ``str | nil`` per such feature
(``text``), with the positions of those features in the model's schema (``tpos``) and the
full width (``width``). ARCHITECTURE.md "Typed rows" says why this and not Arrow IPC.

Everything decoded here comes from the broker and is untrusted: types, lengths and
positions are checked before anything reaches a model; a value of the wrong type rejects the
message (a producer never sends one), a text too long for its feature is that row's error
(checked against the schema in common/rows/model_input.py).
"""

from __future__ import annotations

from typing import Any

from inferq.common.errors import ContractError

#: Payload keys of the text part (absent from numeric-only messages).
TEXT, POSITIONS, WIDTH = "text", "tpos", "width"
#: Contract version of a message with text columns (numeric-only messages stay version 1,
#: readable by workers that predate typed rows).
TYPED_VERSION = 2


def encode(text: list[list[str | None]] | None, positions: tuple[int, ...], width: int) -> dict:
    """The payload fields for a batch's text columns ({} for a numeric-only batch)."""
    if not text:
        return {}
    return {TEXT: text, POSITIONS: list(positions), WIDTH: int(width)}


def decode(
    payload: dict[str, Any], n_rows: int, n_numeric: int
) -> tuple[list[list[str | None]] | None, tuple[int, ...], int]:
    """(text columns, their positions, full width) of an untrusted payload.

    A numeric-only payload gives ``(None, (), n_numeric)``.
    """
    text = payload.get(TEXT)
    if text is None:
        return None, (), n_numeric
    positions = payload.get(POSITIONS)
    width = payload.get(WIDTH)
    if not isinstance(text, list) or not isinstance(positions, list) or not isinstance(width, int):
        raise ContractError("text columns need 'text', 'tpos' and 'width' of the right types")
    if len(positions) != len(text) or not text:
        raise ContractError(f"{len(text)} text columns but {len(positions)} positions")
    if width != n_numeric + len(text):
        raise ContractError(
            f"width {width} is not {n_numeric} number columns + {len(text)} text columns"
        )
    if not all(isinstance(p, int) and 0 <= p < width for p in positions) or sorted(
        set(positions)
    ) != list(positions):
        raise ContractError("text column positions must be distinct, ascending and in range")
    for k, column in enumerate(text):
        if not isinstance(column, list) or len(column) != n_rows:
            raise ContractError(f"text column {k} does not hold one value per row ({n_rows})")
        if not all(v is None or type(v) is str for v in column):
            bad = next(v for v in column if v is not None and type(v) is not str)
            raise ContractError(f"text column {k} holds a {type(bad).__name__}, not text")
    return text, tuple(positions), width
