"""Connect to the warehouse named by WAREHOUSE_URL and move data in and out of it in bulk.

DuckDB (the embedded default), PostgreSQL (production) and Apache Spark (a local session whose
parquet tables and metastore live in one folder) differ in how they bulk load, bind parameters,
hand back frames, nest transactions and delete rows; those differences stay in this file.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# "digest": a 128-bit md5 held in the engines' 16-byte uuid type, not as 33 bytes of hex text.
ColumnType = Literal["string", "integer", "decimal", "double", "boolean", "date", "timestamp", "digest"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_SQL_TYPES: dict[str, dict[str, str]] = {
    "duckdb": {
        "string": "varchar",
        "integer": "bigint",
        "decimal": "decimal(18,4)",
        "double": "double",
        "boolean": "boolean",
        "date": "date",
        "timestamp": "timestamp",
        "digest": "uuid",
    },
    "postgres": {
        "string": "text",
        "integer": "bigint",
        "decimal": "numeric(18,4)",
        "double": "double precision",
        "boolean": "boolean",
        "date": "date",
        "timestamp": "timestamp",
        "digest": "uuid",
    },
    # Spark names the types as its catalog reports them back, so column_types compares alike.
    "spark": {
        "string": "string",
        "integer": "bigint",
        "decimal": "decimal(18,4)",
        "double": "double",
        "boolean": "boolean",
        "date": "date",
        # A wall-clock time without a zone, as `timestamp` is on DuckDB and PostgreSQL; Spark's own
        # `timestamp` is an instant shown in the session's zone (dbt's spark target sets the same).
        "timestamp": "timestamp_ntz",
        # Spark has no 16-byte uuid type: the uuid's text (36 characters), as dbt's Spark tests and
        # unit-test fixtures hold raw's version hashes.
        "digest": "string",
    },
}

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_EXPECTED_URL = (
    "expected duckdb:///path/to/file.duckdb, postgresql://user:password@host:port/database"
    " or spark:///path/to/folder"
)
_COPY_BATCH_ROWS = 200_000
# The PostgreSQL advisory lock key taken to create schemas, tables, columns and indexes (any number
# no other code locks on; this one is 'crmw' in ASCII).
CATALOG_LOCK = 0x63726D77

log = logging.getLogger(__name__)


class WarehouseUrlError(ValueError):
    """WAREHOUSE_URL cannot be used; the message names the value and what was expected."""


class WarehouseSettingsError(ValueError):
    """DuckDB refused CRMW_DUCKDB_MEMORY_LIMIT or CRMW_DUCKDB_THREADS; the message names both."""


@dataclass(frozen=True)
class WarehouseUrl:
    engine: Literal["duckdb", "postgres", "spark"]
    url: str
    duckdb_path: Path | None = None
    # The folder a local Spark session keeps its tables (the warehouse directory) and metastore in.
    spark_folder: Path | None = None

    def redacted(self) -> str:
        """The URL with any password masked, for logs and messages."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """`url` with the password masked: everything between the user's ':' and the last '@', so a
    password holding '@', '/' or ':', or one given with an empty user name, never shows."""
    scheme, separator, rest = url.partition("://")
    userinfo, at, location = rest.rpartition("@")
    if not separator or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{location}"


def default_warehouse_url() -> str:
    return f"duckdb:///{PROJECT_ROOT / '.local' / 'warehouse.duckdb'}"


def parse_warehouse_url(url: str | None = None) -> WarehouseUrl:
    """Parse WAREHOUSE_URL (or `url`); DuckDB paths and Spark folders come back absolute."""
    raw = url if url is not None else os.environ.get("WAREHOUSE_URL") or default_warehouse_url()
    shown = redact_url(raw)
    if raw.startswith("duckdb://"):
        location = raw[len("duckdb://") :]
        if not location.strip("/"):
            raise WarehouseUrlError(f"WAREHOUSE_URL={shown!r}: no file path; {_EXPECTED_URL}")
        path = Path("/" + location.lstrip("/")) if location.startswith("/") else Path(location).resolve()
        return WarehouseUrl("duckdb", f"duckdb:///{path}", duckdb_path=path)
    scheme, _, rest = raw.partition("://")
    if scheme in ("postgresql", "postgres", "postgresql+psycopg") and rest:
        parts = urlsplit("postgresql://" + rest)
        if not parts.hostname or not parts.path.strip("/") or not parts.username:
            raise WarehouseUrlError(
                f"WAREHOUSE_URL={shown!r}: needs a user, a host and a database name; {_EXPECTED_URL}"
            )
        return WarehouseUrl("postgres", "postgresql://" + rest)
    if scheme in ("spark", "sc"):
        return _parse_spark_url(raw, shown)
    raise WarehouseUrlError(f"WAREHOUSE_URL={shown!r}: unknown kind of warehouse; {_EXPECTED_URL}")


def _parse_spark_url(raw: str, shown: str) -> WarehouseUrl:
    """spark:///absolute/folder, or spark://relative/folder resolved against the working directory
    as DuckDB's paths are. A host (`spark://master:7077`, Spark Connect's `sc://host`) or Spark's
    master names (`local`, `local[4]`) are refused: the adapter runs its own local session."""
    scheme, _, location = raw.partition("://")
    first_part = location.lstrip("/").split("/")[0]
    if scheme == "sc" or (not location.startswith("/") and ":" in first_part):
        raise WarehouseUrlError(
            f"WAREHOUSE_URL={shown!r}: a Spark cluster is not supported by the warehouse adapter, only a local"
            " session in a folder (spark:///path/to/folder); on a cluster dbt alone runs, through dbt-spark's"
            f" thrift or http method or Spark Connect (README); {_EXPECTED_URL}"
        )
    if location == "local" or location.startswith("local["):
        raise WarehouseUrlError(
            f"WAREHOUSE_URL={shown!r}: no folder; the adapter's local Spark session keeps its tables and"
            f" metastore in a folder the URL names (spark://local is only the dbt profile's host); {_EXPECTED_URL}"
        )
    if not location.strip("/"):
        raise WarehouseUrlError(f"WAREHOUSE_URL={shown!r}: no folder; {_EXPECTED_URL}")
    folder = Path("/" + location.lstrip("/")) if location.startswith("/") else Path(location).resolve()
    return WarehouseUrl("spark", f"spark://{folder}", spark_folder=folder)


def connect(url: str | None = None) -> "Warehouse":
    """Open the warehouse named by `url`, else WAREHOUSE_URL, else the embedded DuckDB file."""
    target = parse_warehouse_url(url)
    if target.engine == "duckdb":
        return _DuckDBWarehouse(target)
    if target.engine == "spark":
        return _SparkWarehouse(target)
    return _PostgresWarehouse(target)


# DuckDB holds at most this much in memory and spills the rest of a large join, sort or window to
# disk; its own default, 80% of the machine, let one 100,000-customer build reach 15 GB (see the
# README's Speed section). dbt_project/profiles.yml spells the same default.
DEFAULT_DUCKDB_MEMORY_LIMIT = "4GB"
# fetch_df's rows per Arrow batch from DuckDB (its own default), and the CSV text of a PostgreSQL
# result held in memory before it goes to a temporary file.
ARROW_BATCH_ROWS = 1_000_000
CSV_IN_MEMORY_BYTES = 64 * 2**20


def duckdb_settings() -> dict[str, str]:
    """DuckDB's memory limit and threads from CRMW_DUCKDB_MEMORY_LIMIT and CRMW_DUCKDB_THREADS
    (DuckDB's default threads, one per core, when unset), for every DuckDB connection the project
    opens; dbt's profile reads the same two variables."""
    settings = {"memory_limit": os.environ.get("CRMW_DUCKDB_MEMORY_LIMIT") or DEFAULT_DUCKDB_MEMORY_LIMIT}
    if threads := os.environ.get("CRMW_DUCKDB_THREADS"):
        settings["threads"] = threads
    return settings


def duckdb_connection(path: str = ":memory:") -> Any:
    """A DuckDB connection to `path` (a scratch in-memory database by default) under
    `duckdb_settings()`; a value DuckDB cannot take is named with its variable."""
    import duckdb

    settings = duckdb_settings()
    try:
        return duckdb.connect(path, config=settings)
    except duckdb.ProgrammingError as error:  # how DuckDB refuses a value it cannot parse
        variables = {"memory_limit": "CRMW_DUCKDB_MEMORY_LIMIT", "threads": "CRMW_DUCKDB_THREADS"}
        given = ", ".join(f"{variables[name]}={value!r}" for name, value in settings.items())
        raise WarehouseSettingsError(
            f"DuckDB refused its settings ({given}): {error}; expected a memory limit such as 4GB or 512MB "
            "and a whole number of threads of at least 1"
        ) from None


def sql_type(engine: str, column_type: ColumnType) -> str:
    """The SQL type that holds a contract column type on `engine`."""
    return _SQL_TYPES[engine][column_type]


def storage_order(columns: Mapping[str, ColumnType]) -> dict[str, ColumnType]:
    """`columns` in the order a large table stores them in least: eight-byte types, then four-byte,
    then the 16-byte digest, then variable-width, then booleans (each group in the given order).
    PostgreSQL pads each value to its type's alignment, and a source's own order (an id, a short
    text, an id, ...) cost the raw order lines 14% of their bytes (10,000 customers: 110.8 -> 95.1
    MB stored in this order). DuckDB stores by column: there the order is only how `select *` reads."""
    rank = {"integer": 0, "double": 0, "timestamp": 0, "date": 1, "digest": 2, "decimal": 3, "string": 3, "boolean": 4}
    return dict(sorted(columns.items(), key=lambda column: rank[column[1]]))


def quote_identifier(name: str) -> str:
    """Check one snake_case identifier part; names come from config files, never from data."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"identifier {name!r}: expected lowercase snake_case (a-z, 0-9, _)")
    return name


def qualified(table: str) -> str:
    """`schema.table` with both parts checked."""
    schema, _, name = table.partition(".")
    if not name:
        raise ValueError(f"table {table!r}: expected schema.table")
    return f"{quote_identifier(schema)}.{quote_identifier(name)}"


class Warehouse:
    """A connection to the warehouse; use it as a context manager."""

    engine: str
    # What follows a new table's column list: how the engine stores it, where it has a choice.
    _table_storage = ""

    def __init__(self, target: WarehouseUrl) -> None:
        self.target = target
        self._depth = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "Warehouse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    # -- SQL -----------------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement; parameters are bound to `?` placeholders on both engines."""
        raise NotImplementedError

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one insert, update or delete; returns the number of rows it touched."""
        raise NotImplementedError

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    def fetch_df(self, sql: str, params: Sequence[Any] = (), categorical: Sequence[str] = ()) -> "pd.DataFrame":
        """A query result as a DataFrame with the same dtypes on both engines:
        decimals as float64, dates and timestamps as datetime64. The text columns named in
        `categorical` come as pandas categoricals, dictionary-encoded batch by batch as the rows
        arrive: a column of few distinct values over millions of rows (the skus and customers of
        a year's baskets) is never held whole as text."""
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all; nesting joins the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._begin()
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._rollback()
            raise
        self._depth = 0
        self._commit()

    # -- schema --------------------------------------------------------------------------------
    @contextmanager
    def _catalog_change(self) -> Iterator[None]:
        """Around creating a schema, table, column or index found missing: writers running at once
        (the tasks of a parallel run) must not create the same one together. Inside, look again."""
        yield

    def ensure_schema(self, schema: str) -> None:
        if not self.fetchall("select 1 from information_schema.schemata where schema_name = ?", (schema,)):
            with self._catalog_change():
                self.execute(f"create schema if not exists {quote_identifier(schema)}")

    def table_columns(self, table: str) -> list[str]:
        """Column names of `schema.table` in order; empty when the table does not exist."""
        return list(self.column_types(table))

    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> the engine's SQL type, lower case ('text', 'uuid', 'varchar'), of
        `schema.table` in order; empty when the table does not exist."""
        schema, _, name = qualified(table).partition(".")
        rows = self.fetchall(
            "select column_name, lower(data_type) from information_schema.columns"
            " where table_schema = ? and table_name = ? order by ordinal_position",
            (schema, name),
        )
        return dict(rows)

    def columns_by_table(self, where: str, params: Sequence[Any] = ()) -> dict[str, list[str]]:
        """"schema.table" -> its column names in order, of every table and view the catalog's
        `information_schema.columns` row filter `where` keeps (the catalog read once, not per table)."""
        tables: dict[str, list[str]] = {}
        for schema, table, column in self.fetchall(
            "select table_schema, table_name, column_name from information_schema.columns as columns"
            f" where {where} order by table_schema, table_name, ordinal_position", tuple(params)
        ):
            tables.setdefault(f"{schema}.{table}", []).append(column)
        return tables

    def ensure_table(self, table: str, columns: Mapping[str, ColumnType]) -> None:
        """Create `schema.table` if missing and add any column it lacks (sources gain columns)."""
        if set(columns) <= set(self.table_columns(table)):
            return
        types = _SQL_TYPES[self.engine]
        with self._catalog_change():
            existing = set(self.table_columns(table))
            if not existing:
                self.ensure_schema(table.partition(".")[0])
                body = ", ".join(f"{quote_identifier(c)} {types[t]}" for c, t in columns.items())
                self.execute(f"create table if not exists {qualified(table)} ({body}){self._table_storage}")
                return
            for column, column_type in columns.items():
                if column not in existing:
                    self.execute(
                        f"alter table {qualified(table)} add column {quote_identifier(column)} {types[column_type]}"
                    )

    def refresh_statistics(self, table: str) -> None:
        """Tell the query planner what a table just filled holds. PostgreSQL plans a scratch table
        refilled each run from its last statistics: planned as empty, a join over millions of keys
        became a nested loop (minutes instead of seconds). DuckDB keeps its statistics current."""

    def reclaim_space(self) -> str:
        """The engine's housekeeping after many days of deletes and inserts; returns the statement run."""
        raise NotImplementedError

    def empty_table(self, table: str) -> None:
        """Remove every row of a scratch table that is refilled on each run. On PostgreSQL a delete
        leaves the dead rows in the table's pages until vacuum, so the next run's delete, analyze
        and joins read every row the table ever held: a day's increment grew with the first load."""
        self.execute(f"delete from {qualified(table)}")

    def ensure_index(self, table: str, columns: Sequence[str], block_range: bool = False) -> None:
        """An index for lookups by `columns` where the engine gains from one: PostgreSQL reads
        a day's keys out of years of raw rows through it; DuckDB scans and hash-joins faster than
        it keeps an index up to date on bulk inserts, so it gets none. A `block_range` index keeps
        only the least and greatest values of each range of blocks (PostgreSQL's BRIN, a few kB
        where a b-tree holds every row): for columns that grow with the order rows are appended
        in, such as a load's date and time, it finds the blocks of the recent rows. DuckDB keeps
        such ranges of every column itself."""

    def drop_index(self, table: str, columns: Sequence[str]) -> None:
        """Drop the b-tree ensure_index made for `columns`, if there is one."""

    # -- bulk data -----------------------------------------------------------------------------
    def append_arrow(self, table: str, data: "pa.Table") -> int:
        """Bulk-append an Arrow table whose column names match the table's; returns rows added."""
        raise NotImplementedError

    def replace_rows(self, table: str, match: Mapping[str, Any], data: "pa.Table") -> int:
        """Replace the rows of `table` whose columns equal `match` (one run's or one date's rows)
        by `data`, in one transaction: readers see the old rows or the new ones, never a mix."""
        where = " and ".join(f"{quote_identifier(column)} = ?" for column in match)
        with self.transaction():
            self.delete_rows(table, where, tuple(match.values()))
            return self.append_arrow(table, data)

    def delete_rows(self, table: str, where: str, params: Sequence[Any] = (), alias: str | None = None) -> int:
        """Delete the rows of `schema.table` for which the SQL condition `where` is true (a row for
        which it is null stays, as with SQL's DELETE); returns how many went. `alias` names the
        table inside `where`, for a correlated `exists (...)`. The one way to delete rows that works
        on every engine: Spark's parquet tables have no DELETE (see _SparkWarehouse.delete_rows)."""
        return self.execute_count(f"delete from {qualified(table)}{_alias(alias)} where {where}", params)

    def update_rows(self, table: str, sets: Mapping[str, str], where: str, params: Sequence[Any] = (),
                    set_params: Sequence[Any] = ()) -> int:
        """Set each column of `sets` to its SQL expression (their `?` parameters in `set_params`, in
        the order of `sets`) on the rows of `schema.table` for which `where` is true; returns how
        many. The one way to update rows that works on every engine: Spark's parquet tables have
        no UPDATE (see _SparkWarehouse.update_rows)."""
        assignments = ", ".join(f"{quote_identifier(column)} = {value}" for column, value in sets.items())
        return self.execute_count(f"update {qualified(table)} set {assignments} where {where}", (*set_params, *params))

    def row_counts(self, schemas: Sequence[str]) -> list[tuple[str, int]]:
        """(schema.table, rows) for every table and view in `schemas`, sorted by name."""
        names = self.fetchall(
            "select table_schema || '.' || table_name from information_schema.tables"
            f" where table_schema in ({', '.join('?' for _ in schemas)}) order by 1",
            tuple(schemas),
        )
        return [(name, self.fetchall(f"select count(*) from {qualified(name)}")[0][0]) for (name,) in names]

    def storage_bytes(self) -> dict[str, int]:
        """Bytes on disk per schema (tables with their indexes), and the whole database under
        "total": where a warehouse's disk goes, for the benchmark's storage budget."""
        raise NotImplementedError

    def table_bytes(self) -> dict[str, int]:
        """Bytes on disk per table ("schema.table"), counted as storage_bytes counts a schema."""
        raise NotImplementedError

    def grant_read_only(self, role: str, schemas: Sequence[str]) -> None:
        """Let `role` (BI tools) read every current and future table of `schemas`."""
        raise NotImplementedError

    def revoke_read_only(self, role: str, schemas: Sequence[str]) -> None:
        """Undo `grant_read_only` of `schemas` for `role`, where the role and schemas exist."""
        raise NotImplementedError

    # -- engine hooks --------------------------------------------------------------------------
    def _begin(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError


def _alias(alias: str | None) -> str:
    return f" as {quote_identifier(alias)}" if alias else ""


def _normalise_frame(frame: "pd.DataFrame") -> "pd.DataFrame":
    """Give object columns holding decimals, booleans or dates the dtypes DuckDB returns."""
    import datetime

    import pandas as pd

    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        sample = frame[column].dropna()
        if sample.empty:
            continue
        first = sample.iloc[0]
        if isinstance(first, Decimal):
            frame[column] = frame[column].astype("float64")
        elif isinstance(first, bool):
            frame[column] = frame[column].astype("boolean")
        elif isinstance(first, (datetime.date, datetime.datetime)):
            frame[column] = pd.to_datetime(frame[column]).astype("datetime64[us]")
    return frame


class _DuckDBWarehouse(Warehouse):
    engine = "duckdb"

    def __init__(self, target: WarehouseUrl) -> None:
        super().__init__(target)
        assert target.duckdb_path is not None
        target.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb_connection(str(target.duckdb_path))

    def close(self) -> None:
        self._con.close()

    def reclaim_space(self) -> str:
        # DuckDB reuses a deleted row's blocks itself; a checkpoint writes its log into the file.
        self.execute("checkpoint")
        return "checkpoint"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._con.execute(sql, list(params))

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        (count,) = self._con.execute(sql, list(params)).fetchone()
        return int(count)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._con.execute(sql, list(params)).fetchall()

    def fetch_df(self, sql: str, params: Sequence[Any] = (), categorical: Sequence[str] = ()) -> "pd.DataFrame":
        """Through Arrow where every column converts as DuckDB's own frames would: DuckDB's frames
        hold text as a Python object per value first (reading 6M basket rows: 8.6 s and 3.3 GB at
        peak, against 2.0 s and 1.9 GB through Arrow)."""
        relation = self._con.sql(sql, params=list(params) or None)
        # Streamed in batches only to encode them: whole, 34M basket rows came in 2.4 s, not 3.1.
        table = _encoded_table(relation.to_arrow_reader(ARROW_BATCH_ROWS), categorical) if categorical else relation.to_arrow_table()
        if _arrow_converts_alike(table.schema):
            return _frame_from_arrow(table)
        del table  # a type Arrow gives otherwise (an interval, a time zone): DuckDB's own frame
        return _as_categorical(self._own_frame(sql, params), categorical)

    def _own_frame(self, sql: str, params: Sequence[Any] = ()) -> "pd.DataFrame":
        """DuckDB's own DataFrame of a query, dates and timestamps as datetime64[us]."""
        frame = _normalise_frame(self._con.execute(sql, list(params)).df())
        dates = frame.select_dtypes(include="datetime64").columns
        return frame.astype({column: "datetime64[us]" for column in dates})

    def append_arrow(self, table: str, data: "pa.Table") -> int:
        if data.num_rows == 0:
            return 0
        columns = ", ".join(quote_identifier(c) for c in data.column_names)
        # Read by DuckDB's scan of this frame's variable, not registered: DuckDB keeps a registered
        # table's buffers alive until the transaction ends, unregistered or not, so a first load
        # (one transaction) held every batch it read: 16 GB at a million customers.
        crmw_incoming_batch = data
        self._con.execute(f"insert into {qualified(table)} ({columns}) select {columns} from crmw_incoming_batch")
        return data.num_rows

    def storage_bytes(self) -> dict[str, int]:
        """A schema's bytes are the blocks its tables' column segments use (DuckDB has no per-table
        size); "total" is the file's used blocks. Checkpointed first, so the blocks are on disk."""
        block_size, blocks = self._table_blocks()
        (used_blocks,) = self._con.execute("select used_blocks from pragma_database_size()").fetchone()
        schemas: dict[str, set[int]] = {}
        for name, ids in blocks.items():
            schemas.setdefault(name.split(".")[0], set()).update(ids)
        return {**{schema: len(ids) * block_size for schema, ids in sorted(schemas.items())}, "total": used_blocks * block_size}

    def table_bytes(self) -> dict[str, int]:
        """A table's bytes are the blocks its column segments use; a block small segments share
        counts for each of its tables."""
        block_size, blocks = self._table_blocks()
        return {name: len(ids) * block_size for name, ids in blocks.items()}

    def _table_blocks(self) -> tuple[int, dict[str, set[int]]]:
        """The block size and, per table ("schema.table"), the ids of the blocks it uses, after a
        checkpoint."""
        self._con.execute("checkpoint")
        (block_size,) = self._con.execute("select block_size from pragma_database_size()").fetchone()
        blocks: dict[str, set[int]] = {}
        for schema, table in self.fetchall(
            "select schema_name, table_name from duckdb_tables() where database_name = current_database() order by 1, 2"
        ):
            name = f"{schema}.{table}"
            rows = self._con.execute(
                "select distinct unnest(list_append(additional_block_ids, block_id)) from pragma_storage_info(?)"
                " where block_id >= 0",
                [name],
            ).fetchall()
            blocks[name] = {block for (block,) in rows}
        return block_size, blocks

    def grant_read_only(self, role: str, schemas: Sequence[str]) -> None:
        """A DuckDB file has no roles: BI tools open it read-only (access_mode=read_only)."""

    def revoke_read_only(self, role: str, schemas: Sequence[str]) -> None:
        """A DuckDB file has no roles."""

    def _begin(self) -> None:
        self._con.begin()

    def _commit(self) -> None:
        self._con.commit()

    def _rollback(self) -> None:
        self._con.rollback()


# PostgreSQL type OIDs and the dtype DuckDB's frames give the same SQL type.
_POSTGRES_DTYPES = {
    16: "bool",  # boolean
    20: "int64",  # bigint
    21: "int16",  # smallint
    23: "int32",  # integer
    700: "float32",  # real
    701: "float64",  # double precision
    1700: "float64",  # numeric
    1082: "datetime64[us]",  # date
    1114: "datetime64[us]",  # timestamp
}


@functools.cache
def _postgres_arrow_types() -> dict[int, Any]:
    """The Arrow type COPY's CSV text of a PostgreSQL type (by its type oid) parses into."""
    import pyarrow as pa

    text = pa.string()
    return {
        16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 700: pa.float32(), 701: pa.float64(),
        1700: pa.float64(), 1082: pa.date32(), 1114: pa.timestamp("us"),
        25: text, 1043: text, 1042: text, 19: text,  # text, varchar, char(n), name
    }


def _frame_from_csv(text: "IO[bytes] | None", names: list[str], arrow_types: list[Any],
                    categorical: Sequence[str] = ()) -> "pd.DataFrame":
    """COPY's CSV (NULL an unquoted empty field, an empty string "") as a DataFrame with the dtypes
    DuckDB's frames have: str, int64 / Int64 (with NULLs), float64, bool / boolean, datetime64[us];
    the `categorical` columns parsed block by block straight into dictionaries."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    arrow_types = [pa.dictionary(pa.int32(), kind) if name in categorical else kind for name, kind in zip(names, arrow_types)]
    if text is not None:
        table = pacsv.read_csv(
            text,
            read_options=pacsv.ReadOptions(column_names=names),
            # Text may hold line breaks (comments): without this, Arrow's parallel reader may cut
            # a large input inside a quoted value.
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=dict(zip(names, arrow_types)), true_values=["t"], false_values=["f"],
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
            ),
        )
    else:
        table = pa.table({name: pa.array([], kind) for name, kind in zip(names, arrow_types)})
    return _frame_from_arrow(table.unify_dictionaries())


def _frame_from_arrow(table: "pa.Table") -> "pd.DataFrame":
    """An Arrow table as a DataFrame with the dtypes DuckDB's frames have: str, int / Int (with
    NULLs), float64 (decimals too), bool / boolean, datetime64[us] (dates too); dictionary-encoded
    text as category. Text goes from Arrow to pandas' Arrow-backed strings without a Python object
    per value."""
    import pandas as pd
    import pyarrow as pa

    columns = {}
    for name, column in zip(table.column_names, table.columns):
        kind = column.type
        if pa.types.is_decimal(kind):
            column, kind = column.cast(pa.float64()), pa.float64()
        if pa.types.is_date32(kind):
            column, kind = column.cast(pa.timestamp("us")), pa.timestamp("us")
        if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            nullable = pd.BooleanDtype() if pa.types.is_boolean(kind) else pd.api.types.pandas_dtype(f"Int{kind.bit_width}")
            series = column.to_pandas(types_mapper={kind: nullable}.get)
            columns[name] = series if column.null_count else series.astype(nullable.numpy_dtype)
        elif pa.types.is_string(kind) and column.null_count == len(column):
            columns[name] = pd.Series([None] * len(column), dtype=object)  # DuckDB's frame for text with no value
        elif pa.types.is_dictionary(kind):
            # Categories sorted, as astype("category") sorts them: sorting or grouping by the column
            # then orders by the text, not by the order values first came in.
            series = column.to_pandas()
            columns[name] = series.cat.reorder_categories(series.cat.categories.sort_values())
        else:
            columns[name] = column.to_pandas()
    return pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows))


def _encoded_table(reader: "pa.RecordBatchReader", categorical: Sequence[str]) -> "pa.Table":
    """The reader's batches as one table, its `categorical` columns dictionary-encoded batch by
    batch, the dictionaries unified so that pandas makes one Categorical of each column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    _check_categorical(categorical, dict(zip(reader.schema.names, reader.schema.types)))
    encode = [name in categorical for name in reader.schema.names]
    schema = pa.schema([pa.field(field.name, pa.dictionary(pa.int32(), field.type)) if encoded else field
                        for field, encoded in zip(reader.schema, encode)])
    batches = [
        pa.RecordBatch.from_arrays([pc.dictionary_encode(column) if encoded else column
                                    for column, encoded in zip(batch.columns, encode)], schema=schema)
        for batch in reader
    ]
    return pa.Table.from_batches(batches, schema=schema).unify_dictionaries()


def _check_categorical(categorical: Sequence[str], types: Mapping[str, Any]) -> None:
    import pyarrow as pa

    for name in categorical:
        if name not in types or not pa.types.is_string(types[name]):
            raise ValueError(f"categorical column {name!r}: not a text column of the query ({', '.join(types)})")


def _as_categorical(frame: "pd.DataFrame", categorical: Sequence[str]) -> "pd.DataFrame":
    """A frame read whole, its `categorical` columns turned into categoricals after."""
    return frame.astype({name: "category" for name in categorical}) if categorical else frame


def _arrow_converts_alike(schema: "pa.Schema") -> bool:
    """Whether _frame_from_arrow gives every column of `schema` the dtype DuckDB's own frames have."""
    import pyarrow as pa

    def alike(kind: "pa.DataType") -> bool:
        return (
            pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_floating(kind)
            or pa.types.is_string(kind) or pa.types.is_date32(kind) or pa.types.is_decimal(kind)
            or (pa.types.is_timestamp(kind) and kind.tz is None and kind.unit == "us")
            or (pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type))
        )

    return len(set(schema.names)) == len(schema.names) and all(alike(field.type) for field in schema)


def _as_dtype(values: "pd.Series", dtype: str) -> "pd.Series":
    """Cast an object column to `dtype`; integers and booleans holding NULLs take pandas'
    nullable types (Int64, boolean), as DuckDB's frames have them."""
    import pandas as pd

    if dtype.startswith("datetime64"):
        return pd.to_datetime(values).astype(dtype)
    if (dtype == "bool" or dtype.startswith("int")) and values.isna().any():
        dtype = "boolean" if dtype == "bool" else dtype.replace("int", "Int")
    return values.astype(dtype)


class _PostgresWarehouse(Warehouse):
    engine = "postgres"

    def __init__(self, target: WarehouseUrl) -> None:
        import psycopg

        super().__init__(target)
        parts = urlsplit(target.url)
        try:
            self._con = psycopg.connect(
                host=parts.hostname,
                port=parts.port or 5432,
                user=unquote(parts.username or ""),
                password=unquote(parts.password or "") or None,
                dbname=unquote(parts.path.lstrip("/")),
                autocommit=True,
                connect_timeout=10,
            )
        except psycopg.OperationalError as error:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise WarehouseUrlError(
                f"WAREHOUSE_URL={target.redacted()!r}: cannot connect to PostgreSQL ({reason})"
            ) from error
        # numeric arrives as Decimal, as from DuckDB (exact); fetch_df turns it into float64.
        self._transaction: Any = None

    def close(self) -> None:
        self._con.close()

    @staticmethod
    def _bind(sql: str, params: Sequence[Any]) -> str:
        return sql.replace("%", "%%").replace("?", "%s") if params else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._con.execute(self._bind(sql, params), list(params) or None)

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._con.execute(self._bind(sql, params), list(params) or None).rowcount

    @contextmanager
    def _catalog_change(self) -> Iterator[None]:
        # `if not exists` does not guard one session from another: two that both find a table
        # missing both add it to the catalog, and the later one fails on a unique violation (four
        # processes ensuring ml.trained_models on a fresh database at once: an error in 10 trials of
        # 15; a parallel crm_daily run lost campaign_uplift to it). A lock held to the end of the
        # transaction queues them, so the later one looks again after the first one's commit.
        with self.transaction():
            self.execute(f"select pg_advisory_xact_lock({CATALOG_LOCK})")
            yield

    def refresh_statistics(self, table: str) -> None:
        self.execute(f"analyze {qualified(table)}")

    def reclaim_space(self) -> str:
        # Every table the login may vacuum (its own): the dead rows of the daily delete+insert made
        # reusable, and the planner's statistics refreshed. Not inside a transaction (autocommit).
        self.execute("vacuum (analyze)")
        return "vacuum (analyze)"

    def empty_table(self, table: str) -> None:
        # Transactional in PostgreSQL, and it gives the table fresh, empty files.
        self.execute(f"truncate {qualified(table)}")

    def ensure_index(self, table: str, columns: Sequence[str], block_range: bool = False) -> None:
        schema, name, index = self._index_name(table, columns, block_range)
        # Looked up first: `create index if not exists` locks the table even when the index exists,
        # and waits a second (deadlock_timeout) for autovacuum to give way on a freshly loaded table.
        if not self._has_index(schema, index):
            with self._catalog_change():
                method = " using brin" if block_range else ""
                self.execute(f"create index if not exists {index} on {schema}.{name}{method} ({', '.join(columns)})")

    def drop_index(self, table: str, columns: Sequence[str]) -> None:
        schema, _, index = self._index_name(table, columns, block_range=False)
        if self._has_index(schema, index):  # looked up first, as in ensure_index
            self.execute(f"drop index if exists {schema}.{index}")

    @staticmethod
    def _index_name(table: str, columns: Sequence[str], block_range: bool) -> tuple[str, str, str]:
        schema, _, name = qualified(table).partition(".")
        suffix = "__brin" if block_range else ""
        return schema, name, f"{name}__{'__'.join(quote_identifier(column) for column in columns)}"[:63 - len(suffix)] + suffix

    def _has_index(self, schema: str, index: str) -> bool:
        return bool(self.fetchall("select 1 from pg_indexes where schemaname = ? and indexname = ?", (schema, index)))

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._con.execute(self._bind(sql, params), list(params) or None).fetchall()

    def fetch_df(self, sql: str, params: Sequence[Any] = (), categorical: Sequence[str] = ()) -> "pd.DataFrame":
        """Streamed as COPY's CSV text into Arrow when every column has a type Arrow parses (the
        models' inputs: millions of rows, where fetching rows held each value as a Python object
        several times over); row by row otherwise."""
        import psycopg

        query = psycopg.ClientCursor(self._con).mogrify(self._bind(sql, params), list(params) or None)
        with self._con.cursor() as cursor:
            cursor.execute(f"select * from ({query}) as result limit 0")
            description = cursor.description or []
        names = [column.name for column in description]
        arrow_types = [_postgres_arrow_types().get(column.type_code) for column in description]
        if None in arrow_types or len(set(names)) < len(names):
            return _as_categorical(self._fetch_df_by_rows(sql, params), categorical)
        _check_categorical(categorical, dict(zip(names, arrow_types)))
        # Spooled to a file past a size: held in memory (a buffer, then a copy of it), a large
        # result's whole CSV text sat beside the table parsed from it.
        with tempfile.SpooledTemporaryFile(max_size=CSV_IN_MEMORY_BYTES) as text:
            with self._con.cursor() as cursor, cursor.copy(f"copy ({query}) to stdout (format csv)") as copy:
                for chunk in copy:
                    text.write(chunk)
            empty = text.tell() == 0
            text.seek(0)
            return _frame_from_csv(None if empty else text, names, arrow_types, categorical)

    def _fetch_df_by_rows(self, sql: str, params: Sequence[Any]) -> "pd.DataFrame":
        import pandas as pd

        cursor = self._con.execute(self._bind(sql, params), list(params) or None)
        description = cursor.description or []
        rows = cursor.fetchall()
        frame = pd.DataFrame.from_records(rows, columns=[column.name for column in description])
        # Type each column from its PostgreSQL type, not from its values, so NULLs and empty
        # results give DuckDB's dtypes too (and integers never pass through float).
        for position, column in enumerate(description):
            dtype = _POSTGRES_DTYPES.get(column.type_code)
            if dtype is not None:
                values = pd.Series([row[position] for row in rows], dtype=object, index=frame.index)
                frame.isetitem(position, _as_dtype(values, dtype))
        return _normalise_frame(frame)

    def append_arrow(self, table: str, data: "pa.Table") -> int:
        import pyarrow.csv as pacsv

        if data.num_rows == 0:
            return 0
        columns = ", ".join(quote_identifier(c) for c in data.column_names)
        # CSV is COPY's fastest text path; pyarrow quotes every string, so an unquoted empty
        # field is a NULL and "" an empty string, exactly as COPY's CSV format reads them.
        options = pacsv.WriteOptions(include_header=False)
        with self.transaction(), self._con.cursor() as cursor:
            with cursor.copy(f"copy {qualified(table)} ({columns}) from stdin (format csv)") as copy:
                for batch in data.to_batches(max_chunksize=_COPY_BATCH_ROWS):
                    buffer = io.BytesIO()
                    pacsv.write_csv(batch, buffer, write_options=options)
                    copy.write(buffer.getvalue())
        return data.num_rows

    def storage_bytes(self) -> dict[str, int]:
        """Tables, materialized views and their indexes and TOAST per schema; "total" is the database."""
        schemas: dict[str, int] = {}
        for name, size in self.table_bytes().items():
            schema = name.split(".")[0]
            schemas[schema] = schemas.get(schema, 0) + size
        (total,) = self.fetchall("select pg_database_size(current_database())")[0]
        return {**schemas, "total": int(total)}

    def table_bytes(self) -> dict[str, int]:
        """Each table or materialized view with its indexes and TOAST."""
        return {f"{schema}.{table}": int(size) for schema, table, size in self.fetchall(
            "select namespace.nspname, relation.relname, pg_total_relation_size(relation.oid) from pg_class as relation"
            " join pg_namespace as namespace on namespace.oid = relation.relnamespace"
            " where relation.relkind in ('r', 'm', 'p') and namespace.nspname not in ('pg_catalog', 'information_schema')"
            " and namespace.nspname not like 'pg_toast%' order by 1, 2"
        )}

    def grant_read_only(self, role: str, schemas: Sequence[str]) -> None:
        role = quote_identifier(role)
        with self.transaction():
            if not self.fetchall("select 1 from pg_roles where rolname = ?", (role,)):
                self.execute(f"create role {role} nologin")
            for schema in schemas:
                schema = quote_identifier(schema)
                self.execute(f"create schema if not exists {schema}")
                self.execute(f"grant usage on schema {schema} to {role}")
                self.execute(f"grant select on all tables in schema {schema} to {role}")
                self.execute(f"alter default privileges in schema {schema} grant select on tables to {role}")

    def revoke_read_only(self, role: str, schemas: Sequence[str]) -> None:
        if not self.fetchall("select 1 from pg_roles where rolname = ?", (role,)):
            return
        role = quote_identifier(role)
        with self.transaction():
            for (schema,) in self.fetchall(
                "select nspname from pg_namespace where nspname in (" + ", ".join("?" for _ in schemas) + ")", tuple(schemas)
            ):
                schema = quote_identifier(schema)
                self.execute(f"alter default privileges in schema {schema} revoke select on tables from {role}")
                self.execute(f"revoke select on all tables in schema {schema} from {role}")
                self.execute(f"revoke usage on schema {schema} from {role}")

    def _begin(self) -> None:
        self._transaction = self._con.transaction()
        self._transaction.__enter__()

    def _commit(self) -> None:
        transaction, self._transaction = self._transaction, None
        transaction.__exit__(None, None, None)

    def _rollback(self) -> None:
        import psycopg

        transaction, self._transaction = self._transaction, None
        transaction.__exit__(psycopg.Rollback, psycopg.Rollback(), None)


# Statements plain parquet tables cannot run (Spark raises only once it has planned them, in terms
# of its own table capabilities): rows go through delete_rows and replace_rows instead.
_ROW_CHANGING_STATEMENT = re.compile(r"^\s*(delete\s+from|update\s|merge\s+into)", re.IGNORECASE)
# Where a rewrite of `schema.table` holds the rows the table keeps until they replace its own, and
# the table property that marks that copy whole.
_REWRITE_SUFFIX = "__crmw_rewrite"
_REWRITE_COMPLETE = "crmw.rewrite_complete"
# The temporary view columns_by_table filters, Spark having no information_schema.
_CATALOG_COLUMNS_VIEW = "crmw_catalog_columns"


def _spark_session(target: WarehouseUrl) -> Any:
    """The process's SparkSession with its warehouse under the URL's folder (warehouse/spark.py),
    refused when another session, on another folder, already runs here: Spark keeps one session
    per process, and its tables would go to that other folder."""
    from warehouse.spark import local_spark_session

    assert target.spark_folder is not None
    session = local_spark_session(target.spark_folder, app_name="crm-warehouse")
    used = _warehouse_directory(session)
    if target.spark_folder not in used.parents:
        raise WarehouseUrlError(
            f"WAREHOUSE_URL={target.redacted()!r}: a Spark session with its warehouse in {used} already runs in this"
            f" process (one session per process); expected one whose warehouse lies in {target.spark_folder}"
        )
    return session


def _warehouse_directory(session: Any) -> Path:
    return Path(unquote(urlsplit(session.conf.get("spark.sql.warehouse.dir")).path))


def _spark_parameter(session: Any, value: Any) -> Any:
    """A Python value as Spark binds it: Spark has no uuid type (digests are their text), and
    pyspark takes a naive datetime for an instant in the Python process's own time zone, where the
    project's timestamps are wall-clock times (timestamp_ntz): it goes as a literal of that type."""
    import calendar
    import datetime
    import uuid

    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime) and value.tzinfo is None:
        from pyspark.sql.classic.column import Column

        micros = calendar.timegm(value.timetuple()) * 1_000_000 + value.microsecond
        wall_clock = session._jvm.org.apache.spark.sql.catalyst.util.DateTimeUtils.microsToLocalDateTime(micros)
        return Column(session._jvm.org.apache.spark.sql.functions.lit(wall_clock))
    return value


