"""The right to erasure: a customer's personal fields erased in every schema, logged, and kept erased.

`forget` takes customer keys (`crmw forget --customer KEY`, or the requests waiting in
`audit.erasure_requests`: `forget_requested`, a task of crm_daily). For each customer:

- Its records are read from identity resolution (`intermediate.int_customer_identity`: the CRM
  contacts, orders and tickets that make up the customer), and its keys are the key and the keys
  retired into it (`marts.customer_key_aliases`).
- Every base table of every schema with a personal column (`warehouse.bi.PERSONAL`, plus the birth
  date and the phone as typed) and a column naming the customer (its key, or a record's CRM id,
  order id or ticket id) has that customer's rows rewritten: raw's versions, staging, the identity
  table, the marts, the `published` copies, the activation tables. Found from the catalog, so a
  table added later is covered. Names, phone, street, birth date and comments become NULL; an email
  becomes `erased-<customer key>@erased.invalid`: emails are what orders and tickets are matched to
  customers by, and one placeholder per customer keeps those links on a full refresh, while the
  reserved `.invalid` domain reaches no one (the activation list treats it as no email). Keys (the
  customer key, the source systems' ids) and every amount stay: aggregates do not move, and raw keeps
  each version, now without the person's fields (its `_version_hash` still that of the delivered
  values, so a re-delivery of the same version is counted unchanged, not loaded again).
- Quarantined rows whose text holds one of the person's emails or phones keep their reason and
  place, not their text (a SQL row's keeps its key, which the reconciliation reads) or bytes.
- The dated activation CSV files (`$CRMW_EXPORT_DIR/activation/`) are rewritten without the
  customer's rows.
- `audit.erasures` gets a row (key, requested and erased at, by whom, rows per table, files
  rewritten); `audit.erased_identifiers` keeps the md5 of each CRM id and email the customer's
  records held, never the values, so that a later delivery of the same person is erased as it
  loads (`erase_loaded_rows` and `erase_quarantined_rows`, called by the extract inside its
  transaction and counted in `raw_meta.load_audit.rows_erased`).

A rerun for the same key changes nothing more (its audit row says 0 rows). Same SQL on every engine;
rows change through `Warehouse.update_rows`, which on Spark rewrites each table touched.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from warehouse.adapter import Warehouse, connect, qualified, quote_identifier, sql_type
from warehouse.bi import PERSONAL

log = logging.getLogger(__name__)

AUDIT_SCHEMA = "audit"
ERASURES = f"{AUDIT_SCHEMA}.erasures"
ERASURE_REQUESTS = f"{AUDIT_SCHEMA}.erasure_requests"
ERASED_IDENTIFIERS = f"{AUDIT_SCHEMA}.erased_identifiers"
IDENTITY = "intermediate.int_customer_identity"
ALIASES = "marts.customer_key_aliases"
PLACEHOLDER_DOMAIN = "erased.invalid"
# What a quarantined row's text becomes: JSON, as the extract reads a SQL row's text back (a SQL
# row keeps its key's values: the reconciliation knows a quarantined key by them).
ERASED_TEXT = '{"erased": true}'
# What splits a quarantined line into the values searched for an erased identifier.
_TOKEN_SEPARATORS = re.compile(r"[\s,;|\"'{}\[\]:]+")

EMAILS = frozenset(name for name in PERSONAL if name.endswith("email"))
# A personal column that is an id (the CRM's own person id, a version id) is a key: kept, as the
# customer key is; the rows stay joined and counted.
KEPT_KEYS = frozenset(name for name in PERSONAL if name.endswith("_id"))
# Erased besides BI's personal columns: BI reads an age band instead of the birth date, and the
# phone as typed is staging's alone.
ERASED = (PERSONAL - KEPT_KEYS) | {"birth_date", "phone_as_entered"}
# The columns that name a customer's rows: its key (not bi.CUSTOMER_KEYS' others: a referrer's key
# names another person), or one of its records' ids, by the identity table's source_table.
CUSTOMER_KEY = "customer_id"
RECORD_COLUMNS = {"crm_id": "customers", "order_id": "orders", "ticket_id": "tickets"}

_TABLES = {
    ERASURES: {
        "customer_id": "string",
        "requested_at": "timestamp",
        "requested_by": "string",
        "erased_at": "timestamp",
        "rows_erased": "integer",
        "tables_touched": "string",
        "files_rewritten": "integer",
    },
    ERASURE_REQUESTS: {"customer_id": "string", "requested_at": "timestamp", "requested_by": "string"},
    ERASED_IDENTIFIERS: {"customer_id": "string", "kind": "string", "identifier_md5": "string", "erased_at": "timestamp"},
}


class UnknownCustomer(ValueError):
    """A key that names no customer of the warehouse; the message names it and what was expected."""


@dataclass
class Erasure:
    customer_id: str
    requested_at: dt.datetime
    requested_by: str
    erased_at: dt.datetime | None = None
    rows: dict[str, int] = field(default_factory=dict)  # schema.table (or a file) -> rows erased
    files_rewritten: int = 0

    @property
    def rows_erased(self) -> int:
        return sum(self.rows.values())

    def summary(self) -> str:
        touched = ", ".join(f"{table} {rows}" for table, rows in sorted(self.rows.items()))
        files = f"; {self.files_rewritten} activation file(s) rewritten" if self.files_rewritten else ""
        return f"customer {self.customer_id}: {self.rows_erased} rows erased" + (f" ({touched})" if touched else "") + files


def placeholder_email(customer_id: str) -> str:
    return f"erased-{customer_id}@{PLACEHOLDER_DOMAIN}"


def ensure_audit_tables(warehouse: Warehouse) -> None:
    for table, columns in _TABLES.items():
        warehouse.ensure_table(table, columns)


def forget(
    customer_ids: Sequence[str],
    requested_by: str,
    activation_dir: Path | None = None,
    warehouse_url: str | None = None,
    requested_at: dt.datetime | None = None,
) -> list[Erasure]:
    """Erase each customer's personal fields everywhere (module docstring); every key is checked
    before anything is erased: an unknown one raises UnknownCustomer naming it."""
    now = _now()
    requests = [(key, requested_at or now, requested_by) for key in dict.fromkeys(customer_ids)]
    with connect(warehouse_url) as warehouse:
        resolved = _current_keys(warehouse, [key for key, _, _ in requests])
        for key, _, _ in requests:
            if key not in resolved:
                raise UnknownCustomer(
                    f"customer {key!r}: not a customer key of this warehouse; expected a customer_id of"
                    f" marts.dim_customers (or a retired key of {ALIASES})"
                )
        ensure_audit_tables(warehouse)
        personal = _personal_tables(warehouse)
        return [_erase(warehouse, personal, resolved[key], at, by, activation_dir) for key, at, by in requests]


def forget_requested(activation_dir: Path | None = None, warehouse_url: str | None = None) -> list[Erasure]:
    """Carry out the requests in `audit.erasure_requests` that no `audit.erasures` row answers yet
    (by key and request time), oldest first. A key that names no customer is logged in the audit
    with no rows erased and a warning, and not tried again."""
    with connect(warehouse_url) as warehouse:
        ensure_audit_tables(warehouse)
        pending = warehouse.fetchall(
            f"select request.customer_id, request.requested_at, request.requested_by from {ERASURE_REQUESTS} as request"
            f" where not exists (select 1 from {ERASURES} as done where done.customer_id = request.customer_id"
            " and done.requested_at = request.requested_at) order by request.requested_at, request.customer_id"
        )
        resolved = _current_keys(warehouse, [key for key, _, _ in pending])
        personal = _personal_tables(warehouse) if pending else []
        erasures = []
        for key, requested_at, requested_by in pending:
            if key in resolved:
                erasures.append(_erase(warehouse, personal, resolved[key], requested_at, requested_by or "", activation_dir, key))
                continue
            log.warning("erasure request for %r (%s, by %s): not a customer key of this warehouse; logged in %s"
                        " with no rows erased", key, requested_at, requested_by, ERASURES)
            unknown = Erasure(key, requested_at, requested_by or "", erased_at=_now())
            _append_audit(warehouse, unknown, "unknown customer key")
            erasures.append(unknown)
        return erasures


def erase_loaded_rows(warehouse: Warehouse, table: str, batch_date: dt.date, loaded_at: dt.datetime) -> int:
    """Erase, in `table`, the rows a load just wrote (`_batch_date`, `_loaded_at`) that hold a CRM
    id or an email of an erased customer; returns how many. Called inside the load's transaction."""
    if not warehouse.table_columns(ERASED_IDENTIFIERS):
        return 0
    columns = warehouse.table_columns(table)
    matches = _identifier_matches(columns)
    if not matches or not ERASED & set(columns):
        return 0
    loaded = "loaded._batch_date = ? and loaded._loaded_at = ?"
    joins = " or ".join(f"(erased.kind = '{kind}' and erased.identifier_md5 = {_md5(warehouse, kind, column, 'loaded')})"
                        for kind, column in matches)
    customers = warehouse.fetchall(
        f"select distinct erased.customer_id from {qualified(table)} as loaded"
        f" join {ERASED_IDENTIFIERS} as erased on {joins} where {loaded} order by 1",
        (batch_date, loaded_at),
    )
    erased = 0
    for (customer_id,) in customers:
        held = " or ".join(
            f"{_md5(warehouse, kind, column)} in (select identifier_md5 from {ERASED_IDENTIFIERS} where customer_id = ? and kind = '{kind}')"
            for kind, column in matches
        )
        erased += _erase_table(warehouse, table, columns, customer_id, f"_batch_date = ? and _loaded_at = ? and ({held})",
                               [batch_date, loaded_at, *[customer_id] * len(matches)])
    return erased


