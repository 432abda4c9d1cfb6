"""Load one source system's deliveries for one logical date into its raw schema.

A run for date D owns the rows it loads (`_batch_date = D`). Re-running D first removes what an
earlier attempt at D loaded, inside the same transaction as the new load, so a rerun or a retry
after a crash leaves raw exactly as one clean run would.

Raw keeps every distinct version of a record once: a row whose key and contract values
(`_version_hash`) raw already holds is counted unchanged, not loaded again. So loading days one
by one or all at once gives the same versions, and re-delivered rows never duplicate.

- File sources (CSV drops, JSON lines): every file dropped on or before D that the load log does
  not hold with the same checksum is loaded; a changed file is loaded again.
- SQL sources: rows whose cursor lies after the last cursor loaded before D minus a look-back
  window (late updates), up to the end of D. Then the key reconciliation (`reconcile_system`, a
  step of its own: the source sums every key into bucket digests) compares the source's keys with
  raw's, bucket by bucket (extract_load/key_state.py): a key the source no longer has gets a
  tombstone version (`_deleted`), a key raw lacks (written too late even for the look-back) is
  read and loaded.

Every source row ends up loaded, unchanged or quarantined with a reason (and, for a file row,
its bytes as delivered); the load audit counts them, with deletes, recovered rows and the cursor
before and after. A file in a system's folder that no entity's layout names is never loaded, and
never ignored silently: it is listed in raw_meta.unexpected_files.

A row (loaded or quarantined) holding the CRM id or an email of a customer erased under the right
to erasure is erased as it comes, in the load's transaction, and counted (`rows_erased`;
warehouse/erasure.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence
from urllib.parse import unquote

from extract_load.contract import Entity, SourceContract, load_contract
from extract_load.parse import (
    FileDrop,
    ParsedDelivery,
    Reject,
    csv_header,
    parse_csv_files,
    parse_jsonl_files,
    parse_table,
)
from extract_load.key_state import KEY_BUCKETS, LATEST_VERSION_FIRST, live_key_state, source_bucketed_rows
from extract_load.sql_source import SourceReadError, SqlSource
from warehouse import PROJECT_ROOT, Warehouse, connect
from warehouse.adapter import duckdb_connection, redact_url, sql_type, storage_order
from warehouse.erasure import erase_loaded_rows, erase_quarantined_rows

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

META_SCHEMA = "raw_meta"
LOAD_LOG = f"{META_SCHEMA}.load_log"
QUARANTINE = f"{META_SCHEMA}.quarantine"
DEFAULT_SOURCE_DIR = PROJECT_ROOT / ".local" / "sources"
LOAD_AUDIT = f"{META_SCHEMA}.load_audit"
UNEXPECTED_FILES = f"{META_SCHEMA}.unexpected_files"

# Columns every raw row carries besides the source's own. The run that loaded a row is the one
# `load_audit` records for its entity, step and `_batch_date` (a rerun of a date replaces that
# date's rows): raw rows do not repeat its id.
RAW_METADATA_COLUMNS = {
    "_batch_date": "date",
    "_delivery_date": "date",
    "_source_file": "string",
    "_source_row": "integer",
    "_loaded_at": "timestamp",
    "_version_hash": "digest",
    "_deleted": "boolean",
}
DEFAULT_LOOKBACK_HOURS = 72
DEFAULT_MAX_QUARANTINE_RATIO = 0.05
# Below this many rows read, a ratio says more about the delivery's size than about the source: one
# typo in a 2-row delivery is 50%. At 100 rows and the default 5%, it takes 6 bad rows to fail.
DEFAULT_QUARANTINE_MIN_ROWS = 100
# Loads this large refresh the planner's statistics of their raw table (PostgreSQL): planned as
# the small table it was, the next day's lookup of held versions scanned it instead of its index.
STATISTICS_REFRESH_ROWS = 100_000
# Files parsed in one pass at most: a first load reads years of daily drops.
PARSE_GROUP_BYTES = 256 * 2**20
# md5's 32 hex digits as the groups of a uuid's text (8-4-4-4-12).
_UUID_PARTS = "^(.{8})(.{4})(.{4})(.{4})(.{12})$"
_META_TABLES = {
    LOAD_LOG: {
        "system": "string",
        "entity": "string",
        "file_name": "string",
        "file_size": "integer",
        "file_modified_ns": "integer",
        "sha256": "string",
        "rows_read": "integer",
        "_batch_date": "date",
        "_run_id": "string",
        "_loaded_at": "timestamp",
    },
    QUARANTINE: {
        "system": "string",
        "entity": "string",
        "source_file": "string",
        "source_row": "integer",
        "raw_text": "string",
        "raw_bytes_base64": "string",
        "reason": "string",
        "_batch_date": "date",
        "_run_id": "string",
        "_loaded_at": "timestamp",
    },
    LOAD_AUDIT: {
        "system": "string",
        "entity": "string",
        "rows_read": "integer",
        "rows_loaded": "integer",
        "rows_unchanged": "integer",
        "rows_quarantined": "integer",
        "rows_deleted": "integer",
        "rows_recovered": "integer",
        "rows_erased": "integer",
        "files_loaded": "integer",
        "files_skipped": "integer",
        "new_columns": "string",
        "cursor_before": "string",
        "cursor_after": "string",
        "seconds": "double",
        "full_refresh": "boolean",
        "step": "string",
        "_batch_date": "date",
        "_run_id": "string",
        "_loaded_at": "timestamp",
    },
    UNEXPECTED_FILES: {
        "system": "string",
        "file_name": "string",
        "file_size": "integer",
        "file_modified_ns": "integer",
        "reason": "string",
        "_batch_date": "date",
        "_run_id": "string",
        "_loaded_at": "timestamp",
    },
}


class ExtractError(RuntimeError):
    """A delivery cannot be loaded; the message names the source, file or table and the problem."""


@dataclass(frozen=True)
class ExtractSettings:
    source_dir: Path
    sales_db_url: str
    max_quarantine_ratio: float = DEFAULT_MAX_QUARANTINE_RATIO
    quarantine_min_rows: int = DEFAULT_QUARANTINE_MIN_ROWS
    lookback: dt.timedelta = dt.timedelta(hours=DEFAULT_LOOKBACK_HOURS)

    @classmethod
    def from_env(cls) -> "ExtractSettings":
        """CRMW_SOURCE_DIR, CRMW_SALES_DB_URL (or the Airflow connection CRMW_SALES_CONN_ID),
        CRMW_MAX_QUARANTINE_RATIO, CRMW_QUARANTINE_MIN_ROWS and CRMW_SQL_LOOKBACK_HOURS."""
        source_dir = Path(os.environ.get("CRMW_SOURCE_DIR") or DEFAULT_SOURCE_DIR).resolve()
        ratio = _number_from_env("CRMW_MAX_QUARANTINE_RATIO", str(DEFAULT_MAX_QUARANTINE_RATIO), "a number between 0 and 1")
        min_rows = _number_from_env(
            "CRMW_QUARANTINE_MIN_ROWS", str(DEFAULT_QUARANTINE_MIN_ROWS), "a whole number of rows", whole=True
        )
        lookback_hours = _number_from_env("CRMW_SQL_LOOKBACK_HOURS", str(DEFAULT_LOOKBACK_HOURS), "a number of hours")
        sales_db_url = os.environ.get("CRMW_SALES_DB_URL") or f"sqlite:///{source_dir / 'sales.sqlite'}"
        if os.environ.get("CRMW_SALES_CONN_ID"):
            sales_db_url = _airflow_connection_url(os.environ["CRMW_SALES_CONN_ID"])
        return cls(
            source_dir=source_dir,
            sales_db_url=sales_db_url,
            max_quarantine_ratio=ratio,
            quarantine_min_rows=int(min_rows),
            lookback=dt.timedelta(hours=lookback_hours),
        )


def _number_from_env(name: str, default: str, expected: str, whole: bool = False) -> float:
    text = os.environ.get(name, default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0 or (whole and not value.is_integer()):
        raise ExtractError(f"{name}={text!r}: expected {expected}")
    return value


def _airflow_connection_url(conn_id: str) -> str:
    """The SQLAlchemy URL of an Airflow connection (Admin → Connections, or AIRFLOW_CONN_*)."""
    from airflow.sdk import Connection

    try:
        uri = Connection.get(conn_id).get_uri()
    except Exception as error:  # the SDK raises its own not-found error
        raise ExtractError(f"CRMW_SALES_CONN_ID={conn_id!r}: no such Airflow connection ({error})") from error
    if uri.startswith("sqlite:"):  # Airflow percent-encodes the file path
        return unquote(uri)
    return "postgresql://" + uri.split("://", 1)[1] if uri.startswith("postgres://") else uri


@dataclass
class LoadAudit:
    system: str
    entity: str
    rows_read: int = 0
    rows_loaded: int = 0
    rows_unchanged: int = 0
    rows_quarantined: int = 0
    rows_deleted: int = 0
    rows_recovered: int = 0
    rows_erased: int = 0  # loaded or quarantined rows of an erased customer, erased as they came (warehouse/erasure.py)
    files_loaded: int = 0
    files_skipped: int = 0
    new_columns: str = ""
    cursor_before: str | None = None
    cursor_after: str | None = None
    seconds: float = 0.0
    full_refresh: bool = False
    step: str = "extract"  # or "reconcile": the key reconciliation of a SQL table


def extract_system(
    system: str,
    logical_date: dt.date,
    run_id: str,
    settings: ExtractSettings | None = None,
    warehouse_url: str | None = None,
    full_refresh: bool = False,
    entities: Sequence[str] | None = None,
) -> list[LoadAudit]:
    """Load every entity of `system` (or the named `entities`) for `logical_date`; fail when too
    many rows are quarantined. `full_refresh` first forgets everything raw holds of each entity
    and loads it from scratch."""

    def load(warehouse: Warehouse, contract: SourceContract, entity: Entity, settings: ExtractSettings) -> LoadAudit:
        return _load_entity(warehouse, contract, entity, logical_date, run_id, settings, full_refresh)

    return _each_entity(system, entities, settings, warehouse_url, load)


def reconcile_system(
    system: str,
    logical_date: dt.date,
    run_id: str,
    settings: ExtractSettings | None = None,
    warehouse_url: str | None = None,
    entities: Sequence[str] | None = None,
) -> list[LoadAudit]:
    """Compare every key of the SQL tables of `system` (or the named `entities`) with raw, after
    their extract for `logical_date`: keys the source lost get a tombstone, rows the cursor
    missed are loaded. A step of its own: the source digests every key, and the keys of buckets
    whose digests differ are compared one by one."""

    def reconcile(warehouse: Warehouse, _: SourceContract, entity: Entity, settings: ExtractSettings) -> LoadAudit:
        if entity.system.format != "sql":
            raise ExtractError(f"source {system}.{entity.name}: only SQL tables are reconciled by key")
        return _reconcile_entity(warehouse, entity, logical_date, run_id, settings)

    return _each_entity(system, entities, settings, warehouse_url, reconcile)


def _each_entity(
    system: str,
    names: Sequence[str] | None,
    settings: ExtractSettings | None,
    warehouse_url: str | None,
    step: Callable[[Warehouse, SourceContract, Entity, ExtractSettings], LoadAudit],
) -> list[LoadAudit]:
    """Run `step` for each chosen entity of `system`; fail when too many rows were quarantined."""
    settings = settings or ExtractSettings.from_env()
    contract = load_contract()
    audits = []
    with connect(warehouse_url) as warehouse:
        _ensure_meta_tables(warehouse)
        for entity in _entities(contract, system, names):
            audit = step(warehouse, contract, entity, settings)
            log.info("%s of %s.%s: %s", audit.step, system, entity.name, audit)
            audits.append(audit)
    _check_quarantine_ratio(audits, settings)
    return audits


def _entities(contract: SourceContract, system: str, names: Sequence[str] | None) -> list[Entity]:
    if system not in contract.systems:
        raise ExtractError(f"source system {system!r}: not in the source contract ({', '.join(contract.systems)})")
    chosen = contract.entities_of(system)
    if names is None:
        return chosen
    unknown = sorted(set(names) - {entity.name for entity in chosen})
    if unknown:
        raise ExtractError(f"source system {system!r}: no entity {unknown[0]!r} in the source contract")
    return [entity for entity in chosen if entity.name in names]


def _check_quarantine_ratio(audits: list[LoadAudit], settings: ExtractSettings) -> None:
    """Fail on the first table whose quarantined share is above the allowed ratio, counted only
    from `quarantine_min_rows` rows read; below that the bad rows are quarantined and a warning
    names them, and the day goes on."""
    for audit in audits:
        if not audit.rows_quarantined:
            continue
        share = audit.rows_quarantined / audit.rows_read
        counted = f"{audit.rows_quarantined} of {audit.rows_read} rows quarantined ({share:.1%})"
        where = f"source {audit.system}.{audit.entity}"
        if audit.rows_read < settings.quarantine_min_rows:
            log.warning(
                "%s: %s; the %.1f%% limit applies from %d rows read (CRMW_QUARANTINE_MIN_ROWS), so the load goes on;"
                " see %s for the rows and reasons",
                where, counted, settings.max_quarantine_ratio * 100, settings.quarantine_min_rows, QUARANTINE,
            )
        elif share > settings.max_quarantine_ratio:
            raise ExtractError(
                f"{where}: {counted}, above the allowed {settings.max_quarantine_ratio:.1%}; see {QUARANTINE} for the"
                " rows and reasons"
            )
        else:
            log.warning(
                "%s: %s, within the allowed %.1f%%; see %s for the rows and reasons",
                where, counted, settings.max_quarantine_ratio * 100, QUARANTINE,
            )


def _ensure_meta_tables(warehouse: Warehouse) -> None:
    for table, columns in _META_TABLES.items():
        warehouse.ensure_table(table, columns)


def _load_entity(
    warehouse: Warehouse,
    contract: SourceContract,
    entity: Entity,
    logical_date: dt.date,
    run_id: str,
    settings: ExtractSettings,
    full_refresh: bool,
) -> LoadAudit:
    started = time.monotonic()
    audit = LoadAudit(system=entity.system.name, entity=entity.name, full_refresh=full_refresh)
    loaded_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    stamp = {"_batch_date": logical_date, "_run_id": run_id, "_loaded_at": loaded_at}
    # Lookups by key find a record's few versions, whose hashes are then compared: an index on the
    # key alone, about a third of one that also held the hash as 33 characters of text (208 against
    # 732 MB for the order lines at 100,000 customers on PostgreSQL). Warehouses loaded before keep
    # that one until it is dropped here.
    warehouse.drop_index(entity.raw_table, [*entity.primary_key, "_version_hash"])
    _ensure_raw_tables(warehouse, entity)
    warehouse.ensure_index(entity.raw_table, entity.primary_key)
    # A rerun finds its date's rows by `_batch_date`, and the staging models a day's new versions by
    # `_loaded_at`; raw is appended in load order, so both grow with the table's blocks and a block
    # range index finds those rows (a few kB: the b-tree on `_batch_date` it replaces took 4.3 MB of
    # the 122 MB of order lines at 10,000 customers on PostgreSQL, and without an index on
    # `_loaded_at` every staging model read all of raw for a day's rows). Warehouses loaded before
    # keep that b-tree until it is dropped here.
    warehouse.drop_index(entity.raw_table, ["_batch_date"])
    warehouse.ensure_index(entity.raw_table, ["_batch_date", "_loaded_at"], block_range=True)
    with warehouse.transaction():
        _forget(warehouse, entity, logical_date, full_refresh)
        new_columns: set[str] = set()
        if entity.system.format == "sql":
            # A SQL read holds each key once: into an empty raw table it loads without a lookup.
            raw_is_empty = not warehouse.fetchall(f"select 1 from {entity.raw_table} limit 1")
            quarantined = _quarantined_sql_rows(warehouse, entity, "raw_bytes_base64")
            with _open_sql_source(settings) as source:
                for delivery in _read_sql_delta(warehouse, source, entity, logical_date, settings, audit):
                    new_columns.update(_load_delivery(warehouse, entity, delivery, stamp, audit, compare=not raw_is_empty,
                                                      quarantined=quarantined))
        else:
            if entity.name == contract.entities_of(entity.system.name)[0].name:
                _report_unexpected_files(warehouse, contract, entity, logical_date, settings, stamp, full_refresh)
            for delivery in _read_new_files(warehouse, contract, entity, logical_date, settings, audit):
                new_columns.update(_load_delivery(warehouse, entity, delivery, stamp, audit))
        if audit.rows_loaded >= STATISTICS_REFRESH_ROWS:  # a first load: plan tomorrow's lookups right
            warehouse.refresh_statistics(entity.raw_table)
        audit.rows_erased = _erase_forgotten(warehouse, entity, logical_date, loaded_at)
        audit.new_columns = ",".join(sorted(new_columns))
        audit.seconds = round(time.monotonic() - started, 3)
        _append_records(warehouse, LOAD_AUDIT, [{**asdict(audit), **stamp}])
    return audit


def _ensure_raw_tables(warehouse: Warehouse, entity: Entity) -> None:
    """The entity's raw table and its scratch twin, with the metadata columns of today's rows. A
    table an earlier version made loses its per-row run id and has its hashes converted from hex
    text, once, in place (on PostgreSQL a rewrite of the table)."""
    # Raw holds every version delivered: its rows are laid out to pad least (storage_order); a
    # table an earlier version made keeps its order, inserts name their columns.
    raw_columns = storage_order({**entity.column_types, **RAW_METADATA_COLUMNS})
    digest = sql_type(warehouse.engine, "digest")
    for table in (entity.raw_table, _staging_table(entity)):
        held = warehouse.column_types(table)
        if "_run_id" in held:
            warehouse.execute(f"alter table {table} drop column _run_id")
        if held.get("_version_hash", digest) != digest:
            warehouse.execute(f"alter table {table} alter column _version_hash type {digest} using cast(_version_hash as {digest})")
        warehouse.ensure_table(table, raw_columns)


def _reconcile_entity(
    warehouse: Warehouse, entity: Entity, logical_date: dt.date, run_id: str, settings: ExtractSettings
) -> LoadAudit:
    started = time.monotonic()
    audit = LoadAudit(system=entity.system.name, entity=entity.name, step="reconcile")
    stamp = {
        "_batch_date": logical_date,
        "_run_id": run_id,
        "_loaded_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    }
    source_name = _reconciliation_source_name(entity)
    _ensure_raw_tables(warehouse, entity)
    with warehouse.transaction():
        # The reconciliation owns, at its date, the rows it wrote: a rerun replaces them.
        warehouse.delete_rows(entity.raw_table, "_batch_date = ? and _source_file = ?", (logical_date, source_name))
        warehouse.delete_rows(QUARANTINE, "_batch_date = ? and source_file = ?", (logical_date, source_name))
        warehouse.delete_rows(
            LOAD_AUDIT, "_batch_date = ? and system = ? and entity = ? and step = 'reconcile'",
            (logical_date, entity.system.name, entity.name),
        )
        first_load = not warehouse.fetchall(
            f"select 1 from {LOAD_AUDIT} where system = ? and entity = ? and step = 'extract' and _batch_date < ? limit 1",
            (entity.system.name, entity.name, logical_date),
        )
        new_columns: set[str] = set()
        if not first_load:  # after a first or full load raw holds just what was read
            quarantined = _quarantined_sql_rows(warehouse, entity, "raw_bytes_base64")
            with _open_sql_source(settings) as source:
                for delivery in _reconcile_keys(warehouse, source, entity, logical_date, stamp, audit):
                    new_columns.update(_load_delivery(warehouse, entity, delivery, stamp, audit, recovered=True,
                                                      compare=False, quarantined=quarantined))
        audit.rows_erased = _erase_forgotten(warehouse, entity, logical_date, stamp["_loaded_at"])
        audit.new_columns = ",".join(sorted(new_columns))
        audit.seconds = round(time.monotonic() - started, 3)
        _append_records(warehouse, LOAD_AUDIT, [{**asdict(audit), **stamp}])
    return audit


def _erase_forgotten(warehouse: Warehouse, entity: Entity, logical_date: dt.date, loaded_at: dt.datetime) -> int:
    """Erase the rows this load wrote or quarantined that belong to a customer erased before (the
    right to erasure): how many."""
    return erase_loaded_rows(warehouse, entity.raw_table, logical_date, loaded_at) + erase_quarantined_rows(
        warehouse, entity.system.name, entity.name, logical_date, loaded_at
    )


def _append_new_versions(warehouse: Warehouse, entity: Entity, data: "pa.Table") -> int:
    """Append the versions of `data` raw does not hold (by key and version hash), each once."""
    import pyarrow.compute as pc

    if data.num_rows == 0:
        return 0
    staging = _staging_table(entity)
    warehouse.empty_table(staging)
    warehouse.append_arrow(staging, data)
    warehouse.refresh_statistics(staging)
    columns = ", ".join(data.column_names)
    key = ", ".join(entity.primary_key)
    held = " and ".join(f"held.{name} = incoming.{name}" for name in (*entity.primary_key, "_version_hash"))
    params: list = []
    if entity.cursor:
        # The same version has the same cursor: raw rows older than the delivery's oldest cursor
        # cannot match, and DuckDB skips them by their row groups' min/max, so the lookup does not
        # grow with the history.
        held += f" and held.{entity.cursor} >= ?"
        params.append(pc.min(data.column(entity.cursor)).as_py())
    loaded = warehouse.execute_count(
        f"insert into {entity.raw_table} ({columns}) select {columns} from ("
        f"select *, row_number() over (partition by {key}, _version_hash"
        " order by _delivery_date, _source_file, _source_row) as _copy"
        f" from {staging}) as incoming where _copy = 1"
        f" and not exists (select 1 from {entity.raw_table} as held where {held})",
        params,
    )
    warehouse.empty_table(staging)
    return loaded


def _staging_table(entity: Entity) -> str:
    """Where a delivery waits, inside the load's transaction, to be compared with raw."""
    return f"{META_SCHEMA}.staging__{entity.system.name}__{entity.name}"


