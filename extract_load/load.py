"""Load one source system's deliveries for one logical date into its raw schema.

A run for date D owns the rows it loads (`_batch_date = D`). Re-running D first removes what an
earlier attempt at D loaded, inside the same transaction as the new load, so a rerun or a retry
after a crash leaves raw exactly as one clean run would.

- File sources (CSV drops, JSON lines): every file dropped on or before D that the load log does
  not hold with the same checksum is loaded; a changed file is loaded again.
- SQL sources: rows whose cursor column moved after the latest cursor loaded before D, up to the
  end of D.

Every source row ends up loaded or quarantined with a reason; the load audit counts both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from extract_load.contract import Entity, SourceContract, load_contract
from extract_load.parse import ParsedDelivery, parse_csv, parse_jsonl, parse_rows
from warehouse import PROJECT_ROOT, Warehouse, connect

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

META_SCHEMA = "raw_meta"
LOAD_LOG = f"{META_SCHEMA}.load_log"
QUARANTINE = f"{META_SCHEMA}.quarantine"
DEFAULT_SOURCE_DIR = PROJECT_ROOT / ".local" / "sources"
LOAD_AUDIT = f"{META_SCHEMA}.load_audit"

# Columns every raw row carries besides the source's own.
RAW_METADATA_COLUMNS = {
    "_batch_date": "date",
    "_run_id": "string",
    "_delivery_date": "date",
    "_source_file": "string",
    "_source_row": "integer",
    "_loaded_at": "timestamp",
}
_META_TABLES = {
    LOAD_LOG: {
        "system": "string",
        "entity": "string",
        "file_name": "string",
        "file_size": "integer",
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
        "files_loaded": "integer",
        "files_skipped": "integer",
        "new_columns": "string",
        "cursor_before": "string",
        "cursor_after": "string",
        "seconds": "double",
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
    max_quarantine_ratio: float = 0.05

    @classmethod
    def from_env(cls) -> "ExtractSettings":
        source_dir = Path(os.environ.get("CRMW_SOURCE_DIR") or DEFAULT_SOURCE_DIR).resolve()
        ratio_text = os.environ.get("CRMW_MAX_QUARANTINE_RATIO", "0.05")
        try:
            ratio = float(ratio_text)
        except ValueError:
            raise ExtractError(f"CRMW_MAX_QUARANTINE_RATIO={ratio_text!r}: expected a number between 0 and 1") from None
        return cls(
            source_dir=source_dir,
            sales_db_url=os.environ.get("CRMW_SALES_DB_URL") or f"sqlite:///{source_dir / 'sales.sqlite'}",
            max_quarantine_ratio=ratio,
        )


@dataclass
class LoadAudit:
    system: str
    entity: str
    rows_read: int = 0
    rows_loaded: int = 0
    rows_unchanged: int = 0
    rows_quarantined: int = 0
    files_loaded: int = 0
    files_skipped: int = 0
    new_columns: str = ""
    cursor_before: str | None = None
    cursor_after: str | None = None
    seconds: float = 0.0


def extract_system(
    system: str,
    logical_date: dt.date,
    run_id: str,
    settings: ExtractSettings | None = None,
    warehouse_url: str | None = None,
) -> list[LoadAudit]:
    """Load every entity of `system` for `logical_date`; fail when too many rows are quarantined."""
    settings = settings or ExtractSettings.from_env()
    contract = load_contract()
    if system not in contract.systems:
        raise ExtractError(f"source system {system!r}: not in the source contract ({', '.join(contract.systems)})")
    audits = []
    with connect(warehouse_url) as warehouse:
        _ensure_meta_tables(warehouse)
        for entity in contract.entities_of(system):
            audit = _load_entity(warehouse, contract, entity, logical_date, run_id, settings)
            log.info("loaded %s.%s: %s", system, entity.name, audit)
            audits.append(audit)
    for audit in audits:
        if audit.rows_read and audit.rows_quarantined / audit.rows_read > settings.max_quarantine_ratio:
            raise ExtractError(
                f"source {audit.system}.{audit.entity}: {audit.rows_quarantined} of {audit.rows_read} rows "
                f"quarantined ({audit.rows_quarantined / audit.rows_read:.1%}), above the allowed "
                f"{settings.max_quarantine_ratio:.1%}; see {QUARANTINE} for the rows and reasons"
            )
    return audits


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
) -> LoadAudit:
    started = time.monotonic()
    audit = LoadAudit(system=entity.system.name, entity=entity.name)
    loaded_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    stamp = {"_batch_date": logical_date, "_run_id": run_id, "_loaded_at": loaded_at}
    warehouse.ensure_table(entity.raw_table, {**entity.column_types, **RAW_METADATA_COLUMNS})
    with warehouse.transaction():
        for table in (entity.raw_table, LOAD_LOG, QUARANTINE, LOAD_AUDIT):
            where = "" if table == entity.raw_table else " and system = ? and entity = ?"
            params = (logical_date,) if table == entity.raw_table else (logical_date, entity.system.name, entity.name)
            warehouse.execute(f"delete from {table} where _batch_date = ?{where}", params)

        if entity.system.format == "sql":
            deliveries = [_read_sql_delta(warehouse, entity, logical_date, settings, audit)]
        else:
            deliveries = list(_read_new_files(warehouse, contract, entity, logical_date, settings, audit))

        new_columns: set[str] = set()
        for delivery in deliveries:
            extra = {name: "string" for name in delivery.extra_columns}
            if extra:
                warehouse.ensure_table(entity.raw_table, extra)
                new_columns.update(extra)
            data = delivery.rows.append_column("_batch_date", _constant(logical_date, delivery.rows.num_rows))
            data = data.append_column("_run_id", _constant(run_id, data.num_rows))
            data = data.append_column("_loaded_at", _constant(loaded_at, data.num_rows))
            audit.rows_loaded += warehouse.append_arrow(entity.raw_table, data)
            audit.rows_quarantined += _quarantine(warehouse, entity, delivery, stamp)
            audit.rows_read += delivery.rows_read
            if delivery.file is not None:
                _log_file(warehouse, entity, delivery, stamp)
        audit.new_columns = ",".join(sorted(new_columns))
        audit.seconds = round(time.monotonic() - started, 3)
        _append_records(warehouse, LOAD_AUDIT, [{**asdict(audit), **stamp}])
    return audit


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
    already = {
        (name, digest)
        for name, digest in warehouse.fetchall(
            f"select file_name, sha256 from {LOAD_LOG} where system = ? and entity = ?",
            (entity.system.name, entity.name),
        )
    }
    for path in sorted(root.glob(pattern)):
        relative = path.relative_to(root).as_posix()
        drop_date = _drop_date(layout, relative, entity)
        if drop_date is None or drop_date > logical_date:
            continue
        payload = path.read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        if (relative, digest) in already:
            audit.files_skipped += 1
            continue
        parse = parse_csv if entity.system.format == "csv" else parse_jsonl
        delivery = parse(path, relative, drop_date, entity)
        delivery.file = (relative, len(payload), digest)
        audit.files_loaded += 1
        yield delivery


def _drop_date(layout: str, relative: str, entity: Entity) -> dt.date | None:
    """The date a file was dropped, read from its place in the layout (e.g. crm/2025-01-31/customers.csv)."""
    before, _, after = layout.replace("{entity}", entity.name).partition("{date}")
    if not (relative.startswith(before) and relative.endswith(after)):
        return None
    text = relative[len(before) : len(relative) - len(after)]
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        log.warning("skipping %s: %r is not a YYYY-MM-DD drop date", relative, text)
        return None


def _read_sql_delta(
    warehouse: Warehouse, entity: Entity, logical_date: dt.date, settings: ExtractSettings, audit: LoadAudit
) -> ParsedDelivery:
    import sqlalchemy as sa

    cursor_column = entity.cursor
    if cursor_column is None:
        raise ExtractError(f"source contract: SQL entity {entity.name!r} needs a cursor column")
    (before,) = warehouse.fetchall(
        f"select max({cursor_column}) from {entity.raw_table} where _batch_date < ?", (logical_date,)
    )[0]
    window_end = dt.datetime.combine(logical_date + dt.timedelta(days=1), dt.time())
    url = settings.sales_db_url.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as error:
        raise ExtractError(f"CRMW_SALES_DB_URL={settings.sales_db_url!r}: not a database URL ({error})") from error
    where = f"{cursor_column} < :window_end" + (f" and {cursor_column} > :cursor" if before is not None else "")
    columns = ", ".join(entity.column_types)
    query = sa.text(f"select {columns} from {entity.name} where {where} order by {', '.join(entity.primary_key)}")
    try:
        with engine.connect() as source:
            result = source.execute(query, {"window_end": window_end, "cursor": before})
            rows = [tuple(row) for row in result]
    except sa.exc.SQLAlchemyError as error:
        reason = str(error.orig if hasattr(error, "orig") else error).splitlines()[0]
        raise ExtractError(
            f"sales database {settings.sales_db_url!r}, table {entity.name}: cannot read {columns} ({reason})"
        ) from error
    finally:
        engine.dispose()
    delivery = parse_rows(rows, list(entity.column_types), f"{entity.system.name}:{entity.name}", window_end.date(), entity)
    audit.cursor_before = None if before is None else str(before)
    cursor_values = [row[list(entity.column_types).index(cursor_column)] for row in rows]
    audit.cursor_after = str(max(cursor_values)) if cursor_values else audit.cursor_before
    return delivery


def _quarantine(warehouse: Warehouse, entity: Entity, delivery: ParsedDelivery, stamp: dict) -> int:
    records = [
        {
            "system": entity.system.name,
            "entity": entity.name,
            "source_file": delivery.source,
            "source_row": row,
            "raw_text": raw,
            "reason": reason,
            **stamp,
        }
        for row, raw, reason in delivery.rejects
    ]
    _append_records(warehouse, QUARANTINE, records)
    return len(records)


def _log_file(warehouse: Warehouse, entity: Entity, delivery: ParsedDelivery, stamp: dict) -> None:
    name, size, digest = delivery.file
    record = {
        "system": entity.system.name,
        "entity": entity.name,
        "file_name": name,
        "file_size": size,
        "sha256": digest,
        "rows_read": delivery.rows_read,
        **stamp,
    }
    _append_records(warehouse, LOAD_LOG, [record])


def _append_records(warehouse: Warehouse, table: str, records: list[dict]) -> None:
    import pyarrow as pa

    if records:
        warehouse.append_arrow(table, pa.Table.from_pylist(records))


def _constant(value: object, length: int) -> "pa.Array":
    import pyarrow as pa

    return pa.array([value] * length)