# ---- one customer --------------------------------------------------------------------------------


def _erase(warehouse: Warehouse, personal_tables: list[tuple[str, list[str]]], customer_id: str, requested_at: dt.datetime,
           requested_by: str, activation_dir: Path | None, requested_key: str | None = None) -> Erasure:
    """Erase one customer in `personal_tables` (`_personal_tables`, read once for all the customers
    of a call: erasing changes values, never the catalog)."""
    erasure = Erasure(requested_key or customer_id, requested_at, requested_by)
    keys = [customer_id, *(key for (key,) in warehouse.fetchall(
        f"select retired_customer_id from {ALIASES} where customer_id = ?", (customer_id,)
    ))] if warehouse.table_columns(ALIASES) else [customer_id]
    records = _records(warehouse, customer_id)
    with warehouse.transaction():
        _remember_identifiers(warehouse, customer_id, records)
        contacts = _contact_values(warehouse, records)
        for table, columns in personal_tables:
            where, params = _rows_of(columns, keys, records)
            if where:
                rows = _erase_table(warehouse, table, columns, customer_id, where, params)
                if rows:
                    erasure.rows[table] = rows
        if contacts:
            found = " or ".join("position(? in lower(raw_text)) > 0" for _ in contacts)
            if rows := _erase_quarantined(warehouse, f"({found})", contacts):
                erasure.rows[_quarantine_table()] = rows
        if activation_dir is not None:
            for path, rows in _rewrite_files(activation_dir, set(keys)).items():
                erasure.rows[str(path)] = rows
                erasure.files_rewritten += 1
        erasure.erased_at = _now()
        _append_audit(warehouse, erasure)
    log.info("erased %s", erasure.summary())
    return erasure