def _forget(warehouse: Warehouse, entity: Entity, logical_date: dt.date, full_refresh: bool) -> None:
    """Remove what an earlier attempt at this date loaded, or everything on a full refresh."""
    for table in (entity.raw_table, LOAD_LOG, QUARANTINE, LOAD_AUDIT):
        conditions, params = [], []
        if not full_refresh:
            conditions.append("_batch_date = ?")
            params.append(logical_date)
        if table != entity.raw_table:
            conditions.append("system = ? and entity = ?")
            params += [entity.system.name, entity.name]
        warehouse.delete_rows(table, " and ".join(conditions) or "true", params)


def _load_delivery(
    warehouse: Warehouse,
    entity: Entity,
    delivery: ParsedDelivery,
    stamp: dict,
    audit: LoadAudit,
    recovered: bool = False,
    compare: bool = True,
    quarantined: set[str] | None = None,
) -> set[str]:
    """Append the delivery's versions raw does not hold yet; returns the columns it added.
    Without `compare` every version of the delivery loads, whatever raw holds: for rows raw
    cannot hold (a first load) or holds no live version of (recovered by the reconciliation).
    A SQL entity's deliveries come with `quarantined`, the raw bytes (base64) quarantine holds
    for it, read once per load and kept up to date here: read again for every delivery, a first
    load at a million customers read the growing list (173,000 rows at the end) 276 times."""
    import pyarrow as pa

    extra = {name: "string" for name in delivery.extra_columns}
    if extra:
        warehouse.ensure_table(entity.raw_table, extra)
        warehouse.ensure_table(_staging_table(entity), extra)
    data = _stored_digests(delivery.rows, warehouse.engine)
    for name, value in {**stamp, "_deleted": False}.items():
        if name in RAW_METADATA_COLUMNS:
            data = data.append_column(name, pa.repeat(value, data.num_rows))
    if compare:
        loaded = _append_new_versions(warehouse, entity, data)
    else:
        loaded = warehouse.append_arrow(entity.raw_table, data)
    audit.rows_loaded += loaded
    audit.rows_unchanged += data.num_rows - loaded
    rejects = delivery.rejects
    if entity.system.format == "sql" and rejects:
        # The look-back and the reconciliation read a broken source row again every day until
        # it is fixed: quarantine holds it once (by its exact values), later reads count it unchanged.
        rejects = [reject for reject in rejects if _base64(reject.raw_bytes) not in quarantined]
        audit.rows_unchanged += len(delivery.rejects) - len(rejects)
        quarantined.update(_base64(reject.raw_bytes) for reject in rejects)
    audit.rows_quarantined += _quarantine(warehouse, entity, rejects, stamp)
    audit.rows_read += delivery.rows_read
    if recovered:
        audit.rows_recovered += loaded
    _log_files(warehouse, entity, delivery, stamp)
    return set(extra)


