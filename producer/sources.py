"""Streamed inputs for bulk runs: CSV, Parquet and SQL queries, read chunk by chunk.

Each source can tell its columns before any row is enqueued (so a missing feature column
stops the run early) and then yields pandas DataFrames of at most ``rows`` rows; memory stays
bounded by one read block whatever the input size.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from inferq.common.errors import InvalidInput


class Source(Protocol):
    """A tabular input read in chunks."""

    description: str

    def columns(self) -> list[str]:
        """Column names, read without loading the data."""
        ...

    def total_rows(self) -> int | None:
        """Row count when cheaply known up front, else None."""
        ...

    def chunks(
        self, rows: int, columns: list[str], id_column: str, text: Collection[str] = ()
    ) -> Iterator[pd.DataFrame]:
        """DataFrames of at most ``rows`` rows holding ``columns`` (the id column as text, and
        the ``text`` columns — the model's category features — as text, never as numbers)."""
        ...


def rechunk(frames: Iterator[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    """Re-cut a stream of frames into frames of exactly ``size`` rows (the last may be short)."""
    buffer: list[pd.DataFrame] = []
    held = 0
    for frame in frames:
        buffer.append(frame)
        held += len(frame)
        if held < size:
            continue
        whole = pd.concat(buffer, ignore_index=True) if len(buffer) > 1 else buffer[0]
        cut = (held // size) * size
        for start in range(0, cut, size):
            yield whole.iloc[start : start + size]
        buffer = [whole.iloc[cut:]] if held > cut else []
        held -= cut
    if held:
        yield pd.concat(buffer, ignore_index=True) if len(buffer) > 1 else buffer[0]


def _unreadable(path: Path, exc: BaseException) -> InvalidInput:
    return InvalidInput(f"cannot read {path}: {type(exc).__name__}: {exc}")


class CsvSource:
    """A CSV file with a header row."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"csv:{self.path.resolve()}"
        if not self.path.is_file():
            raise InvalidInput(f"input file {self.path} does not exist")

    def columns(self) -> list[str]:
        try:
            return [str(c) for c in pd.read_csv(self.path, nrows=0).columns]
        except pd.errors.EmptyDataError:
            raise InvalidInput(f"input file {self.path} is empty (no header row)") from None
        except Exception as exc:
            raise _unreadable(self.path, exc) from None

    def total_rows(self) -> int | None:
        return None  # counting would mean reading the file twice

    def chunks(
        self, rows: int, columns: list[str], id_column: str, text: Collection[str] = ()
    ) -> Iterator[pd.DataFrame]:
        try:
            # NOTE: the id column and category features are read as text, so ids and codes
            # like 00123 keep their zeros; an empty cell (or pandas' NA words: NA, null,
            # NaN...) is a missing value.
            # low_memory=False: type each column over the whole read block, not over
            # arbitrary sub-blocks (which yields half-text, half-float columns).
            as_text = dict.fromkeys([id_column, *text], str)
            reader = pd.read_csv(self.path, usecols=columns, chunksize=rows, dtype=as_text,
                                 low_memory=False)  # fmt: skip
            for frame in reader:
                yield _numbers_from_text(frame, {id_column, *text})
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise _unreadable(self.path, exc) from None


def _numbers_from_text(frame: pd.DataFrame, keep: set[str]) -> pd.DataFrame:
    """In a CSV every cell is text: one stray word makes pandas read a whole column as text.

    Turn the cells of such columns that are numbers back into floats and keep only the real
    text (which then gets its own error row) as it was.
    """
    for name in frame.columns:
        column = frame[name]
        if name in keep or column.dtype.kind in "biuf":
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        text = numbers.isna() & column.notna()
        if not text.any():
            frame[name] = numbers
            continue
        mixed = numbers.astype(object)
        mixed[text] = column[text]
        frame[name] = mixed
    return frame


class ParquetSource:
    """A Parquet file, read one record batch at a time with pyarrow."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"parquet:{self.path.resolve()}"
        if not self.path.is_file():
            raise InvalidInput(f"input file {self.path} does not exist")
        try:
            import pyarrow.parquet as pq

            # IMPORTANT: pre_buffer caches every column chunk it has read until the reader is
            # closed — producer memory would grow with the file (1.8 GB for 10M rows).
            self._file = pq.ParquetFile(self.path, pre_buffer=False)
        except Exception as exc:
            raise _unreadable(self.path, exc) from None

    def columns(self) -> list[str]:
        return list(self._file.schema_arrow.names)

    def total_rows(self) -> int | None:
        return int(self._file.metadata.num_rows)

    def chunks(
        self, rows: int, columns: list[str], id_column: str, text: Collection[str] = ()
    ) -> Iterator[pd.DataFrame]:
        # Native types: dictionary-encoded columns arrive as `category`, strings as text;
        # common/rows/coerce.py turns both into the model's category values.
        for batch in self._file.iter_batches(batch_size=rows, columns=columns):
            yield batch.to_pandas()


class SqlSource:
    """The rows of a SELECT, streamed with a server-side cursor."""

    def __init__(self, url: str, query: str) -> None:
        from sqlalchemy import create_engine

        self.query = query.strip().rstrip(";")
        if not self.query.lower().startswith(("select", "with")):
            raise InvalidInput("--sql must be a SELECT (or WITH ... SELECT) query")
        self.description = f"sql:{self.query}"
        self._engine = create_engine(_normalise(url))

    def _wrapped(self, outer: str) -> Any:
        from sqlalchemy import text

        return text(outer.replace("{q}", self.query))

    def columns(self) -> list[str]:
        try:
            with self._engine.connect() as conn:
                result = conn.execute(self._wrapped("SELECT * FROM ({q}) AS src LIMIT 0"))
                return list(result.keys())
        except Exception as exc:
            raise InvalidInput(f"the --sql query failed: {exc}") from None

    def total_rows(self) -> int | None:
        with self._engine.connect() as conn:
            count = conn.execute(self._wrapped("SELECT count(*) FROM ({q}) AS src")).scalar()
            return int(count or 0)

    def chunks(
        self, rows: int, columns: list[str], id_column: str, text: Collection[str] = ()
    ) -> Iterator[pd.DataFrame]:
        # IMPORTANT: chunk k must hold the same rows on every run of a run id (resume skips
        # committed chunks by number), so rows are always ordered by the id column.
        quoted = self._engine.dialect.identifier_preparer.quote(id_column)
        query = self._wrapped("SELECT * FROM ({q}) AS src ORDER BY src." + quoted)
        with self._engine.connect().execution_options(stream_results=True) as conn:
            for frame in pd.read_sql(query, conn, chunksize=rows):
                yield frame[columns]

    def duplicate_ids(self, id_column: str, limit: int) -> tuple[list[tuple[Any, int]], int]:
        """(up to ``limit`` ids found on several rows with their counts, how many such ids),
        grouped by the database: the rows never cross the network for this check."""
        quoted = self._engine.dialect.identifier_preparer.quote(id_column)
        grouped = (
            f"SELECT src.{quoted} AS id, count(*) AS n FROM ({{q}}) AS src "
            f"WHERE src.{quoted} IS NOT NULL GROUP BY src.{quoted} HAVING count(*) > 1"
        )
        with self._engine.connect() as conn:
            first = f"SELECT id, n FROM ({grouped}) AS d ORDER BY n DESC, id LIMIT {int(limit)}"
            found = [tuple(r) for r in conn.execute(self._wrapped(first))]
            total = conn.execute(self._wrapped(f"SELECT count(*) FROM ({grouped}) AS d")).scalar()
        return found, int(total or 0)

    def close(self) -> None:
        """Release the source database connection pool."""
        self._engine.dispose()


def _normalise(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def open_source(
    path: str | None, sql: str | None, source_url: str | None, default_url: str
) -> Source:
    """The Source for ``--input PATH`` (.csv, .parquet) or ``--sql QUERY``."""
    if bool(path) == bool(sql):
        raise InvalidInput("give exactly one of --input PATH or --sql QUERY")
    if sql:
        return SqlSource(source_url or default_url, sql)
    assert path is not None
    suffix = Path(path).suffix.lower()
    if suffix in {".csv", ".gz", ".bz2", ".zip", ".xz"}:
        return CsvSource(Path(path))
    if suffix in {".parquet", ".pq"}:
        return ParquetSource(Path(path))
    raise InvalidInput(f"cannot tell the format of {path}: use a .csv or .parquet file")