def erase_quarantined_rows(warehouse: Warehouse, system: str, entity: str, batch_date: dt.date, loaded_at: dt.datetime) -> int:
    """Erase the text of the rows a load just quarantined for `system.entity` that hold a CRM id or an
    email of an erased customer (as a value between the separators of a line or a JSON object)."""
    if not warehouse.table_columns(ERASED_IDENTIFIERS):
        return 0
    erased = {digest for (digest,) in warehouse.fetchall(f"select distinct identifier_md5 from {ERASED_IDENTIFIERS}")}
    loaded = "system = ? and entity = ? and _batch_date = ? and _loaded_at = ?"
    texts = [text for (text,) in warehouse.fetchall(
        f"select distinct raw_text from {_quarantine_table()} where {loaded} and raw_text is not null",
        (system, entity, batch_date, loaded_at),
    ) if erased & {_md5_text(value) for token in _TOKEN_SEPARATORS.split(text) if token
                   for value in (token, token.lower())}]
    if not texts:
        return 0
    return _erase_quarantined(warehouse, f"{loaded} and raw_text in ({', '.join('?' for _ in texts)})",
                              [system, entity, batch_date, loaded_at, *texts])


def _erase_quarantined(warehouse: Warehouse, where: str, params: Sequence) -> int:
    """Replace the text and bytes of the quarantined rows matching `where`: a SQL row's text keeps its
    key's values, every other text becomes ERASED_TEXT."""
    from extract_load.contract import load_contract

    table = _quarantine_table()
    if not warehouse.table_columns(table):
        return 0
    contract = load_contract()
    # One update for every text: on Spark each update rewrites the whole quarantine table.
    replacements = []
    for system, entity, text in warehouse.fetchall(
        f"select distinct system, entity, raw_text from {table} where ({where}) and raw_text is not null", params
    ):
        spec = contract.entities.get(entity)
        kept = ERASED_TEXT
        if spec is not None and spec.system.name == system and spec.system.format == "sql":
            try:
                values = json.loads(text)
            except ValueError:
                values = None
            if isinstance(values, dict):
                kept = json.dumps({"erased": True, **{key: values.get(key) for key in spec.primary_key}})
        if kept != text:
            replacements.append((system, entity, text, kept))
    if not replacements:
        return 0
    matches = " or ".join("(system = ? and entity = ? and raw_text = ?)" for _ in replacements)
    kept_text = f"case {' '.join('when system = ? and entity = ? and raw_text = ? then ?' for _ in replacements)} end"
    return warehouse.update_rows(table, {"raw_text": kept_text, "raw_bytes_base64": "null"}, matches,
                                 [value for row in replacements for value in row[:3]],
                                 [value for row in replacements for value in row])