def _read_new_files(
    warehouse: Warehouse,
    contract: SourceContract,
    entity: Entity,
    logical_date: dt.date,
    settings: ExtractSettings,
    audit: LoadAudit,
):
    layout = entity.system.layout or ""
    pattern = layout.replace("{date}", "*").replace("{entity}", entity.name)
    root = settings.source_dir
    if not root.is_dir():
        raise ExtractError(f"CRMW_SOURCE_DIR={str(root)!r}: folder not found (expected the source exports)")
    logged = warehouse.fetchall(
        f"select file_name, file_size, file_modified_ns, sha256 from {LOAD_LOG} where system = ? and entity = ?",
        (entity.system.name, entity.name),
    )
    already = {(name, digest) for name, _, _, digest in logged}
    # A file whose size and modification time are those logged is not read again: hashing every
    # earlier drop each day would make the daily load grow with the history.
    unchanged = {(name, size, modified) for name, size, modified, _ in logged}
    drops = []
    for path in sorted(root.glob(pattern)):
        relative = path.relative_to(root).as_posix()
        drop_date = _drop_date(layout, relative, entity)
        if drop_date is None or drop_date > logical_date:
            continue
        stat = path.stat()
        if (relative, stat.st_size, stat.st_mtime_ns) in unchanged:
            audit.files_skipped += 1
            continue
        digest = _sha256(path)
        if (relative, digest) in already:
            audit.files_skipped += 1
            continue
        drops.append(FileDrop(path, relative, drop_date, stat.st_size, stat.st_mtime_ns, digest))
    audit.files_loaded = len(drops)
    parse = parse_csv_files if entity.system.format == "csv" else parse_jsonl_files
    for group in _parse_groups(drops, entity.system.format):
        yield parse(group, entity)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_groups(drops: list[FileDrop], file_format: str) -> Iterator[list[FileDrop]]:
    """Runs of consecutive drops parsed together: up to PARSE_GROUP_BYTES, and for CSV files one
    header per run (a source that gains a column starts a new run)."""
    group: list[FileDrop] = []
    size = 0
    header = None
    for drop in drops:
        drop_header = csv_header(drop.path) if file_format == "csv" else None
        if group and (size + drop.size > PARSE_GROUP_BYTES or drop_header != header):
            yield group
            group, size = [], 0
        group.append(drop)
        size += drop.size
        header = drop_header
    if group:
        yield group


