"""The right to erasure (`crmw forget`, warehouse/erasure.py), on both engines: after it no text column
of any table holds the person's emails, phones or names, their orders and revenue are unchanged, the
audit has its row, a second erasure changes nothing, a later delivery of the person is erased as it
loads, and the next build stays green with the person still one customer."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from extract_load.load import ExtractSettings, extract_system
from tests.conftest import DBT_LAST_DAY, ENGINES, assert_one_line_error, copy_warehouse, dbt_in_process
from warehouse.adapter import Warehouse, connect, qualified
from warehouse.erasure import ERASURE_REQUESTS, forget, forget_requested, placeholder_email

CRMW = Path(sys.executable).parent / "crmw"
CONTACT_LIST = "contact_list_2025-03-01.csv"


def _private_copy(engine: str, request: pytest.FixtureRequest, built_warehouses, tmp_path: Path) -> str:
    """A copy of the shared built warehouse of `engine` that this test may change."""
    return copy_warehouse(built_warehouses(engine, request), request, tmp_path)


def _person(warehouse: Warehouse) -> str:
    """A customer with a CRM contact, a phone, orders and tickets (one with a comment if any has), whose
    name no other CRM contact has."""
    return warehouse.fetchall(
        "select customers.customer_id from marts.dim_customers as customers"
        " where customers.has_crm_contact and customers.phone is not null"
        " and exists (select 1 from marts.fct_orders as orders where orders.customer_id = customers.customer_id)"
        " and exists (select 1 from marts.fct_tickets as tickets where tickets.customer_id = customers.customer_id)"
        # Names are not unique (the simulator reuses them): a person no one else shares a name with.
        " and not exists (select 1 from raw_crm.customers as namesake where namesake.first_name = customers.first_name"
        " and namesake.last_name = customers.last_name and namesake.crm_id <> customers.crm_id)"
        " order by (select count(*) from marts.fct_tickets as tickets where tickets.customer_id = customers.customer_id"
        " and tickets.satisfaction_comment is not null) desc, customers.customer_id limit 1"
    )[0][0]


def _records(warehouse: Warehouse, customer_id: str) -> dict[str, list[str]]:
    records: dict[str, list[str]] = {"customers": [], "orders": [], "tickets": []}
    for table, key in warehouse.fetchall(
        "select source_table, source_key from intermediate.int_customer_identity where customer_id = ? order by 1, 2",
        (customer_id,),
    ):
        records[table].append(key)
    return records


def _in(column: str, values: list) -> str:
    return f"cast({column} as varchar) in ({', '.join('?' for _ in values)})" if values else "false"


def _personal_values(warehouse: Warehouse, records: dict[str, list[str]]) -> tuple[set[str], set[tuple[str, str]]]:
    """The person's emails and phones (as raw and staging hold them, lower-cased) and (first, last) names."""
    crm, orders, tickets = records["customers"], records["orders"], records["tickets"]
    values, names = set(), set()
    for email, phone, first, last in warehouse.fetchall(
        f"select email, phone, first_name, last_name from raw_crm.customers where {_in('crm_id', crm)}", crm
    ):
        values.update(value.strip().lower() for value in (email, phone) if value)
        names.add((first, last))
    values.update(phone for (phone,) in warehouse.fetchall(
        f"select phone from staging.stg_crm__customer_versions where {_in('crm_id', crm)} and phone is not null", crm))
    values.update(email.strip().lower() for (email,) in warehouse.fetchall(
        f"select customer_email from raw_sales.orders where {_in('order_id', orders)}", orders) if email)
    values.update(email.strip().lower() for (email,) in warehouse.fetchall(
        f"select requester_email from raw_service.tickets where {_in('ticket_id', tickets)}", tickets) if email)
    # Invalid emails ('n/a') and short values are not the person's alone.
    return {value for value in values if len(value) >= 6 and (value.count("@") == 1 or value.isdigit())}, names