def _quarantine_table() -> str:
    from extract_load.load import QUARANTINE

    return QUARANTINE


def _md5_text(value: str) -> str:
    return hashlib.md5(value.encode("utf-8")).hexdigest()


def _current_keys(warehouse: Warehouse, keys: Sequence[str]) -> dict[str, str]:
    """Each given key that names a customer -> its current key (a retired key's taker)."""
    if not keys or not warehouse.table_columns(IDENTITY):
        return {}
    marks = ", ".join("?" for _ in keys)
    current = {key: key for (key,) in warehouse.fetchall(
        f"select distinct customer_id from {IDENTITY} where customer_id in ({marks})", tuple(keys))}
    if warehouse.table_columns(ALIASES):
        for retired, taker in warehouse.fetchall(
            f"select retired_customer_id, customer_id from {ALIASES} where retired_customer_id in ({marks})", tuple(keys)
        ):
            current.setdefault(retired, taker)
    return current


def _records(warehouse: Warehouse, customer_id: str) -> dict[str, list]:
    """The ids of the customer's records by the column that holds them elsewhere: crm_id, order_id,
    ticket_id (orders and tickets by their integer ids)."""
    rows = warehouse.fetchall(f"select source_table, source_key from {IDENTITY} where customer_id = ?", (customer_id,))
    records: dict[str, list] = {column: [] for column in RECORD_COLUMNS}
    for column, source_table in RECORD_COLUMNS.items():
        for table, key in rows:
            if table == source_table:
                records[column].append(key if column == "crm_id" else int(key))
    return records


