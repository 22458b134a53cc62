"""`python -m inferq.bench.wire`: the typed-rows wire format against Arrow IPC (no services).

Figures for ARCHITECTURE.md "Typed rows": bytes, encode and decode (with our checks; Arrow
with `validate(full=True)`) of 1, 1,000 and 10,000 rows of 5 text + 15 number columns, and
the producer's coercion of a DataFrame to typed columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pandas as pd
from inferq.common import contract
from inferq.common.rows.coerce import to_columns
from inferq.common.rows.schema import Feature, InputSchema

SCHEMA = InputSchema(
    tuple([Feature(f"t{j}", "category") for j in range(5)] + [Feature(f"n{j}") for j in range(15)])
)


def _frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    data: dict[str, Any] = {f"t{j}": rng.choice(["lyon", "paris", "rome"], n) for j in range(5)}
    data.update({f"n{j}": rng.normal(size=n) for j in range(15)})
    return pd.DataFrame(data)


def _ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps * 1000


def measure(rows: int, reps: int) -> dict[str, float]:
    """One size: bytes and milliseconds of both formats, and the coercion."""
    import pyarrow as pa

    frame = _frame(rows, np.random.default_rng(0))
    cols = to_columns(frame, SCHEMA)
    batch = contract.Batch("m", 1, [f"j{i}" for i in range(rows)], cols.x, text=cols.text,
                           text_positions=SCHEMA.text_positions, width=SCHEMA.width)  # fmt: skip
    raw = msgpack.packb(contract.encode_batch(batch), use_bin_type=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)

    def arrow_encode() -> Any:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()

    buf = arrow_encode()

    def arrow_decode() -> None:
        pa.ipc.open_stream(buf).read_all().validate(full=True)

    return {
        "rows": rows,
        "msgpack_bytes": len(raw),
        "msgpack_encode_ms": _ms(
            lambda: msgpack.packb(contract.encode_batch(batch), use_bin_type=True), reps
        ),
        "msgpack_decode_ms": _ms(
            lambda: contract.decode_batch(msgpack.unpackb(raw, raw=False)), reps
        ),
        "arrow_bytes": buf.size,
        "arrow_encode_ms": _ms(arrow_encode, reps),
        "arrow_decode_ms": _ms(arrow_decode, reps),
        "coerce_ms": _ms(lambda: to_columns(frame, SCHEMA), reps),
    }


def main() -> None:
    """Print the table."""
    print("| rows | msgpack + raw floats: bytes, encode, decode | Arrow IPC: bytes, encode, "
          "decode + validate | coerce a DataFrame |")  # fmt: skip
    print("| ---: | --- | --- | ---: |")
    for rows, reps in ((1, 2000), (1000, 200), (10_000, 20)):
        m = measure(rows, reps)
        print(f"| {rows:,} | {m['msgpack_bytes']:,} B, {m['msgpack_encode_ms']:.3f} ms, "
              f"{m['msgpack_decode_ms']:.3f} ms | {m['arrow_bytes']:,} B, "
              f"{m['arrow_encode_ms']:.3f} ms, {m['arrow_decode_ms']:.3f} ms | "
              f"{m['coerce_ms']:.3f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