def _rows_written(frame: Any) -> int | None:
    """The rows an insert's command wrote, from the metrics Spark keeps on its physical plan (a
    command runs as spark.sql returns); None for a statement that writes no rows."""
    plan = frame._jdf.queryExecution().executedPlan()
    if plan.getClass().getSimpleName() == "CommandResultExec":
        plan = plan.commandPhysicalPlan()
    # An insert whose query joins or shuffles runs adaptively: its write is the final plan's stage.
    if plan.getClass().getSimpleName() == "AdaptiveSparkPlanExec":
        plan = plan.executedPlan()
    if plan.getClass().getSimpleName() == "ResultQueryStageExec":
        plan = plan.plan()
    metrics = plan.metrics()
    return int(metrics.apply("numOutputRows").value()) if metrics.contains("numOutputRows") else None


def _naive_timestamps(table: "pa.Table") -> "pa.Table":
    """Spark's `timestamp` (an instant) as the wall-clock time in its session's zone (UTC in
    warehouse/spark.py), the zone-less timestamps the other engines give."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for position, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            table = table.set_column(position, field.name, pc.local_timestamp(table.column(position)).cast(pa.timestamp("us")))
    return table


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


class _SparkWarehouse(Warehouse):
    """Spark SQL on this process's local SparkSession (warehouse/spark.py), whose parquet tables
    and Derby metastore live in the URL's folder.

    Where plain parquet tables make it differ from the other engines:
    - No transactions: `transaction()` runs its block as elsewhere, but each statement is written
      as it runs; a failure half-way leaves the statements before it written (a warning says so).
      replace_rows, delete_rows and update_rows each end in one overwrite of the table, so they
      are whole or not done (a rewrite cut short is finished by the next one on that table).
    - No DELETE, UPDATE or MERGE: `execute` refuses them; rows go through `delete_rows`,
      `update_rows` and `replace_rows`, which rewrite the table without the rows, or with them changed.
    - One session per process: `close()` leaves it running (a start costs tens of seconds); it ends
      with the process, or when whoever started it stops it. Derby, the metastore, lets one
      process at a time open the folder: no two tasks at once on one folder.
    """

    engine = "spark"
    # The schema kept in Spark's own table properties alone, not also as Hive columns: Hive knows no
    # timestamp_ntz, and a table whose columns Hive could hold refused to gain one (the metastore
    # would have to swap its columns for Spark's placeholder, which it takes for a type change).
    _table_storage = " using parquet options ('skipHiveMetadata' 'true')"

    def __init__(self, target: WarehouseUrl) -> None:
        super().__init__(target)
        self._spark = _spark_session(target)

    def close(self) -> None:
        """The session outlives this connection: see the class's notes."""

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if _ROW_CHANGING_STATEMENT.match(sql):
            raise ValueError(
                f"statement {' '.join(sql.split())[:80]!r}: Spark's parquet tables have no DELETE, UPDATE or MERGE;"
                " expected Warehouse.delete_rows(table, where, params), update_rows(table, sets, where, params) or"
                " replace_rows(table, match, rows)"
            )
        return self._spark.sql(sql, args=[_spark_parameter(self._spark, value) for value in params] or None)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        # Spark runs a command (DDL, insert) here; a query it only plans, as nothing reads it.
        self._sql(sql, params)

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        written = _rows_written(self._sql(sql, params))
        if written is None:
            raise ValueError(
                f"statement {' '.join(sql.split())[:80]!r}: Spark counts the rows of an insert only; expected an"
                " insert (delete_rows returns the rows it deleted)"
            )
        return written

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(row) for row in self._sql(sql, params).collect()]

    def fetch_df(self, sql: str, params: Sequence[Any] = (), categorical: Sequence[str] = ()) -> "pd.DataFrame":
        """Spark hands the result over as Arrow batches (no Python object per value), whole: the
        `categorical` columns are encoded batch by batch once it has arrived."""
        table = _naive_timestamps(self._sql(sql, params).toArrow())
        if not _arrow_converts_alike(table.schema):  # an array, a map, an interval: Arrow's own frame
            return _as_categorical(_normalise_frame(table.to_pandas()), categorical)
        if categorical:
            table = _encoded_table(table.to_reader(ARROW_BATCH_ROWS), categorical)
        return _frame_from_arrow(table)

    # -- transactions: none on Spark (see the class's notes) ----------------------------------
    def _begin(self) -> None:
        pass

    def _commit(self) -> None:
        pass

    def _rollback(self) -> None:
        log.warning("Spark has no transactions: the statements run before the failure stay written")

    # -- catalog: Spark has no information_schema ----------------------------------------------
    def ensure_schema(self, schema: str) -> None:
        if not self._spark.catalog.databaseExists(quote_identifier(schema)):
            self.execute(f"create database if not exists {schema}")

    def column_types(self, table: str) -> dict[str, str]:
        """The schema the session resolves the table to (the catalog's listColumns and tableExists
        asked the metastore each time: 0.6 and 0.2 s a call against 0.02 s, and a load asks a few
        times per table); the same type names."""
        from pyspark.errors import AnalysisException

        try:
            schema = self._spark.table(qualified(table)).schema
        except AnalysisException as error:
            if error.getCondition() == "TABLE_OR_VIEW_NOT_FOUND":
                return {}
            raise
        return {field.name: field.dataType.simpleString().lower() for field in schema.fields}

    def columns_by_table(self, where: str, params: Sequence[Any] = ()) -> dict[str, list[str]]:
        """As on the other engines, `where` filtering a view of the catalog named `columns` with
        information_schema.columns's table_schema, table_name, column_name, ordinal_position and
        data_type (Spark's type names); built from the catalog, table by table, of the tables
        `where` keeps by their schema and name alone when it reads nothing else: resolving a table
        reads the metastore, a view analyses its query too (a dbt build's 400 relations: 19 s)."""
        from pyspark.errors import AnalysisException

        tables = self._catalog_tables()
        self._spark.createDataFrame(tables, "table_schema string, table_name string").createOrReplaceTempView(
            _CATALOG_COLUMNS_VIEW)
        try:
            tables = self.fetchall(f"select table_schema, table_name from {_CATALOG_COLUMNS_VIEW} as columns where {where}", params)
        except AnalysisException:  # `where` reads a column's name, position or type
            pass
        rows = [
            (schema, table, column, position, kind)
            for schema, table in tables
            for position, (column, kind) in enumerate(self.column_types(f"{schema}.{table}").items(), start=1)
        ]
        self._spark.createDataFrame(
            rows, "table_schema string, table_name string, column_name string, ordinal_position int, data_type string"
        ).createOrReplaceTempView(_CATALOG_COLUMNS_VIEW)
        tables: dict[str, list[str]] = {}
        for schema, table, column in self.fetchall(
            f"select table_schema, table_name, column_name from {_CATALOG_COLUMNS_VIEW} as columns"
            f" where {where} order by table_schema, table_name, ordinal_position", tuple(params)
        ):
            tables.setdefault(f"{schema}.{table}", []).append(column)
        return tables

    def _catalog_tables(self, schemas: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """(schema, table) of every table and view of `schemas` (every schema when None), sorted;
        temporary views left out."""
        catalog = self._spark.catalog
        if schemas is None:
            names = [database.name for database in catalog.listDatabases()]
        else:
            names = [schema for schema in schemas if catalog.databaseExists(quote_identifier(schema))]
        # SHOW TABLES lists the names alone: catalog.listTables reads each table's metadata as well
        # (a dbt build's 179 relations: 37 s against 1.3 s).
        return sorted((schema, row.tableName) for schema in names
                      for row in self._spark.sql(f"show tables in {quote_identifier(schema)}").collect() if not row.isTemporary)

    def row_counts(self, schemas: Sequence[str]) -> list[tuple[str, int]]:
        """In one query: each count on its own is a Spark job (110 tables of a run's output schemas,
        loaded machine: 50 s one by one, 21-23 s as one query)."""
        names = [f"{schema}.{table}" for schema, table in self._catalog_tables(schemas)]
        if not names:
            return []
        counts = dict(self.fetchall(" union all ".join(f"select '{name}', count(*) from {qualified(name)}" for name in names)))
        return [(name, counts[name]) for name in names]

    def ensure_index(self, table: str, columns: Sequence[str], block_range: bool = False) -> None:
        """None: parquet tables have no indexes; Spark skips the row groups whose min and max
        (which parquet keeps per column, as a block-range index would) rule out a filter."""

    def drop_index(self, table: str, columns: Sequence[str]) -> None:
        """None to drop: see ensure_index."""

    def refresh_statistics(self, table: str) -> None:
        # The table's size, which Spark's planner chooses broadcast joins by, from the file listing
        # alone. A full `compute statistics` reads every row for row counts, which only the
        # cost-based optimizer reads (off by default); Spark drops a table's statistics on writes.
        self.execute(f"analyze table {qualified(table)} compute statistics noscan")

    def reclaim_space(self) -> str:
        """Parquet tables are rewritten whole, so no dead rows wait for a vacuum; what is left to
        reclaim is the copies of rewrites cut short, each finished or dropped (see delete_rows)."""
        leftovers = [f"{schema}.{table}" for schema, table in self._catalog_tables() if table.endswith(_REWRITE_SUFFIX)]
        for scratch in leftovers:
            self._finish_interrupted_rewrite(scratch.removesuffix(_REWRITE_SUFFIX))
        return f"finished interrupted rewrites: {', '.join(leftovers)}" if leftovers else "nothing to reclaim"

    def empty_table(self, table: str) -> None:
        self.execute(f"truncate table {qualified(table)}")

    # -- rows ----------------------------------------------------------------------------------
    def append_arrow(self, table: str, data: "pa.Table") -> int:
        if data.num_rows == 0:
            return 0
        with self._as_table_rows(table, data) as rows:
            rows.write.insertInto(qualified(table))
        return data.num_rows

    @contextmanager
    def _as_table_rows(self, table: str, data: "pa.Table") -> Iterator[Any]:
        """`data` as a Spark DataFrame of the table's columns in its order (insertInto matches by
        position), each cast to the column's type, a column `data` lacks as nulls; readable
        inside the block. The rows go through a parquet file Spark reads: handed over by
        createDataFrame, a million rows (four columns) took 9.9 s against 2.3 s, and the session's
        driver, holding them whole, ran out of its heap and hung the job."""
        import pyarrow.parquet as pq
        from pyspark.sql import functions as F

        types = self.column_types(table)
        if not types:
            raise ValueError(f"table {table!r}: not found; expected a table ensure_table made")
        unknown = [name for name in data.column_names if name not in types]
        if unknown:
            raise ValueError(f"columns {unknown} of the rows for {table}: not in the table; expected some of {list(types)}")
        assert self.target.spark_folder is not None
        with tempfile.TemporaryDirectory(prefix="incoming-", dir=self.target.spark_folder) as folder:
            pq.write_table(data, Path(folder) / "rows.parquet")
            incoming = self._spark.read.parquet(folder)
            yield incoming.select([
                (F.col(name) if name in data.column_names else F.lit(None)).cast(kind).alias(name) for name, kind in types.items()
            ])

    def delete_rows(self, table: str, where: str, params: Sequence[Any] = (), alias: str | None = None) -> int:
        """Parquet tables have no DELETE: the table is rewritten with the rows for which `where` is
        not true (false or null). They go to a scratch table first (Spark refuses to overwrite a
        table it reads), which then overwrites the table and is dropped. Costs a count, then, when
        rows match, a read and two writes of the rows kept: about the cost of copying the table.
        When every row matches (as when publish empties a whole copy) a truncate does it instead."""
        name = qualified(table)
        self._finish_interrupted_rewrite(name)
        source = f"{name}{_alias(alias)}"
        ((matched,),) = self.fetchall(f"select count(*) from {source} where {where}", params)
        if matched and self.fetchall(f"select count(*) from {name}") == [(matched,)]:
            self.empty_table(name)
        elif matched:
            self._rewrite(name, self._sql(f"select * from {source} where ({where}) is not true", params))
        return int(matched)

    def update_rows(self, table: str, sets: Mapping[str, str], where: str, params: Sequence[Any] = (),
                    set_params: Sequence[Any] = ()) -> int:
        """Parquet tables have no UPDATE: the table is rewritten (as by delete_rows) from the rows
        for which `where` is not true and the others with `sets` applied, each value cast to its
        column's type. Costs what delete_rows costs."""
        name = qualified(table)
        types = self.column_types(name)
        unknown = [column for column in sets if column not in types]
        if unknown:
            raise ValueError(f"columns {unknown} to update in {table}: not in the table; expected some of {list(types)}")
        self._finish_interrupted_rewrite(name)
        ((matched,),) = self.fetchall(f"select count(*) from {name} where {where}", params)
        if matched:
            # The new values under names of their own first: each `sets` expression reads the row as it was.
            new_values = ", ".join(f"cast({value} as {types[column]}) as crmw_new__{column}" for column, value in sets.items())
            columns = ", ".join(f"crmw_new__{column} as {column}" if column in sets else column for column in types)
            self._rewrite(name, self._sql(
                f"select * from {name} where ({where}) is not true union all select {columns}"
                f" from (select *, {new_values} from {name} where {where}) as updated",
                (*params, *set_params, *params),
            ))
        return int(matched)

    def replace_rows(self, table: str, match: Mapping[str, Any], data: "pa.Table") -> int:
        """One rewrite of the table with the rows not matching and `data` (see delete_rows): a
        failure to convert `data` leaves the table untouched, and none matching is a plain append."""
        name = qualified(table)
        where = " and ".join(f"{quote_identifier(column)} = ?" for column in match)
        with self._as_table_rows(name, data) as incoming:
            self._finish_interrupted_rewrite(name)
            ((matched,),) = self.fetchall(f"select count(*) from {name} where {where}", tuple(match.values()))
            if not matched:
                if data.num_rows:
                    incoming.write.insertInto(name)
                return data.num_rows
            kept = self._sql(f"select * from {name} where ({where}) is not true", tuple(match.values()))
            self._rewrite(name, kept.unionByName(incoming) if data.num_rows else kept)
        return data.num_rows

    def _rewrite(self, table: str, rows: Any) -> None:
        """Replace every row of `table` by `rows` (a query that may read `table`) through a scratch
        copy, marked whole once written: a copy found unmarked was cut short before the table
        was touched, a marked one holds what the table must become."""
        scratch = table + _REWRITE_SUFFIX
        rows.write.format("parquet").saveAsTable(scratch)
        self.execute(f"alter table {scratch} set tblproperties ('{_REWRITE_COMPLETE}' = 'true')")
        self.execute(f"insert overwrite table {table} select * from {scratch}")
        self.execute(f"drop table {scratch}")

    def _finish_interrupted_rewrite(self, table: str) -> None:
        scratch = table + _REWRITE_SUFFIX
        if not self._spark.catalog.tableExists(scratch):
            return
        if dict(self.fetchall(f"show tblproperties {scratch}")).get(_REWRITE_COMPLETE) == "true":
            log.warning("%s: finishing a rewrite cut short, from its whole copy %s", table, scratch)
            self.execute(f"insert overwrite table {table} select * from {scratch}")
        else:
            log.warning("%s: dropping %s, the copy of a rewrite cut short before it touched the table", table, scratch)
        self.execute(f"drop table {scratch}")

    # -- storage and access --------------------------------------------------------------------
    def table_bytes(self) -> dict[str, int]:
        """The files in each table's folder (parquet, and Spark's checksum files beside them)."""
        sizes = {}
        for schema, table in self._catalog_tables():
            location = dict((row[0], row[1]) for row in self.fetchall(f"describe table extended {schema}.{table}")).get("Location")
            if location:  # a view has none
                sizes[f"{schema}.{table}"] = _folder_bytes(Path(unquote(urlsplit(location).path)))
        return sizes

    def storage_bytes(self) -> dict[str, int]:
        """Tables' files per schema; "total" is every file in the warehouse directory (the Derby
        metastore beside it, names and no rows, left out)."""
        schemas: dict[str, int] = {}
        for name, size in self.table_bytes().items():
            schemas[name.split(".")[0]] = schemas.get(name.split(".")[0], 0) + size
        return {**dict(sorted(schemas.items())), "total": _folder_bytes(_warehouse_directory(self._spark))}

    def grant_read_only(self, role: str, schemas: Sequence[str]) -> None:
        """A local Spark session has no roles: BI tools reach Spark through a Thrift server, whose
        access control is its own."""

    def revoke_read_only(self, role: str, schemas: Sequence[str]) -> None:
        """A local Spark session has no roles."""