def _personal_tables(warehouse: Warehouse) -> list[tuple[str, list[str]]]:
    """Every base table (schema.table, its columns) holding a column erasure rewrites, but the audit's own."""
    if warehouse.engine == "spark":
        # Spark's catalog holds its own schemas alone, and no table types: its views are listed apart.
        tables = warehouse.columns_by_table("table_schema <> ?", (AUDIT_SCHEMA,))
        views = {f"{schema}.{view}" for schema in {table.partition(".")[0] for table in tables}
                 for _, view, _ in warehouse.fetchall(f"show views in {quote_identifier(schema)}")}
        tables = {table: columns for table, columns in tables.items() if table not in views}
    else:
        tables = warehouse.columns_by_table(
            "table_catalog = current_database() and table_schema not in ('information_schema', 'pg_catalog', ?)"
            " and exists (select 1 from information_schema.tables as tables where tables.table_type = 'BASE TABLE'"
            " and tables.table_catalog = columns.table_catalog and tables.table_schema = columns.table_schema"
            " and tables.table_name = columns.table_name)",
            (AUDIT_SCHEMA,),
        )
    return [(table, columns) for table, columns in tables.items() if ERASED & set(columns)]


def _rows_of(columns: Sequence[str], keys: Sequence[str], records: dict[str, list], alias: str | None = None) -> tuple[str, list]:
    """The WHERE clause (and its parameters) of the customer's rows in a table with `columns`."""
    conditions, params = [], []
    prefix = f"{alias}." if alias else ""
    if CUSTOMER_KEY in columns and keys:
        conditions.append(f"{prefix}{CUSTOMER_KEY} in ({', '.join('?' for _ in keys)})")
        params += keys
    for column, ids in records.items():
        if column in columns and ids:
            conditions.append(f"{prefix}{column} in ({', '.join('?' for _ in ids)})")
            params += ids
    return " or ".join(conditions), params


def _erase_table(warehouse: Warehouse, table: str, columns: Sequence[str], customer_id: str, where: str, params: list) -> int:
    """Rewrite the personal columns of `table`'s rows matching `where`; rows already erased are not
    counted again."""
    placeholder = placeholder_email(customer_id)
    sets: dict[str, str] = {}
    set_params, still_personal, check_params = [], [], []
    for column in columns:
        if column in EMAILS:
            sets[column] = f"case when {column} is null then null else cast(? as {sql_type(warehouse.engine, 'string')}) end"
            set_params.append(placeholder)
            still_personal.append(f"{column} <> ?")
            check_params.append(placeholder)
        elif column in ERASED:
            sets[column] = "null"
            still_personal.append(f"{column} is not null")
    return warehouse.update_rows(
        table, sets, f"({where}) and ({' or '.join(still_personal)})", (*params, *check_params), set_params
    )


def _identifier_matches(columns: Iterable[str]) -> list[tuple[str, str]]:
    """(kind, column) for each column of `columns` holding a CRM id or an email."""
    return [("crm_id" if column == "crm_id" else "email", column) for column in columns if column == "crm_id" or column in EMAILS]


def _md5(warehouse: Warehouse, kind: str, column: str, alias: str | None = None) -> str:
    """SQL for the md5 of an identifier column as erased_identifiers holds it: an email trimmed and
    lower-cased (as staging normalises it), a CRM id as it is."""
    name = f"{alias}.{quote_identifier(column)}" if alias else quote_identifier(column)
    return f"md5(lower(trim({name})))" if kind == "email" else f"md5(cast({name} as {sql_type(warehouse.engine, 'string')}))"