def _tables_holding(warehouse: Warehouse, values: set[str], names: set[tuple[str, str]]) -> dict[str, int]:
    """schema.table -> rows of it whose text columns hold one of `values`, or a (first, last) pair of `names`."""
    columns: dict[str, list[str]] = {}
    for schema, table, column, kind in warehouse.fetchall(
        "select table_schema, table_name, column_name, lower(data_type) from information_schema.columns"
        " where table_catalog = current_database() and table_schema not in ('information_schema', 'pg_catalog')"
        " order by 1, 2, ordinal_position"
    ):
        if kind in ("varchar", "text", "character varying"):
            columns.setdefault(f"{schema}.{table}", []).append(column)
    found = {}
    for table, text_columns in columns.items():
        conditions = [f"strpos(lower({column}), ?) > 0" for column in text_columns for _ in values]
        params: list = [value for _ in text_columns for value in values]
        if {"first_name", "last_name"} <= set(text_columns):
            for first, last in names:
                conditions.append("(first_name = ? and last_name = ?)")
                params += [first, last]
        rows = warehouse.fetchall(f"select count(*) from {qualified(table)} where {' or '.join(conditions)}", params)[0][0]
        if rows:
            found[table] = rows
    return found


def _purchases(warehouse: Warehouse, customer_id: str) -> tuple:
    return (
        warehouse.fetchall("select frequency, monetary from marts.customer_360 where customer_id = ?", (customer_id,))[0],
        warehouse.fetchall("select count(*), sum(net_amount) from marts.fct_orders where customer_id = ?", (customer_id,))[0],
        warehouse.fetchall("select count(*) from marts.fct_tickets where customer_id = ?", (customer_id,))[0],
        warehouse.fetchall("select sum(revenue), sum(order_count) from marts.kpi_daily_sales")[0],
        warehouse.fetchall("select count(*) from marts.dim_customers")[0],
    )


def _plant_copies(warehouse: Warehouse, customer_id: str, records: dict[str, list[str]], folder: Path) -> None:
    """What the build alone does not make: a published mart (publish's copy), a contact list table
    and its dated CSV (the activation model's), and a quarantined CSV line holding the person's contact."""
    warehouse.ensure_schema("published")
    warehouse.execute("create table published.dim_customers as select * from marts.dim_customers")
    warehouse.execute("create table activation.contact_list as select customer_id, first_name, last_name, email, phone"
                      " from activation.customer_contacts")
    rows = warehouse.fetchall(
        "select customer_id, first_name, last_name, email, phone from activation.contact_list"
        " where customer_id = ? or customer_id in (select customer_id from activation.contact_list"
        " where customer_id <> ? order by customer_id limit 2) order by customer_id",
        (customer_id, customer_id),
    )
    folder.mkdir(parents=True)
    with (folder / CONTACT_LIST).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["customer_id", "first_name", "last_name", "email", "phone"])
        writer.writerows(rows)
    crm_id = records["customers"][0]
    first, last, email, phone = warehouse.fetchall(
        "select first_name, last_name, email, phone from raw_crm.customers where crm_id = ? limit 1", (crm_id,))[0]
    line = f"{crm_id},{first},{last},{email},{phone},1901-13-45"
    warehouse.execute(
        "insert into raw_meta.quarantine (system, entity, source_file, source_row, raw_text, raw_bytes_base64, reason,"
        " _batch_date, _run_id, _loaded_at) values ('crm', 'customers', 'crm/2025-01-05/customers.csv', 7, ?, ?,"
        " 'wrong_type: birth_date', ?, 'test', ?)",
        (line, base64.b64encode(line.encode()).decode(), DBT_LAST_DAY, dt.datetime(2025, 3, 1)),
    )


