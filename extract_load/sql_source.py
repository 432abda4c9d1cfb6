"""Read a SQL source system (a SQLite file or a PostgreSQL database) as Arrow.

The ADBC drivers hand over Arrow batches from C: reading through Python DB-API rows capped the
extract near 1M rows/s, and the daily key reconciliation digests every key of every table. Every
column is read as text (the contract's types are applied afterwards, by the same check as for
files): a dirty source may hold text in a number column, and a driver infers one type per column.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Sequence
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_ROWS = 250_000
# Keys per lookup query: well under SQLite's 32,766 bound parameters for composite keys too.
KEYS_PER_QUERY = 2_000
SUPPORTED_URLS = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


class SourceReadError(RuntimeError):
    """The source database cannot be reached or read; the message says which and why."""


class SqlSource:
    """One connection to a source database. SQL uses `?` placeholders; `timestamp_bound` is the
    placeholder to compare a timestamp column with an ISO text bound."""

    def __init__(self, url: str) -> None:
        self.url = url
        scheme = urlsplit(url).scheme
        try:
            if scheme == "sqlite":
                import adbc_driver_sqlite.dbapi as driver

                self._connection = driver.connect(unquote(url.partition(":///")[2]) or ":memory:")
                self.is_postgres = False
            elif scheme.partition("+")[0] in ("postgresql", "postgres"):
                import adbc_driver_postgresql.dbapi as driver

                self._connection = driver.connect("postgresql://" + url.partition("://")[2])
                self.is_postgres = True
            else:
                raise SourceReadError(f"unsupported database URL scheme {scheme!r} (expected {SUPPORTED_URLS})")
        except SourceReadError:
            raise
        except Exception as error:  # each driver has its own error classes
            raise SourceReadError(f"cannot connect ({_first_line(error)})") from error
        self.timestamp_bound = "cast(? as timestamp)" if self.is_postgres else "?"
        # Ends a subquery without dropping a row, so that the engine computes its columns once
        # instead of inlining each wherever it is used (see bucket_digests).
        self.fence = "offset 0" if self.is_postgres else "limit -1"

    def __enter__(self) -> "SqlSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection.close()

    def columns(self, table: str) -> list[str]:
        cursor, reader = self._read(f"select * from {table} where 1 = 0", ())
        try:
            return [name.lower() for name in reader.schema.names]
        finally:
            cursor.close()

    def read_order(self, table: str, primary_key: Sequence[str]) -> list[str]:
        """The cheapest order that reads `table` the same way each time: SQLite's rowid where the
        table has one (a plain scan of its b-tree; ordering by the key instead looked up every
        row through the key's index, half of a first load's read time), else the primary key."""
        if not self.is_postgres:
            try:
                cursor, _ = self._read(f"select rowid from {table} where 1 = 0", ())
            except SourceReadError:  # a WITHOUT ROWID table
                return list(primary_key)
            cursor.close()
            return ["rowid"]
        return list(primary_key)

    def read_text(
        self, table: str, columns: Sequence[str], where: str = "", params: Sequence = (), order_by: Sequence[str] = ()
    ) -> Iterator["pa.Table"]:
        """`columns` of `table` (a table, or a subquery in parentheses with its alias) as text (a
        column may also be an `expression as name`), in tables of about BATCH_ROWS rows."""
        selected = ", ".join(column if " as " in column else f"cast({column} as text) as {column}" for column in columns)
        sql = f"select {selected} from {table}" + (f" where {where}" if where else "")
        cursor, reader = self._read(sql + (f" order by {', '.join(order_by)}" if order_by else ""), params)
        tables = _grouped(reader)
        try:
            # The driver fills the next table on a thread while the caller loads this one: the
            # drivers and DuckDB both work outside the GIL, so a long read and its load overlap.
            with ThreadPoolExecutor(max_workers=1) as reading:
                pending = reading.submit(next, tables, None)
                while (table := pending.result()) is not None:
                    pending = reading.submit(next, tables, None)
                    yield table
        except OSError as error:  # the drivers' errors while streaming
            raise SourceReadError(_first_line(error)) from error
        finally:
            cursor.close()

    def read_keys(self, table: str, key: Sequence[str], values: Sequence[tuple], columns: Sequence[str]) -> Iterator["pa.Table"]:
        """`columns` of the rows whose `key` columns equal one of `values` (compared as text)."""
        for start in range(0, len(values), KEYS_PER_QUERY):
            chunk = values[start : start + KEYS_PER_QUERY]
            key_text = [f"cast({name} as text)" for name in key]
            if len(key) == 1:
                where = f"{key_text[0]} in ({', '.join('?' for _ in chunk)})"
            else:
                row = f"({', '.join('?' for _ in key)})"
                where = f"({', '.join(key_text)}) in (values {', '.join(row for _ in chunk)})"
            yield from self.read_text(table, columns, where, [str(value) for row in chunk for value in row])

    def exact_integer(self, column: str) -> str:
        """SQL for `column`'s value as an integer where it is one exactly (as the warehouse reads
        its text), else null: SQLite's cast turns '12abc' into 12, PostgreSQL's fails on it. (No `?` in
        the pattern: `_read` takes every `?` for a placeholder.)"""
        if self.is_postgres:
            text = f"cast({column} as text)"
            in_range = f"cast({text} as numeric) between {-(2**63)} and {2**63 - 1}"
            return f"case when {text} ~ '^-{{0,1}}[0-9]{{1,19}}$' then case when {in_range} then cast({text} as bigint) end end"
        return f"case when typeof({column}) = 'integer' then {column} end"

    def bucket_digests(self, table: str, key_hash: str, digest_columns: str, where: str, params: Sequence) -> list[tuple]:
        """`digest_columns` of the rows of `table` that meet `where`, grouped by their first column,
        over their `key_hash` (as _hash; rows without one left out): a few per bucket of keys.
        PostgreSQL groups them itself, so that only the digests cross the network; its hash
        subquery is fenced (`fence`) so that the hash is computed once per row, not for each of
        the digest's three uses (inlined in SQLite, which grouped them before: 8.0 s instead of
        4.1 s for the order lines at 100,000 customers). SQLite's GROUP BY sorts every row (2.5 of
        those 4.0 s), so SQLite only computes the hashes and DuckDB groups them as they stream in
        (1.9 s): read from a local file, handing every hash over costs no network."""

        def grouped(hashes: str) -> str:
            return f"select {digest_columns} from ({hashes}) as hashed where _hash is not null group by 1"

        hashed = f"select {key_hash} as _hash from {table} where {where}"
        cursor, reader = self._read(grouped(f"{hashed} {self.fence}") if self.is_postgres else hashed, params)
        try:
            if self.is_postgres:
                return list(zip(*(column.to_pylist() for column in reader.read_all().columns)))
            from warehouse.adapter import duckdb_connection

            with duckdb_connection() as grouping:
                grouping.register("source_hashes", reader)
                return grouping.execute(grouped("select _hash from source_hashes")).fetchall()
        finally:
            cursor.close()

    def _read(self, sql: str, params: Sequence) -> tuple[object, "pa.RecordBatchReader"]:
        if self.is_postgres:
            numbers = iter(range(1, len(params) + 1))
            sql = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, tuple(params) or None)
            return cursor, cursor.fetch_record_batch()
        except Exception as error:  # each driver has its own error classes
            cursor.close()
            raise SourceReadError(_first_line(error)) from error


def _grouped(reader: "pa.RecordBatchReader") -> Iterator["pa.Table"]:
    """The reader's batches in tables of about BATCH_ROWS rows."""
    import pyarrow as pa

    pending, rows = [], 0
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= BATCH_ROWS:
            yield pa.Table.from_batches(pending, reader.schema)
            pending, rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending, reader.schema)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