def _drop_date(layout: str, relative: str, entity: Entity) -> dt.date | None:
    """The date a file was dropped, read from its place in the layout (e.g. crm/2025-01-31/customers.csv);
    None when the file is not one of the entity's drops (`_report_unexpected_files` names those)."""
    text = _date_place(layout, relative, entity)
    return None if text is None else _iso_date(text)


def _date_place(layout: str, relative: str, entity: Entity) -> str | None:
    """The text in the {date} place of `relative` when the rest of it is the entity's layout."""
    before, _, after = layout.replace("{entity}", entity.name).partition("{date}")
    if len(relative) < len(before) + len(after) or not (relative.startswith(before) and relative.endswith(after)):
        return None
    return relative[len(before) : len(relative) - len(after)]


def _iso_date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _report_unexpected_files(
    warehouse: Warehouse,
    contract: SourceContract,
    entity: Entity,
    logical_date: dt.date,
    settings: ExtractSettings,
    stamp: dict,
    full_refresh: bool,
) -> None:
    """List in UNEXPECTED_FILES, and in the task log, the files under the system's folder that no
    entity's layout names (`customers copy.csv`, `notes.txt`, a folder not named by a date): they
    are never loaded. Each is reported by the first run that finds it once its folder's date has
    come (a file in no dated folder at once), again when it changes. The load of the system's
    first entity reports for the whole folder, so parallel entity tasks report a file once."""
    system = entity.system
    layout = system.layout or ""
    if full_refresh:
        warehouse.delete_rows(UNEXPECTED_FILES, "system = ?", (system.name,))
    else:
        warehouse.delete_rows(UNEXPECTED_FILES, "system = ? and _batch_date = ?", (system.name, logical_date))
    reported = set(
        warehouse.fetchall(f"select file_name, file_size, file_modified_ns from {UNEXPECTED_FILES} where system = ?", (system.name,))
    )
    entities = contract.entities_of(system.name)
    folder = settings.source_dir / layout.partition("{")[0].rpartition("/")[0]
    found = []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        relative = path.relative_to(settings.source_dir).as_posix()
        if not path.is_file() or any(_drop_date(layout, relative, each) for each in entities):
            continue
        dates = [day for part in relative.split("/") if (day := _iso_date(part))]
        stat = path.stat()
        if (dates and dates[0] > logical_date) or (relative, stat.st_size, stat.st_mtime_ns) in reported:
            continue
        found.append(
            {
                "system": system.name,
                "file_name": relative,
                "file_size": stat.st_size,
                "file_modified_ns": stat.st_mtime_ns,
                "reason": _unexpected_reason(layout, relative, entities),
                **stamp,
            }
        )
    for record in found:
        log.warning(
            "source %s: not loaded: %s: %s; listed in %s", system.name, record["file_name"], record["reason"], UNEXPECTED_FILES
        )
    _append_records(warehouse, UNEXPECTED_FILES, found)


