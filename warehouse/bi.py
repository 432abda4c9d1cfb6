"""What BI may read, without personal data: the published marts and the models' tables with every
field that names, reaches or pins down a person taken out.

- Dropped: emails, names, phone, street, the source systems' own person ids (crm_id), free-text
  ticket comments (people write names and addresses in them), and the customer version's id.
- Replaced: the birth date by an age band as of the export's date; the customer key (and the
  referrer's, and a retired key) by a salted hash, so BI can still count and join customers across
  tables but not look one up elsewhere. The salt is a secret of the installation
  (CRMW_BI_KEY_SALT), never in the repository; the same salt every day keeps the keys stable, and
  the export keeps its fingerprint to refuse a changed one.

`bi_tables` lists the tables and `bi_select` writes the SELECT of each; `publish_bi_views` makes
them the views of schema `bi`, the one schema BI's role reads (on PostgreSQL), refreshed by
`publish` in the transaction that publishes the marts, so BI sees one green build's numbers;
`export_duckdb` copies those views into a DuckDB file of their own, which a desktop BI tool can
open without ever reading the warehouse file that holds the personal data. Both keep the salt's
fingerprint (`bi.bi_info`) and refuse another salt: every customer key BI holds would change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from warehouse.adapter import Warehouse, qualified, quote_identifier

SALT_SETTING = "CRMW_BI_KEY_SALT"
# Fewer characters than this is guessable by trying: the hash of a key would then be reversible.
MINIMUM_SALT_CHARACTERS = 16
PERSONAL = frozenset({
    "email", "customer_email", "requester_email", "first_name", "last_name", "phone", "street",
    "crm_id", "referred_by_crm_id", "satisfaction_comment", "customer_version_id",
})
CUSTOMER_KEYS = frozenset({"customer_id", "referred_by_customer_id", "retired_customer_id"})
AGE_BANDS = ((25, "under 25"), (35, "25-34"), (45, "35-44"), (55, "45-54"), (65, "55-64"))
BI_SCHEMA = "bi"
# The date BI's views were made for (ages are counted at it), when, and the salt's fingerprint.
BI_INFO = "bi_info"
BI_INFO_COLUMNS = {"as_of_date": "date", "written_at": "timestamp", "salt_fingerprint": "string"}


class BiSettingsError(ValueError):
    """The BI key salt is missing, too short, or not the one the earlier export used."""


def key_salt(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    salt = environ.get(SALT_SETTING, "")
    if len(salt) < MINIMUM_SALT_CHARACTERS:
        raise BiSettingsError(
            f"{SALT_SETTING}: {'not set' if not salt else f'{len(salt)} characters'}; expected a secret of at least"
            f" {MINIMUM_SALT_CHARACTERS} characters (e.g. `openssl rand -hex 32`), kept out of the repository and the"
            " same every day: it keeps BI's customer keys stable"
        )
    return salt


def salt_fingerprint(salt: str) -> str:
    return hashlib.sha256(f"crm-warehouse bi key salt:{salt}".encode()).hexdigest()


def bi_tables(marts: Sequence[str], model_tables: Sequence[str]) -> dict[str, str]:
    """BI's table name -> the warehouse table it reads: each published mart and each model table."""
    tables = {name: f"published.{name}" for name in marts}
    for table in model_tables:
        name = table.partition(".")[2]
        if name in tables:
            raise ValueError(f"{table}: a published mart has the name {name} too; BI's tables need one name each")
        tables[name] = table
    return tables


def bi_select(table: str, columns: Sequence[str], salt: str, as_of_date: dt.date) -> str:
    """The SELECT of `table`'s columns BI may read (same SQL on DuckDB, PostgreSQL and Spark)."""
    salt_literal = "'" + salt.replace("'", "''") + "'"
    selected = []
    for column in columns:
        name = quote_identifier(column)
        if column in PERSONAL:
            continue
        if column in CUSTOMER_KEYS:
            selected.append(f"md5({salt_literal} || {name}) as {name}")
        elif column == "birth_date":
            bands = " ".join(f"when {name} >= cast('{_born_on_or_after(upper, as_of_date).isoformat()}' as date)"
                             f" then '{label}'" for upper, label in AGE_BANDS)
            selected.append(f"case when {name} is null then null {bands} else '65 and over' end as age_band")
        else:
            selected.append(name)
    return f"select {', '.join(selected)} from {qualified(table)}"


def _born_on_or_after(age: int, as_of_date: dt.date) -> dt.date:
    """The earliest birth date of someone younger than `age` on `as_of_date`, years counted as
    whole 365.25-day spans of the days between: a comparison of dates, which every engine writes
    alike (a difference of two dates is days on DuckDB and PostgreSQL, an interval on Spark)."""
    return as_of_date - dt.timedelta(days=math.ceil(age * 365.25) - 1)