def _remember_identifiers(warehouse: Warehouse, customer_id: str, records: dict[str, list]) -> None:
    """The md5 of every CRM id and email the customer's records held in raw, for erasure on load;
    read before raw's emails are replaced. An email is remembered only when it looks like one and no
    other record of its table holds it: a shop's walk-in address, or 'n/a', would otherwise erase
    strangers' rows as they load. Identifiers already held for the customer are not added again."""
    from extract_load.contract import load_contract

    erased_at = _now()
    for entity in load_contract().entities.values():
        columns = warehouse.table_columns(entity.raw_table)
        mine, params = _rows_of(columns, [], records, "raw")
        if not mine:
            continue
        for kind, column in _identifier_matches(columns):
            identifier, extra, extra_params = _md5(warehouse, kind, column, "raw"), "", []
            if kind == "email":
                also_mine, extra_params = _rows_of(columns, [], records, "other")
                extra = (f" and position('@' in raw.{column}) > 1 and not exists (select 1 from {entity.raw_table} as other"
                         f" where lower(trim(other.{column})) = lower(trim(raw.{column})) and not ({also_mine}))")
            warehouse.execute(
                f"insert into {ERASED_IDENTIFIERS} (customer_id, kind, identifier_md5, erased_at)"
                f" select distinct ?, '{kind}', {identifier}, cast(? as {sql_type(warehouse.engine, 'timestamp')})"
                f" from {entity.raw_table} as raw"
                f" where ({mine}) and {identifier} is not null{extra}"
                f" and not exists (select 1 from {ERASED_IDENTIFIERS} as held where held.customer_id = ?"
                f" and held.kind = '{kind}' and held.identifier_md5 = {identifier})",
                (customer_id, erased_at, *params, *extra_params, customer_id),
            )


def _contact_values(warehouse: Warehouse, records: dict[str, list]) -> list[str]:
    """The person's emails and phones as raw holds them, lower-cased: what quarantined text is
    searched for (before raw's are erased). The placeholder is not among them."""
    from extract_load.contract import load_contract

    values: set[str] = set()
    for entity in load_contract().entities.values():
        columns = warehouse.table_columns(entity.raw_table)
        where, params = _rows_of(columns, [], records)
        contact = [column for column in columns if column in EMAILS or column == "phone"]
        if where and contact:
            for row in warehouse.fetchall(f"select {', '.join(contact)} from {entity.raw_table} where {where}", params):
                values.update(str(value).strip().lower() for value in row if value is not None)
    return sorted(value for value in values if len(value) >= 5 and not value.endswith("@" + PLACEHOLDER_DOMAIN))


def _rewrite_files(folder: Path, keys: set[str]) -> dict[Path, int]:
    """Rewrite each CSV file of `folder` holding rows of `keys` (by customer_id) without them, each
    replaced whole once written; returns the rows dropped per file."""
    dropped = {}
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or CUSTOMER_KEY not in header:
                continue
            position = header.index(CUSTOMER_KEY)
            rows = list(reader)
        kept = [row for row in rows if len(row) <= position or row[position] not in keys]
        if len(kept) == len(rows):
            continue
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(kept)
        os.replace(partial, path)
        dropped[path] = len(rows) - len(kept)
    return dropped


def _append_audit(warehouse: Warehouse, erasure: Erasure, note: str | None = None) -> None:
    touched = ", ".join(f"{table}={rows}" for table, rows in sorted(erasure.rows.items()))
    warehouse.execute(
        f"insert into {ERASURES} (customer_id, requested_at, requested_by, erased_at, rows_erased, tables_touched,"
        " files_rewritten) values (?, ?, ?, ?, ?, ?, ?)",
        (erasure.customer_id, erasure.requested_at, erasure.requested_by, erasure.erased_at, erasure.rows_erased,
         note or touched, erasure.files_rewritten),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