def _unexpected_reason(layout: str, relative: str, entities: list[Entity]) -> str:
    for entity in entities:
        text = _date_place(layout, relative, entity)
        if text is not None:
            return f"{text!r} in the {{date}} place of {layout} is not a YYYY-MM-DD date"
    names = ", ".join(entity.name for entity in entities)
    return f"no file of the layout {layout} for {names}"


def _open_sql_source(settings: ExtractSettings) -> SqlSource:
    try:
        return SqlSource(settings.sales_db_url)
    except SourceReadError as error:
        raise ExtractError(f"sales database {redact_url(settings.sales_db_url)!r}: {error}") from error


def _read_sql_delta(
    warehouse: Warehouse,
    source: SqlSource,
    entity: Entity,
    logical_date: dt.date,
    settings: ExtractSettings,
    audit: LoadAudit,
):
    """The rows changed since the last cursor loaded before this date, less the look-back."""
    import pyarrow.compute as pc

    cursor_column = entity.cursor
    previous = warehouse.fetchall(
        f"select cursor_after from {LOAD_AUDIT} where system = ? and entity = ? and step = 'extract'"
        " and _batch_date < ? and cursor_after is not null order by _batch_date desc limit 1",
        (entity.system.name, entity.name, logical_date),
    )
    before = dt.datetime.fromisoformat(previous[0][0]) if previous else None
    window_end = dt.datetime.combine(logical_date + dt.timedelta(days=1), dt.time())
    where, params = f"{cursor_column} < {source.timestamp_bound}", [_source_timestamp(window_end)]
    if before is not None:
        where += f" and {cursor_column} > {source.timestamp_bound}"
        params.append(_source_timestamp(before - settings.lookback))
    with _source_errors(source, entity):
        columns = source.columns(entity.name)
    audit.cursor_before = None if before is None else str(before)
    audit.cursor_after = audit.cursor_before
    first_row = 1
    with _source_errors(source, entity):
        order = source.read_order(entity.name, entity.primary_key)
        for table in source.read_text(entity.name, columns, where, params, order_by=order):
            delivery = parse_table(table, _sql_source_name(entity), logical_date, entity, first_row)
            first_row += table.num_rows
            newest = pc.max(delivery.rows.column(cursor_column)).as_py()
            if newest is not None:
                audit.cursor_after = max(filter(None, (audit.cursor_after, str(newest))))
            yield delivery