def _crmw(url: str, export_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WAREHOUSE_URL": url, "CRMW_EXPORT_DIR": str(export_dir), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(CRMW), *args], env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("engine", ENGINES)
def test_forget_erases_the_person_from_every_table_and_file_keeps_their_orders_and_is_idempotent(
    engine, built_warehouses, request, tmp_path
):
    url = _private_copy(engine, request, built_warehouses, tmp_path)
    exports = tmp_path / "exports"
    with connect(url) as warehouse:
        customer_id = _person(warehouse)
        records = _records(warehouse, customer_id)
        values, names = _personal_values(warehouse, records)
        _plant_copies(warehouse, customer_id, records, exports / "activation")
        before = _purchases(warehouse, customer_id)
        held_before = _tables_holding(warehouse, values, names)
    # Found where a person's data lives, so that finding it nowhere afterwards means something.
    assert {"raw_crm.customers", "raw_sales.orders", "raw_service.tickets", "staging.stg_crm__customers",
            "marts.dim_customers", "marts.fct_orders", "published.dim_customers", "activation.contact_list",
            "raw_meta.quarantine"} <= set(held_before), held_before
    assert any("@" in value for value in values) and any(value.isdigit() for value in values), values

    result = _crmw(url, exports, "forget", "--customer", customer_id, "--requested-by", "privacy desk")
    assert result.returncode == 0, result.stderr
    assert f"crmw: erased customer {customer_id}:" in result.stdout and "raw_crm.customers" in result.stdout

    with connect(url) as warehouse:
        assert _tables_holding(warehouse, values, names) == {}
        assert _purchases(warehouse, customer_id) == before
        assert warehouse.fetchall(
            "select email, first_name, last_name, phone, birth_date from marts.dim_customers where customer_id = ?",
            (customer_id,)) == [(placeholder_email(customer_id), None, None, None, None)]
        assert {email for (email,) in warehouse.fetchall(
            "select distinct customer_email from marts.fct_orders where customer_id = ?", (customer_id,))} == {
            placeholder_email(customer_id)}
        assert warehouse.fetchall(
            "select count(*) from marts.fct_tickets where customer_id = ? and satisfaction_comment is not null",
            (customer_id,))[0][0] == 0
        assert warehouse.fetchall(
            "select raw_text, raw_bytes_base64, reason from raw_meta.quarantine where _run_id = 'test'"
        ) == [('{"erased": true}', None, "wrong_type: birth_date")]
        [(requested_by, rows_erased, touched, files)] = warehouse.fetchall(
            "select requested_by, rows_erased, tables_touched, files_rewritten from audit.erasures where customer_id = ?",
            (customer_id,))
        held = warehouse.fetchall("select kind, count(*) from audit.erased_identifiers where customer_id = ? group by kind"
                                  " order by kind", (customer_id,))
        snapshot = warehouse.fetchall("select * from raw_crm.customers order by crm_id, _version_hash")
    assert requested_by == "privacy desk" and files == 1 and rows_erased > 0
    assert "raw_crm.customers=" in touched and "published.dim_customers=" in touched
    assert dict(held)["crm_id"] == len(records["customers"]) and dict(held)["email"] >= 1
    with (exports / "activation" / CONTACT_LIST).open(newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert customer_id not in {row["customer_id"] for row in listed} and len(listed) == 2

    # Again: nothing left to erase, nothing changes, and the audit logs the request with 0 rows.
    (again,) = forget([customer_id], "privacy desk", exports / "activation", url)
    assert again.rows_erased == 0 and again.files_rewritten == 0
    with connect(url) as warehouse:
        assert warehouse.fetchall("select * from raw_crm.customers order by crm_id, _version_hash") == snapshot
        assert [rows for (rows,) in warehouse.fetchall(
            "select rows_erased from audit.erasures where customer_id = ? order by erased_at", (customer_id,))] == [rows_erased, 0]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_later_delivery_of_an_erased_person_is_erased_on_load_and_the_next_build_keeps_them_one_customer(
    engine, built_warehouses, dbt_sources, request, tmp_path
):
    url = _private_copy(engine, request, built_warehouses, tmp_path)
    with connect(url) as warehouse:
        customer_id = _person(warehouse)
        records = _records(warehouse, customer_id)
        values, names = _personal_values(warehouse, records)
        before = _purchases(warehouse, customer_id)
        others = warehouse.fetchall("select crm_id from staging.stg_crm__customers where crm_id not in"
                                    f" ({', '.join('?' for _ in records['customers'])}) order by crm_id limit 1",
                                    records["customers"])[0][0]
    forget([customer_id], "test", None, url)

    # The CRM exports the person's contact again, changed, beside another contact's change.
    latest: dict[str, dict] = {}
    for path in sorted(dbt_sources.glob("crm/*/customers.csv")):
        with path.open(newline="", errors="replace") as handle:  # the simulator plants bad bytes
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            for row in reader:
                latest[row["crm_id"]] = row
    day = DBT_LAST_DAY + dt.timedelta(days=1)
    person = {**latest[records["customers"][0]], "last_name": "Forgotten-Again", "phone": "+44 20 7946 0321",
              "modified_at": f"{day} 09:00:00"}
    other = {**latest[others], "last_name": "Changed", "modified_at": f"{day} 09:30:00"}
    broken = {**person, "birth_date": "31/02/1990", "modified_at": f"{day} 10:00:00"}  # quarantined: not a date
    drop = tmp_path / "sources" / "crm" / day.isoformat()
    drop.mkdir(parents=True)
    with (drop / "customers.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows([person, other, broken])
    settings = ExtractSettings(source_dir=tmp_path / "sources", sales_db_url=f"sqlite:///{tmp_path / 'none.sqlite'}")
    (audit,) = extract_system("crm", day, "test-later", settings=settings, warehouse_url=url, entities=["customers"])
    assert (audit.rows_loaded, audit.rows_quarantined, audit.rows_erased) == (2, 1, 2)
    with connect(url) as warehouse:
        loaded = dict((crm_id, rest) for crm_id, *rest in warehouse.fetchall(
            "select crm_id, first_name, last_name, email, phone, birth_date from raw_crm.customers where _batch_date = ?", (day,)))
        assert warehouse.fetchall("select rows_erased from raw_meta.load_audit where _batch_date = ? and entity = 'customers'",
                                  (day,)) == [(2,)]
        assert warehouse.fetchall("select raw_text, raw_bytes_base64 from raw_meta.quarantine where _batch_date = ?",
                                  (day,)) == [('{"erased": true}', None)]
    assert loaded[person["crm_id"]] == [None, None, placeholder_email(customer_id), None, None]
    assert loaded[others][1] == "Changed" and loaded[others][2] == other["email"].strip()

    # The day's build, then a full refresh (identity resolved again from raw, through the placeholder
    # emails): green, the person still one customer with the same orders, and nowhere by name.
    for refresh in ((), ("--full-refresh",)):
        dbt_in_process(url, "build", *refresh, "--exclude-resource-type", "unit_test", tmp_path=tmp_path)
        with connect(url) as warehouse:
            assert _purchases(warehouse, customer_id) == before, refresh
            assert _records(warehouse, customer_id) == records, refresh
            assert _tables_holding(warehouse, values | {"+44 20 7946 0321", "442079460321", "forgotten-again"}, names) == {}
            assert warehouse.fetchall("select email, last_name from activation.customer_contacts where customer_id = ?",
                                      (customer_id,)) == [(None, None)]


@pytest.mark.parametrize("engine", ENGINES)
def test_requests_in_bulk_are_carried_out_once_and_an_unknown_key_is_named(engine, built_warehouses, request, tmp_path):
    url = _private_copy(engine, request, built_warehouses, tmp_path)
    with connect(url) as warehouse:
        keys = [key for (key,) in warehouse.fetchall("select customer_id from marts.dim_customers order by customer_id limit 2")]
        forget_requested(None, url)  # makes the audit tables: nothing waits yet
        warehouse.execute(
            f"insert into {ERASURE_REQUESTS} (customer_id, requested_at, requested_by) values"
            " (?, ?, 'crm'), (?, ?, 'crm'), ('0000000000000000', ?, 'crm')",
            (keys[0], dt.datetime(2025, 3, 1, 8), keys[1], dt.datetime(2025, 3, 1, 9), dt.datetime(2025, 3, 1, 10)),
        )
    done = forget_requested(None, url)
    assert [erasure.customer_id for erasure in done] == [*keys, "0000000000000000"]
    assert done[0].rows_erased > 0 and done[2].rows_erased == 0
    assert forget_requested(None, url) == []
    with connect(url) as warehouse:
        assert warehouse.fetchall(
            "select customer_id, tables_touched from audit.erasures where customer_id = '0000000000000000'"
        ) == [("0000000000000000", "unknown customer key")]
        assert {email for (email,) in warehouse.fetchall(
            "select email from marts.dim_customers where customer_id in (?, ?)", keys)} <= {
            placeholder_email(key) for key in keys} | {None}

    result = _crmw(url, tmp_path / "exports", "forget", "--customer", keys[0], "--customer", "not-a-key")
    assert_one_line_error(result, "--customer", "'not-a-key'", "customer_id of marts.dim_customers")
    with connect(url) as warehouse:  # checked before anything is erased: no audit row for either
        assert warehouse.fetchall("select count(*) from audit.erasures where customer_id = ?", (keys[0],)) == [(1,)]