def drop_bi_views(warehouse: Warehouse) -> None:
    """Drop every view of schema `bi` (all it holds but the table `bi_info`): on PostgreSQL a view
    stops the table it reads being dropped or replaced, as publish does to a mart whose columns changed."""
    for view in warehouse.columns_by_table("table_schema = ? and table_name <> ?", (BI_SCHEMA, BI_INFO)):
        warehouse.execute(f"drop view {qualified(view)}")


def publish_bi_views(warehouse: Warehouse, tables: Mapping[str, str], salt: str, as_of_date: dt.date) -> list[str]:
    """Make schema `bi` hold exactly a view of each of `tables` (BI's name -> the warehouse table or
    view it reads) without personal data, ages counted at `as_of_date`; returns the views' names.
    Run it in the transaction that publishes, after `drop_bi_views` and the publishing: no reader
    sees the views half made or over half-published marts. A table
    missing from the warehouse (a model that never ran) has no view. Refused when `bi` was made
    with another salt."""
    fingerprint = salt_fingerprint(salt)
    info = f"{BI_SCHEMA}.{BI_INFO}"
    warehouse.ensure_table(info, BI_INFO_COLUMNS)
    earlier = {value for (value,) in warehouse.fetchall(f"select salt_fingerprint from {info}")}
    if earlier - {fingerprint}:
        raise BiSettingsError(
            f"{SALT_SETTING}: not the salt schema {BI_SCHEMA} was made with; every customer key BI holds would change."
            f" Set the earlier salt, or run `drop schema {BI_SCHEMA} cascade` to start BI's keys afresh"
        )
    with warehouse.transaction():
        drop_bi_views(warehouse)
        made = []
        # One catalog read for all of them: one per table took most of the 2-3 s of fifty views on DuckDB.
        schemas = sorted({source.partition(".")[0] for source in tables.values()})
        held = warehouse.columns_by_table(f"table_schema in ({', '.join('?' for _ in schemas)})", schemas)
        for name, source in tables.items():
            columns = held.get(source)
            if columns:
                warehouse.execute(
                    f"create view {BI_SCHEMA}.{quote_identifier(name)} as {bi_select(source, columns, salt, as_of_date)}"
                )
                made.append(name)
        warehouse.delete_rows(info, "true")
        warehouse.execute(
            f"insert into {info} ({', '.join(BI_INFO_COLUMNS)}) values (?, ?, ?)",
            (as_of_date, dt.datetime.now(dt.UTC).replace(tzinfo=None), fingerprint),
        )
    return made


def export_duckdb(warehouse: Warehouse, tables: Mapping[str, str], target: Path, salt: str, as_of_date: dt.date) -> dict[str, int]:
    """Make schema `bi` again (`publish_bi_views`) and copy it into a new DuckDB file at `target`, as
    tables of the file's schema `bi`, so the same SQL reads BI's tables in the file and on
    PostgreSQL; the file replaces `target` whole once written, so a tool never opens half of one.
    Returns the rows per table. Refused when `target` was written with another salt."""
    import duckdb

    fingerprint = salt_fingerprint(salt)
    if target.exists():
        with duckdb.connect(str(target), read_only=True) as earlier:
            [(previous,)] = earlier.execute(f"select salt_fingerprint from {BI_SCHEMA}.{BI_INFO}").fetchall()
        if previous != fingerprint:
            raise BiSettingsError(
                f"{SALT_SETTING}: not the salt {target} was written with; every customer key BI holds would change."
                f" Set the earlier salt, or delete {target} to start BI's keys afresh"
            )
    with warehouse.transaction():
        publish_bi_views(warehouse, tables, salt, as_of_date)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = {}
    warehouse.execute(f"attach '{partial}' as bi_export")
    try:
        warehouse.execute(f"create schema bi_export.{BI_SCHEMA}")
        for (name,) in warehouse.fetchall(
            "select table_name from information_schema.tables where table_schema = ? and table_catalog = current_database()"
            " order by table_name", (BI_SCHEMA,)
        ):
            copy = f"bi_export.{BI_SCHEMA}.{quote_identifier(name)}"
            warehouse.execute(f"create table {copy} as select * from {BI_SCHEMA}.{quote_identifier(name)}")
            rows[name] = warehouse.fetchall(f"select count(*) from {copy}")[0][0]
    finally:
        warehouse.execute("detach bi_export")
    os.replace(partial, target)
    return rows