def _reconcile_keys(
    warehouse: Warehouse, source: SqlSource, entity: Entity, logical_date: dt.date, stamp: dict, audit: LoadAudit
):
    """Source keys against raw's live keys: tombstones for keys the source lost, and the rows of
    keys raw lacks (loaded by the caller, as recovered). Only the keys of the buckets whose
    digests differ are compared (extract_load/key_state.py), or every key where there is no key
    state to compare with."""
    cursor_column = entity.cursor
    window_end = dt.datetime.combine(logical_date + dt.timedelta(days=1), dt.time())
    is_visible, window_params = f"{cursor_column} < {source.timestamp_bound}", [_source_timestamp(window_end)]
    state = live_key_state(warehouse, entity, logical_date, LOAD_AUDIT)
    # The keys of source rows quarantine holds, as text (how the source's rows are read).
    quarantined = {
        tuple(str(values.get(name)) for name in entity.primary_key)
        for values in map(json.loads, _quarantined_sql_rows(warehouse, entity))
    }
    source_rows, source_where = entity.name, ""
    if state is not None:
        with _source_errors(source, entity):
            buckets = state.differing_buckets(source, is_visible, window_params, _integer_keys(quarantined))
        source_rows, source_where = source_bucketed_rows(source, entity, buckets)
    keys = f"{META_SCHEMA}.source_keys__{entity.system.name}__{entity.name}"
    key_types = {name: entity.column_types[name] for name in entity.primary_key}
    warehouse.ensure_table(keys, {**key_types, "_visible": "integer"})
    warehouse.empty_table(keys)
    typed = ", ".join(f"try_cast({name} as {sql_type('duckdb', kind)}) as {name}" for name, kind in key_types.items())
    visible = f"case when {is_visible} then 1 else 0 end as _visible"
    keys_read = 0
    with _source_errors(source, entity), duckdb_connection() as con:
        for table in source.read_text(source_rows, [*key_types, visible], source_where, window_params):
            con.register("source_keys", table)
            typed_keys = con.sql(f"select {typed}, cast(_visible as bigint) as _visible from source_keys").to_arrow_table()
            keys_read += warehouse.append_arrow(keys, typed_keys)
    warehouse.refresh_statistics(keys)
    compared = "every key" if state is None else f"the keys of {len(buckets)} of {KEY_BUCKETS} buckets whose digests differ"
    log.info("reconciliation of %s.%s: compared %s, %d source keys read", entity.system.name, entity.name, compared, keys_read)

    # Hash anti-joins over the whole tables, and latest-version windows over the few candidates
    # they leave: a window over every version of every key was most of the reconciliation's time.
    key = ", ".join(entity.primary_key)
    source_key = ", ".join(f"source.{name}" for name in entity.primary_key)

    def same_key(left: str, right: str) -> str:
        return " and ".join(f"{left}.{name} = {right}.{name}" for name in entity.primary_key)

    def latest_versions_where(condition: str) -> str:
        """The latest version of each key whose versions meet `condition` (one ? for the date)."""
        return (
            f"(select *, row_number() over (partition by {key} order by {LATEST_VERSION_FIRST}) as _recency"
            f" from {entity.raw_table} as versions where versions._batch_date <= ? and {condition}) as latest"
        )

    # With a key state, only the keys of the differing buckets: raw's live ones the source lost,
    # and the source's.
    gone_from_source = f"not exists (select 1 from {keys} as source where {same_key('source', 'versions')})"
    among_source_keys = ""
    if state is not None:
        state.fill_gone_keys(keys)
        gone_from_source = f"exists (select 1 from {state.gone_keys} as gone where {same_key('gone', 'versions')})"
        among_source_keys = f" and exists (select 1 from {keys} as source where {same_key('source', 'versions')})"
    contract_columns = ", ".join(entity.column_types)
    tombstone_hash = _digest_sql(f"md5({_hex('latest._version_hash', warehouse.engine)} || ':deleted')", warehouse.engine)
    audit.rows_deleted = warehouse.execute_count(
        f"insert into {entity.raw_table} ({contract_columns}, _batch_date, _delivery_date, _source_file,"
        " _source_row, _loaded_at, _version_hash, _deleted)"
        f" select {', '.join(f'latest.{name}' for name in entity.column_types)}, ?, ?, ?, null, ?,"
        f" {tombstone_hash}, true"
        f" from {latest_versions_where(gone_from_source)}"
        " where latest._recency = 1 and not coalesce(latest._deleted, false)",
        (stamp["_batch_date"], logical_date, _reconciliation_source_name(entity), stamp["_loaded_at"], logical_date),
    )
    if audit.rows_deleted >= STATISTICS_REFRESH_ROWS:
        # A mass deletion at the source (a purge): planned on statistics that knew almost no
        # tombstone, PostgreSQL's search for recovered keys below ran past 4 minutes (stopped) on a
        # day that tombstoned 208,790 of 697,614 order lines at 10,000 customers; on fresh ones the
        # whole reconciliation took 7.7 s.
        warehouse.refresh_statistics(entity.raw_table)
    # Missing from raw: keys it never held, and keys whose latest version is a tombstone.
    has_tombstone = (
        f"exists (select 1 from {entity.raw_table} as tombstone"
        f" where tombstone._deleted and {same_key('tombstone', 'versions')}){among_source_keys}"
    )
    missing = warehouse.fetchall(
        f"select {source_key} from {keys} as source where source._visible = 1"
        f" and not exists (select 1 from {entity.raw_table} as held"
        f" where held._batch_date <= ? and {same_key('held', 'source')})"
        f" union select {source_key} from {latest_versions_where(has_tombstone)}"
        f" join {keys} as source on {same_key('source', 'latest')}"
        " where source._visible = 1 and latest._recency = 1 and latest._deleted"
        f" order by {', '.join(f'{position}' for position in range(1, len(entity.primary_key) + 1))}",
        (logical_date, logical_date),
    )
    warehouse.empty_table(keys)
    if state is not None:
        warehouse.empty_table(state.live_keys)
        warehouse.empty_table(state.gone_keys)
    # A key whose only source row is quarantined stays missing from raw: it is not missed.
    missing = [key for key in missing if tuple(map(str, key)) not in quarantined]
    first_row = 1
    with _source_errors(source, entity):
        columns = source.columns(entity.name)
        for table in source.read_keys(entity.name, entity.primary_key, missing, columns):
            yield parse_table(table, _reconciliation_source_name(entity), logical_date, entity, first_row)
            first_row += table.num_rows


