"""Read a SQL source system (SQLite or PostgreSQL, by SQLAlchemy URL) in Arrow batches.

Rows stream through the driver's cursor in batches and become Arrow text columns at once, so an
initial load of millions of rows never holds them as Python objects all together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

from extract_load.parse import text_array

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_ROWS = 250_000
# Keys per lookup query: well under SQLite's 32,766 bound parameters for composite keys too.
KEYS_PER_QUERY = 2_000


class SourceReadError(RuntimeError):
    """The source database cannot be reached or read; the message says which and why."""


class SqlSource:
    """One connection to a source database. Queries use `?` placeholders on every driver."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = url
        try:
            self._engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
            self._connection = self._engine.raw_connection()
        except (sa.exc.ArgumentError, ImportError) as error:
            raise SourceReadError(f"not a database URL ({error})") from error
        except sa.exc.SQLAlchemyError as error:
            raise SourceReadError(f"cannot connect ({_first_line(error)})") from error
        self._placeholder = "%s" if self._engine.dialect.paramstyle in ("format", "pyformat") else "?"

    def __enter__(self) -> "SqlSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection.close()
        self._engine.dispose()

    def read_batches(self, sql: str, params: Sequence[Any] = ()) -> Iterator["pa.Table"]:
        """The query's rows, every column as text, in tables of at most BATCH_ROWS rows."""
        import pyarrow as pa

        cursor = self._connection.cursor()
        try:
            try:
                cursor.execute(sql.replace("?", self._placeholder), tuple(params))
            except Exception as error:  # each driver has its own error classes
                raise SourceReadError(_first_line(error)) from error
            names = [column[0].lower() for column in cursor.description]
            while rows := cursor.fetchmany(BATCH_ROWS):
                columns = list(zip(*rows))
                yield pa.table({name: text_array(list(values)) for name, values in zip(names, columns)})
        finally:
            cursor.close()

    def read_keys(self, table: str, columns: Sequence[str], keys: Sequence[tuple], select: str) -> Iterator["pa.Table"]:
        """`select` from `table` for the rows whose `columns` equal one of `keys`."""
        for start in range(0, len(keys), KEYS_PER_QUERY):
            chunk = keys[start : start + KEYS_PER_QUERY]
            if len(columns) == 1:
                where = f"{columns[0]} in ({', '.join('?' for _ in chunk)})"
            else:
                row = f"({', '.join('?' for _ in columns)})"
                where = f"({', '.join(columns)}) in (values {', '.join(row for _ in chunk)})"
            yield from self.read_batches(f"select {select} from {table} where {where}", [v for key in chunk for v in key])


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