def _hex(digest: str, engine: str) -> str:
    """SQL for a digest column as the 32 hex digits md5 gave (uuid text has hyphens)."""
    return f"replace(cast({digest} as {sql_type(engine, 'string')}), '-', '')"


def _digest_sql(hex_digits: str, engine: str) -> str:
    """SQL for md5's 32 hex digits as a digest of `engine`: its uuid type, or on Spark, which has
    none, the uuid's text (see _stored_digests)."""
    if sql_type(engine, "digest") == "uuid":
        return f"cast({hex_digits} as uuid)"
    return f"regexp_replace({hex_digits}, '{_UUID_PARTS}', '$1-$2-$3-$4-$5')"


def _stored_digests(data: "pa.Table", engine: str) -> "pa.Table":
    """`data` with its `_version_hash` (md5's 32 hex digits) as `engine` holds a digest. DuckDB and
    PostgreSQL cast the digits to their uuid type as the rows load; Spark has no uuid type and
    holds the uuid's text, hyphens and all (as raw copied out of DuckDB arrives there), so the
    same version has the same text whichever engine delivered it."""
    import pyarrow.compute as pc

    if sql_type(engine, "digest") == "uuid":
        return data
    position = data.schema.get_field_index("_version_hash")
    as_uuid = pc.replace_substring_regex(data.column(position), _UUID_PARTS, r"\1-\2-\3-\4-\5")
    return data.set_column(position, "_version_hash", as_uuid)


def _integer_keys(keys: Iterable[tuple[str, ...]]) -> list[tuple[int, ...]]:
    """The keys whose every value is an integer written exactly (as the source's text gives it) and
    fits 64 bits with room to spare."""
    exact = re.compile(r"-?[0-9]{1,18}")
    return [tuple(int(value) for value in key) for key in keys if all(exact.fullmatch(value) for value in key)]


@contextmanager
def _source_errors(source: SqlSource, entity: Entity) -> Iterator[None]:
    """Name the database and table in any error reading the source."""
    try:
        yield
    except SourceReadError as error:
        raise ExtractError(f"sales database {redact_url(source.url)!r}, table {entity.name}: {error}") from error


def _sql_source_name(entity: Entity) -> str:
    return f"{entity.system.name}:{entity.name}"


def _reconciliation_source_name(entity: Entity) -> str:
    return f"{_sql_source_name(entity)} reconciliation"


def _source_timestamp(moment: dt.datetime) -> str:
    """A cursor bound as the ISO text SQLite stores and PostgreSQL reads as a timestamp."""
    return moment.isoformat(sep=" ")


def _quarantined_sql_rows(warehouse: Warehouse, entity: Entity, column: str = "raw_text") -> set[str]:
    """The raw text (values as JSON), or another `column`, of every row of a SQL entity that quarantine holds."""
    rows = warehouse.fetchall(
        f"select distinct {column} from {QUARANTINE} where system = ? and entity = ?", (entity.system.name, entity.name)
    )
    return {text for (text,) in rows}


def _quarantine(warehouse: Warehouse, entity: Entity, rejects: list[Reject], stamp: dict) -> int:
    records = [
        {
            "system": entity.system.name,
            "entity": entity.name,
            "source_file": reject.source_file,
            "source_row": reject.source_row,
            "raw_text": reject.raw_text,
            "raw_bytes_base64": _base64(reject.raw_bytes),
            "reason": reject.reason,
            **stamp,
        }
        for reject in rejects
    ]
    _append_records(warehouse, QUARANTINE, records)
    return len(records)


def _base64(raw_bytes: bytes | None) -> str | None:
    return None if raw_bytes is None else base64.b64encode(raw_bytes).decode("ascii")


def _log_files(warehouse: Warehouse, entity: Entity, delivery: ParsedDelivery, stamp: dict) -> None:
    rows_read = delivery.rows_read_per_file()
    records = [
        {
            "system": entity.system.name,
            "entity": entity.name,
            "file_name": drop.name,
            "file_size": drop.size,
            "file_modified_ns": drop.modified_ns,
            "sha256": drop.sha256,
            "rows_read": rows_read[drop.name],
            **stamp,
        }
        for drop in delivery.files
    ]
    _append_records(warehouse, LOAD_LOG, records)


def _append_records(warehouse: Warehouse, table: str, records: list[dict]) -> None:
    import pyarrow as pa

    if records:
        warehouse.append_arrow(table, pa.Table.from_pylist(records))




# ---- deliveries against their freshness windows ---------------------------------------------------

SOURCES_YAML = PROJECT_ROOT / "dbt_project" / "models" / "staging" / "_sources.yml"
_PERIOD_HOURS = {"minute": 1 / 60, "hour": 1, "day": 24}


def freshness_windows(path: Path = SOURCES_YAML) -> dict[str, float]:
    """raw table -> hours a source may go without a delivery before dbt's freshness check warns
    (`warn_after` of the table, else of its source); tables without one are left out."""
    import yaml

    windows: dict[str, float] = {}
    for source in yaml.safe_load(path.read_text())["sources"]:
        default = source.get("config", {}).get("freshness") or {}
        for table in source.get("tables", []):
            freshness = table.get("config", {}).get("freshness") or default
            warn_after = freshness.get("warn_after")
            if warn_after:
                windows[f"{source['schema']}.{table['name']}"] = warn_after["count"] * _PERIOD_HOURS[warn_after["period"]]
    return windows


def stale_deliveries(warehouse: Warehouse, logical_dates: Sequence[dt.date], contract: SourceContract | None = None) -> dict[dt.date, list[str]]:
    """Per logical date, one line per file-delivered table whose latest drop dated on or before it
    is older than its freshness window (or that has none): what a run for that date was missing.
    Drops are read from the load log by the date in their place in the layout, so a backfill is
    judged by the deliveries of its own date, and a delivery whose rows were all unchanged still
    counts. SQL sources are read on every run: their freshness is the extract's own. The log is read
    once for every date (a year's range would otherwise read it 365 times)."""
    contract = contract or load_contract()
    windows = freshness_windows()
    if not warehouse.table_columns(LOAD_LOG):
        return {day: [] for day in logical_dates}
    drops: dict[tuple[str, str], list[dt.date]] = {}
    for system, entity_name, file_name in warehouse.fetchall(f"select distinct system, entity, file_name from {LOAD_LOG}"):
        entity = contract.entities.get(entity_name)
        if entity is None or entity.system.name != system or entity.system.layout is None:
            continue
        dropped = _drop_date(entity.system.layout, file_name, entity)
        if dropped is not None:
            drops.setdefault((system, entity_name), []).append(dropped)
    stale: dict[dt.date, list[str]] = {}
    for logical_date in logical_dates:
        lines = stale[logical_date] = []
        for entity in contract.entities.values():
            hours = windows.get(entity.raw_table)
            if entity.system.layout is None or hours is None:
                continue
            last = max((day for day in drops.get((entity.system.name, entity.name), ()) if day <= logical_date), default=None)
            # A drop dated D holds the source's state at the end of D: its age on D is a day.
            if last is None or ((logical_date - last).days + 1) * 24 > hours:
                since = f"the latest is dated {last}" if last else "none has arrived yet"
                lines.append(f"{entity.raw_table}: no delivery within {hours:g} hours of {logical_date} ({since})")
    return stale
