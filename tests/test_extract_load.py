"""Extract-load against simulated sources, on both engines: counts match the sources, reruns and
day-by-day loads leave raw as one clean run would, and bad rows are quarantined, not lost."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from extract_load.contract import load_contract
from extract_load.load import ExtractError, ExtractSettings, extract_system, reconcile_system
from extract_load.key_state import KEY_BUCKETS, is_bucketed
from extract_load.parse import DeliveryError
from simulator import SimulationSettings, append_day, simulate
from crmw.scratch import new_postgres_database
from warehouse import connect
from warehouse.adapter import sql_type

START = dt.date(2025, 1, 1)
DAYS = [START + dt.timedelta(days=offset) for offset in range(11)]  # campaign members arrive on day 11
SYSTEMS = ("sales", "crm", "service")
CONTRACT = load_contract()
# Each raw table and where its rows come from: a SQL table (counted by its cursor) or a drop file.
RAW_TABLES = {
    entity.raw_table: entity.name if entity.system.format == "sql" else entity.system.layout.replace("{entity}", entity.name)
    for entity in CONTRACT.entities.values()
}
FILE_TABLES = tuple(entity.raw_table for entity in CONTRACT.entities.values() if entity.system.format != "sql")
RUN_METADATA = ("_batch_date", "_run_id", "_loaded_at")

TICKET = {
    "ticket_id": 1,
    "requester_email": "ana.smith.1@example.com",
    "channel": "email",
    "category": "billing",
    "priority": "normal",
    "status": "open",
    "created_at": "2025-01-01 09:00:00",
    "updated_at": "2025-01-01 10:00:00",
    "first_reply_at": None,
    "solved_at": None,
    "satisfaction_rating": None,
}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """Sources for 5 days; never modified (tests that break files work on a copy)."""
    out = tmp_path_factory.mktemp("simulated") / "sources"
    counts = simulate(SimulationSettings(customers=2000, start=START, days=len(DAYS), seed=0, out=out, dirty_rate=0.0))
    assert counts["tickets"] > 0 and counts["orders"] > 0  # the checks below need every source
    return out


@pytest.fixture
def sources(simulated, tmp_path) -> Path:
    """A private copy of the simulated sources that a test may break."""
    copy = tmp_path / "sources"
    shutil.copytree(simulated, copy)
    return copy


def _settings(source_dir: Path, max_quarantine_ratio: float = 0.05) -> ExtractSettings:
    return ExtractSettings(
        source_dir=source_dir,
        sales_db_url=f"sqlite:///{source_dir / 'sales.sqlite'}",
        max_quarantine_ratio=max_quarantine_ratio,
    )


def _load(url: str, day: dt.date, settings: ExtractSettings, run_id: str | None = None, systems=SYSTEMS) -> dict:
    """Extract `systems` for `day`, then reconcile the SQL ones, as the DAG does; the audits by
    "system.entity" (extract) and "system.entity:reconcile"."""
    audits = {}
    for system in systems:
        for audit in extract_system(system, day, run_id or f"run-{day}", settings=settings, warehouse_url=url):
            audits[f"{audit.system}.{audit.entity}"] = audit
        if CONTRACT.systems[system].format == "sql":
            for audit in reconcile_system(system, day, run_id or f"run-{day}", settings=settings, warehouse_url=url):
                audits[f"{audit.system}.{audit.entity}:reconcile"] = audit
    return audits


def _source_count(source_dir: Path, source: str, day: dt.date) -> int:
    """Rows the sources hold up to the end of `day`: SQL rows by cursor, file data lines by drop date."""
    if "/" not in source:
        with sqlite3.connect(source_dir / "sales.sqlite") as db:
            end = (day + dt.timedelta(days=1)).isoformat()
            cursor = CONTRACT.entities[source].cursor
            return db.execute(f"select count(*) from {source} where {cursor} < ?", (end,)).fetchone()[0]
    total = 0
    for drop in DAYS:
        if drop > day:
            continue
        lines = [line for line in (source_dir / source.format(date=drop)).read_text().splitlines() if line.strip()]
        total += len(lines) - 1 if source.endswith(".csv") else len(lines)
    return total


def _raw_counts(url: str) -> dict[str, int]:
    with connect(url) as warehouse:
        return {table: warehouse.fetchall(f"select count(*) from {table}")[0][0] for table in RAW_TABLES}


def _snapshot(url: str, table: str, leave_out=RUN_METADATA) -> list[tuple]:
    """Every row of `table`, without the columns that name the run, sorted."""
    with connect(url) as warehouse:
        columns = [c for c in warehouse.table_columns(table) if c not in leave_out]
        rows = warehouse.fetchall(f"select {', '.join(columns)} from {table}")
    return sorted(rows, key=repr)


def _second_warehouse_url(warehouse_url: str, request, tmp_path: Path) -> str:
    """Another empty warehouse on the same engine as `warehouse_url`."""
    if warehouse_url.startswith("duckdb"):
        return f"duckdb:///{tmp_path / 'second.duckdb'}"
    server = request.getfixturevalue("postgres_server_url")
    return new_postgres_database(server, f"crmw_test_{os.getpid()}_{uuid.uuid4().hex[:8]}")


def _quarantine(url: str) -> list[tuple]:
    with connect(url) as warehouse:
        return warehouse.fetchall(
            "select system, entity, source_file, source_row, raw_text, reason from raw_meta.quarantine"
            " order by source_file, source_row"
        )


def _audit_rows(url: str) -> list[tuple]:
    with connect(url) as warehouse:
        return warehouse.fetchall(
            "select system, entity, _batch_date, rows_read, rows_loaded, rows_unchanged, rows_quarantined, new_columns"
            " from raw_meta.load_audit order by system, entity, _batch_date"
        )


# -- counts ---------------------------------------------------------------------------------------


def test_raw_row_counts_equal_source_counts_up_to_each_logical_date(warehouse_url, simulated):
    settings = _settings(simulated)
    for day in DAYS:
        _load(warehouse_url, day, settings)
        expected = {table: _source_count(simulated, source, day) for table, source in RAW_TABLES.items()}
        assert _raw_counts(warehouse_url) == expected, day
    assert all(count > 0 for count in expected.values())


def test_loading_a_late_date_directly_loads_everything_up_to_it(warehouse_url, simulated):
    _load(warehouse_url, DAYS[2], _settings(simulated))
    assert _raw_counts(warehouse_url) == {table: _source_count(simulated, source, DAYS[2]) for table, source in RAW_TABLES.items()}


def test_raw_rows_carry_their_batch_delivery_and_source_file(warehouse_url, simulated):
    _load(warehouse_url, DAYS[1], _settings(simulated), systems=("crm",))
    with connect(warehouse_url) as warehouse:
        rows = warehouse.fetchall(
            "select _batch_date, _delivery_date, _source_file, min(_source_row), max(_source_row), count(*)"
            " from raw_crm.customers group by 1, 2, 3 order by 2"
        )
    for day, (batch, delivery, source_file, first_row, last_row, count) in zip(DAYS, rows):
        assert (batch, delivery, source_file) == (DAYS[1], day, f"crm/{day}/customers.csv")
        assert (first_row, last_row) == (2, count + 1)  # file lines: the header is line 1


def test_raw_tables_on_postgresql_are_indexed_by_key_and_by_load_block_ranges_and_older_indexes_are_dropped(postgres_url, simulated):
    _load(postgres_url, DAYS[0], _settings(simulated), systems=("crm",))
    with connect(postgres_url) as warehouse:  # as a warehouse loaded before had them: the hash in the key's index, a b-tree on the date
        warehouse.ensure_index("raw_crm.customers", ["crm_id", "_version_hash"])
        warehouse.ensure_index("raw_crm.customers", ["_batch_date"])
    _load(postgres_url, DAYS[1], _settings(simulated), systems=("crm",))
    with connect(postgres_url) as warehouse:
        indexes = warehouse.fetchall(
            "select indexdef from pg_indexes where schemaname = 'raw_crm' and tablename = 'customers' order by 1"
        )
    assert [definition.partition(" USING ")[2] for (definition,) in indexes] == ["brin (_batch_date, _loaded_at)", "btree (crm_id)"]


# -- reruns and backfills ---------------------------------------------------------------------------


def test_running_the_same_date_twice_leaves_raw_and_load_log_as_one_run_would(warehouse_url, simulated):
    settings = _settings(simulated)
    _load(warehouse_url, DAYS[0], settings)
    _load(warehouse_url, DAYS[1], settings, run_id="first-attempt")
    tables = [*RAW_TABLES, "raw_meta.load_log", "raw_meta.quarantine"]
    before = {table: _snapshot(warehouse_url, table) for table in tables}
    audit_before = _snapshot(warehouse_url, "raw_meta.load_audit", (*RUN_METADATA, "seconds"))

    _load(warehouse_url, DAYS[1], settings, run_id="second-attempt")

    assert {table: _snapshot(warehouse_url, table) for table in tables} == before
    assert _snapshot(warehouse_url, "raw_meta.load_audit", (*RUN_METADATA, "seconds")) == audit_before
    with connect(warehouse_url) as warehouse:
        run_ids = warehouse.fetchall(
            "select distinct _run_id from raw_meta.load_audit where entity = 'orders' and _batch_date = ?", (DAYS[1],)
        )
        log_rows = warehouse.fetchall("select count(*), count(distinct file_name) from raw_meta.load_log")
    assert run_ids == [("second-attempt",)]
    assert log_rows == [(2 * len(FILE_TABLES), 2 * len(FILE_TABLES))]  # two drops per file source, once each


def test_raw_tables_an_earlier_version_loaded_lose_the_run_id_and_keep_their_hashes_as_uuids(warehouse_url, simulated, request, tmp_path):
    """Raw rows once carried their run's id and the md5 as 32 hex characters: the next load converts
    the table in place, and the versions it held compare as before (nothing loaded twice)."""
    settings = _settings(simulated)
    _load(warehouse_url, DAYS[0], settings)
    with connect(warehouse_url) as warehouse:
        hashes_before = warehouse.fetchall("select crm_id, replace(cast(_version_hash as varchar), '-', '') from raw_crm.customers")
        for table in RAW_TABLES:  # back to the earlier layout
            warehouse.execute(f"alter table {table} add column _run_id {sql_type(warehouse.engine, 'string')}")
            warehouse.execute(
                f"alter table {table} alter column _version_hash type {sql_type(warehouse.engine, 'string')}"
                " using replace(cast(_version_hash as varchar), '-', '')"
            )
    _load(warehouse_url, DAYS[1], settings)
    direct_url = _second_warehouse_url(warehouse_url, request, tmp_path)
    for day in DAYS[:2]:
        _load(direct_url, day, settings)
    with connect(warehouse_url) as warehouse:
        hash_types = {
            table: {name: kind for name, kind in warehouse.column_types(table).items() if name in ("_run_id", "_version_hash")}
            for table in RAW_TABLES
        }
        hashes_after = warehouse.fetchall(
            "select crm_id, replace(cast(_version_hash as varchar), '-', '') from raw_crm.customers where _batch_date = ?", (DAYS[0],)
        )
    assert hash_types == {table: {"_version_hash": "uuid"} for table in RAW_TABLES}
    assert sorted(hashes_after) == sorted(hashes_before)
    for table in RAW_TABLES:
        assert _snapshot(warehouse_url, table) == _snapshot(direct_url, table), table


def test_loading_day_by_day_gives_the_same_file_rows_as_loading_the_last_day(warehouse_url, simulated, request, tmp_path):
    settings = _settings(simulated)
    for day in DAYS:
        _load(warehouse_url, day, settings, systems=("crm", "service"))
    direct_url = _second_warehouse_url(warehouse_url, request, tmp_path)
    _load(direct_url, DAYS[-1], settings, systems=("crm", "service"))
    for table in FILE_TABLES:
        day_by_day = _snapshot(warehouse_url, table)
        assert day_by_day == _snapshot(direct_url, table), table
        assert len(day_by_day) == _source_count(simulated, RAW_TABLES[table], DAYS[-1])


def test_unchanged_files_are_skipped_and_a_changed_file_is_loaded_again(warehouse_url, sources):
    settings = _settings(sources)
    _load(warehouse_url, DAYS[0], settings, systems=("crm",))
    audit = _load(warehouse_url, DAYS[1], settings, systems=("crm",))["crm.customers"]
    assert (audit.files_loaded, audit.files_skipped) == (1, 1)

    day1 = sources / f"crm/{DAYS[0]}/customers.csv"
    lines = day1.read_text().splitlines()
    header = lines[0].split(",")
    changed = lines[2].split(",")
    changed[header.index("city")] = "Changed City"
    # The CRM re-exports day 1 with two rows: one as before, one with a new city.
    day1.write_text("\n".join([lines[0], lines[1], ",".join(changed)]) + "\n")
    audit = _load(warehouse_url, DAYS[2], settings, systems=("crm",))["crm.customers"]
    day3_rows = _source_count(sources, "crm/{date}/customers.csv", DAYS[2]) - _source_count(sources, "crm/{date}/customers.csv", DAYS[1])
    assert (audit.files_loaded, audit.files_skipped) == (2, 1)
    assert (audit.rows_read, audit.rows_loaded, audit.rows_unchanged) == (2 + day3_rows, 1 + day3_rows, 1)
    with connect(warehouse_url) as warehouse:
        versions = warehouse.fetchall("select city from raw_crm.customers where crm_id = ? order by _batch_date", (changed[0],))
    assert [city for (city,) in versions][-1] == "Changed City" and len(versions) == 2


# -- bad rows -------------------------------------------------------------------------------------


def test_broken_rows_are_quarantined_with_reason_and_line_while_good_rows_load(warehouse_url, sources):
    day = DAYS[0]
    customers = sources / f"crm/{day}/customers.csv"
    header, *rows = customers.read_bytes().splitlines()
    good = rows[:6]
    broken_csv = [
        header,  # line 1
        good[0],  # 2
        good[1] + b",one too many",  # 3: wrong column count
        good[2],  # 4
        b"C\xff" + good[3][2:],  # 5: not UTF-8
        good[4],  # 6
        b"," + good[5].split(b",", 1)[1],  # 7: empty primary key
    ]
    customers.write_bytes(b"\n".join(broken_csv) + b"\n")

    tickets = sources / f"service/{day}/tickets.jsonl"
    records = [
        json.dumps({**TICKET, "ticket_id": 101}),  # line 1
        '{"ticket_id": 102, "status": ',  # 2: invalid JSON
        json.dumps({**TICKET, "ticket_id": "abc"}),  # 3: not an integer
        json.dumps({**TICKET, "ticket_id": 103}),  # 4
        "",  # 5: blank lines are not rows
        json.dumps({**TICKET, "ticket_id": 1.5}),  # 6: not an integer either, though it would cast
        json.dumps({**TICKET, "ticket_id": ""}),  # 7: empty primary key
        json.dumps({**TICKET, "ticket_id": 104, "created_at": "yesterday"}),  # 8: bad timestamp
    ]
    tickets.write_text("\n".join(records) + "\n")

    audits = _load(warehouse_url, day, _settings(sources, max_quarantine_ratio=1.0), systems=("crm", "service"))

    quarantined = {(row[2], row[3]): row for row in _quarantine(warehouse_url)}
    csv_file, jsonl_file = f"crm/{day}/customers.csv", f"service/{day}/tickets.jsonl"
    expected_reasons = {
        (csv_file, 3): "column",
        (csv_file, 5): "encoding",
        (csv_file, 7): "missing key crm_id",
        (jsonl_file, 2): "invalid JSON",
        (jsonl_file, 3): "ticket_id: expected integer",
        (jsonl_file, 6): "ticket_id: expected integer",
        (jsonl_file, 7): "missing key ticket_id",
        (jsonl_file, 8): "created_at: expected timestamp",
    }
    assert set(quarantined) == set(expected_reasons)
    for key, fragment in expected_reasons.items():
        system, entity, _, _, raw_text, reason = quarantined[key]
        assert fragment in reason, (key, reason)
        assert (system, entity) == (("crm", "customers") if key[0] == csv_file else ("service", "tickets"))
        assert raw_text
    assert quarantined[(jsonl_file, 3)][4] == records[2]  # the line as delivered
    assert quarantined[(csv_file, 7)][4] == broken_csv[6].decode()

    with connect(warehouse_url) as warehouse:
        loaded_customers = warehouse.fetchall(
            "select crm_id, _source_row from raw_crm.customers where _source_file = ? order by _source_row", (csv_file,)
        )
        loaded_tickets = warehouse.fetchall(
            "select ticket_id, _source_row from raw_service.tickets where _source_file = ? order by _source_row", (jsonl_file,)
        )
    first_column = [line.split(b",")[0].decode(errors="replace") for line in broken_csv]
    assert loaded_customers == [(first_column[line - 1], line) for line in (2, 4, 6)]
    assert loaded_tickets == [(101, 1), (103, 4)]

    assert (audits["crm.customers"].rows_read, audits["crm.customers"].rows_loaded, audits["crm.customers"].rows_quarantined) == (6, 3, 3)
    assert (audits["service.tickets"].rows_read, audits["service.tickets"].rows_loaded, audits["service.tickets"].rows_quarantined) == (7, 2, 5)
    for system, entity, _, rows_read, rows_loaded, rows_unchanged, rows_quarantined, _ in _audit_rows(warehouse_url):
        assert rows_read == rows_loaded + rows_unchanged + rows_quarantined, (system, entity)


def test_csv_missing_a_required_column_fails_naming_the_file_and_column(warehouse_url, sources):
    customers = sources / f"crm/{DAYS[1]}/customers.csv"
    with customers.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with customers.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [name for name in rows[0] if name != "email"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    with pytest.raises((ExtractError, DeliveryError)) as caught:
        _load(warehouse_url, DAYS[1], _settings(sources), systems=("crm",))
    assert f"crm/{DAYS[1]}/customers.csv" in str(caught.value)
    assert "'email'" in str(caught.value)
    with connect(warehouse_url) as warehouse:  # nothing of the failed run stays behind
        assert warehouse.fetchall("select count(*) from raw_crm.customers") == [(0,)]
        assert warehouse.fetchall("select count(*) from raw_meta.load_log") == [(0,)]


def test_new_csv_column_is_loaded_as_a_new_raw_column_and_reported(warehouse_url, sources):
    customers = sources / f"crm/{DAYS[0]}/customers.csv"
    lines = customers.read_text().splitlines()
    customers.write_text("\n".join([lines[0] + ",vip_level", *(f"{line},level-{n}" for n, line in enumerate(lines[1:]))]) + "\n")

    first = _load(warehouse_url, DAYS[0], _settings(sources), systems=("crm",))["crm.customers"]
    second = _load(warehouse_url, DAYS[1], _settings(sources), systems=("crm",))["crm.customers"]

    assert first.new_columns == "vip_level"
    assert second.new_columns == ""
    assert first.rows_quarantined == 0
    with connect(warehouse_url) as warehouse:
        assert "vip_level" in warehouse.table_columns("raw_crm.customers")
        values = warehouse.fetchall("select _delivery_date, vip_level from raw_crm.customers order by _delivery_date, _source_row")
        reported = warehouse.fetchall(
            "select _batch_date, new_columns from raw_meta.load_audit where entity = 'customers' order by 1"
        )
    day1 = [value for day, value in values if day == DAYS[0]]
    day2 = [value for day, value in values if day == DAYS[1]]
    assert day1 == [f"level-{n}" for n in range(len(lines) - 1)]
    assert day2 and all(value is None for value in day2)
    assert reported == [(DAYS[0], "vip_level"), (DAYS[1], "")]


def test_a_utf8_byte_order_mark_is_dropped_from_csv_and_json_lines(warehouse_url, sources):
    day = DAYS[0]
    customers = sources / f"crm/{day}/customers.csv"
    tickets = sources / f"service/{day}/tickets.jsonl"
    expected = {"customers": len(customers.read_text().splitlines()) - 1, "tickets": len(tickets.read_text().splitlines())}
    for path in (customers, tickets):  # as Excel's "CSV UTF-8" and many exports write them
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _load(warehouse_url, day, _settings(sources), systems=("crm", "service"))
    with connect(warehouse_url) as warehouse:
        assert warehouse.fetchall("select count(*) from raw_crm.customers") == [(expected["customers"],)]
        assert warehouse.fetchall("select count(*) from raw_service.tickets") == [(expected["tickets"],)]
        assert warehouse.fetchall("select count(*) from raw_meta.quarantine") == [(0,)]
        assert warehouse.fetchall("select count(*) from raw_crm.customers where crm_id like 'C%'") == [(expected["customers"],)]


def test_an_empty_export_is_a_delivery_with_no_rows_and_the_next_file_still_loads(warehouse_url, sources):
    first, second = DAYS[0], DAYS[1]
    (sources / f"crm/{first}/customers.csv").write_bytes(b"")
    (sources / f"service/{first}/tickets.jsonl").write_bytes(b"\xef\xbb\xbf\n")
    audits = _load(warehouse_url, first, _settings(sources), systems=("crm", "service"))
    for name in ("crm.customers", "service.tickets"):
        audit = audits[name]
        assert (audit.files_loaded, audit.rows_read, audit.rows_loaded, audit.rows_quarantined) == (1, 0, 0, 0), name
    # Logged as loaded: not read again; the next day's file loads as usual.
    audits = _load(warehouse_url, second, _settings(sources), systems=("crm",))
    assert audits["crm.customers"].files_skipped == 1 and audits["crm.customers"].rows_loaded > 0


def test_quarantine_above_the_allowed_ratio_fails_naming_the_source_and_ratio(warehouse_url, sources):
    customers = sources / f"crm/{DAYS[0]}/customers.csv"
    header, *rows = customers.read_text().splitlines()
    rows[0] = rows[0] + ",extra"  # wrong column count
    rows[1] = "," + rows[1].split(",", 1)[1]  # empty key
    customers.write_text("\n".join([header, *rows]) + "\n")

    with pytest.raises(ExtractError) as caught:
        _load(warehouse_url, DAYS[0], _settings(sources, max_quarantine_ratio=0.0009), systems=("crm",))
    message = str(caught.value)
    assert "crm.customers" in message
    assert f"2 of {len(rows)} rows" in message
    assert f"({2 / len(rows):.1%})" in message
    assert "above the allowed 0.1%" in message
    assert "raw_meta.quarantine" in message
    assert len(_quarantine(warehouse_url)) == 2  # kept for inspection

    # The same file passes under the default ratio.
    audit = _load(warehouse_url, DAYS[0], _settings(sources), systems=("crm",))["crm.customers"]
    assert (audit.rows_read, audit.rows_quarantined) == (len(rows), 2)


def _write_customers(sources: Path, day: dt.date, keep_rows: int, empty_keys: int) -> int:
    """Cut the day's customers.csv to `keep_rows` rows, the first `empty_keys` of them without
    their key; returns the rows kept."""
    customers = sources / f"crm/{day}/customers.csv"
    header, *rows = customers.read_text().splitlines()
    rows = rows[:keep_rows]
    rows[:empty_keys] = ["," + row.split(",", 1)[1] for row in rows[:empty_keys]]
    customers.write_text("\n".join([header, *rows]) + "\n")
    return len(rows)


def test_a_tiny_delivery_with_a_bad_row_loads_and_reports_it_below_the_minimum_rows(warehouse_url, sources, caplog):
    _write_customers(sources, DAYS[0], keep_rows=2, empty_keys=1)
    with caplog.at_level("WARNING", logger="extract_load.load"):
        audit = _load(warehouse_url, DAYS[0], _settings(sources), systems=("crm",))["crm.customers"]

    assert (audit.rows_read, audit.rows_loaded, audit.rows_quarantined) == (2, 1, 1)
    assert [row[3] for row in _quarantine(warehouse_url) if row[1] == "customers"] == [2]
    with connect(warehouse_url) as warehouse:
        assert warehouse.fetchall(
            "select rows_read, rows_quarantined from raw_meta.load_audit where entity = 'customers'"
        ) == [(2, 1)]
    assert any(
        "crm.customers: 1 of 2 rows quarantined (50.0%)" in message and "applies from 100 rows" in message
        for message in caplog.messages
    ), caplog.messages


def test_the_quarantine_ratio_applies_from_the_minimum_rows_up(warehouse_url, sources):
    _write_customers(sources, DAYS[0], keep_rows=3, empty_keys=1)
    with pytest.raises(ExtractError, match="crm.customers: 1 of 3 rows quarantined"):
        _load(warehouse_url, DAYS[0], replace(_settings(sources), quarantine_min_rows=3), systems=("crm",))
    assert len(_quarantine(warehouse_url)) == 1  # kept for inspection


def test_bad_quarantine_min_rows_setting_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("CRMW_SOURCE_DIR", str(tmp_path))
    assert ExtractSettings.from_env().quarantine_min_rows == 100
    monkeypatch.setenv("CRMW_QUARANTINE_MIN_ROWS", "2.5")
    with pytest.raises(ExtractError, match="CRMW_QUARANTINE_MIN_ROWS='2.5': expected a whole number of rows"):
        ExtractSettings.from_env()
    monkeypatch.setenv("CRMW_QUARANTINE_MIN_ROWS", "0")
    assert ExtractSettings.from_env().quarantine_min_rows == 0


def _unexpected_files(url: str) -> list[tuple]:
    with connect(url) as warehouse:
        return warehouse.fetchall(
            "select system, file_name, reason, _batch_date from raw_meta.unexpected_files order by file_name"
        )


def test_files_the_layout_does_not_name_are_reported_once_and_the_expected_files_load(warehouse_url, sources, caplog):
    first, second = DAYS[0], DAYS[1]
    strays = {
        f"crm/{first}/customers copy é.csv": "no file of the layout crm/{date}/{entity}.csv for customers, interactions",
        f"crm/{first}/notes/readme.txt": "no file of the layout",
        "crm/latest/customers.csv": "'latest' in the {date} place of crm/{date}/{entity}.csv is not a YYYY-MM-DD date",
        f"crm/{second}/customers (1).csv": "no file of the layout",  # reported on its own date
    }
    for name in strays:
        (sources / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources / f"crm/{first}/customers.csv", sources / name)
    settings = _settings(sources)
    with caplog.at_level("WARNING", logger="extract_load.load"):
        audits = _load(warehouse_url, first, settings, systems=("crm",))
        _load(warehouse_url, first, settings, systems=("crm",))  # a rerun reports them again, once

    reported = _unexpected_files(warehouse_url)
    assert [row[1] for row in reported] == sorted(name for name in strays if str(second) not in name)
    for system, name, reason, batch_date in reported:
        assert (system, batch_date) == ("crm", first) and strays[name] in reason, (name, reason)
    assert f"source crm: not loaded: crm/{first}/customers copy é.csv" in caplog.text
    expected_rows = _source_count(sources, "crm/{date}/customers.csv", first)
    assert audits["crm.customers"].rows_loaded == expected_rows
    with connect(warehouse_url) as warehouse:
        assert warehouse.fetchall("select count(*) from raw_crm.customers") == [(expected_rows,)]

    _load(warehouse_url, second, settings, systems=("crm",))
    assert [(name, day) for _, name, _, day in _unexpected_files(warehouse_url) if day == second] == [
        (f"crm/{second}/customers (1).csv", second)
    ]


def _with_first_names(sources: Path, day: dt.date, names: list[bytes]) -> list[bytes]:
    """The day's customers.csv cut to one row per name, each row's first_name set to those bytes;
    returns the file's lines."""
    customers = sources / f"crm/{day}/customers.csv"
    header, *rows = customers.read_bytes().splitlines()
    lines = [header]
    for name, row in zip(names, rows):
        crm_id, _, rest = row.split(b",", 2)
        lines.append(b",".join([crm_id, name, rest]))
    customers.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def _quarantined_bytes(url: str) -> dict[tuple[str, int], tuple[str, bytes]]:
    with connect(url) as warehouse:
        rows = warehouse.fetchall("select source_file, source_row, raw_text, raw_bytes_base64, reason from raw_meta.quarantine")
    return {(name, row): (reason, base64.b64decode(encoded)) for name, row, _, encoded, reason in rows}


def test_quarantine_keeps_the_original_bytes_of_a_line_the_encoding_cannot_read(warehouse_url, sources):
    day = DAYS[0]
    lines = _with_first_names(sources, day, [b"Jos\xe9", b"Ana"])  # Latin-1 in a UTF-8 export
    tickets = sources / f"service/{day}/tickets.jsonl"
    latin1_ticket = json.dumps({**TICKET, "category": "r\u00e9clamation"}, ensure_ascii=False).encode("latin-1")
    tickets.write_bytes(latin1_ticket + b"\r\n" + json.dumps({**TICKET, "ticket_id": 2, "satisfaction_rating": "x"}).encode() + b"\n")

    _load(warehouse_url, day, _settings(sources, max_quarantine_ratio=1.0), systems=("crm", "service"))

    quarantined = _quarantined_bytes(warehouse_url)
    csv_reason, csv_bytes = quarantined[(f"crm/{day}/customers.csv", 2)]
    assert "encoding" in csv_reason and csv_bytes == lines[1]
    jsonl_reason, jsonl_bytes = quarantined[(f"service/{day}/tickets.jsonl", 1)]
    assert "not utf-8" in jsonl_reason and jsonl_bytes == latin1_ticket + b"\r"
    reason, contract_breaker = quarantined[(f"service/{day}/tickets.jsonl", 2)]
    assert "satisfaction_rating: expected integer" in reason and json.loads(contract_breaker)["ticket_id"] == 2


def test_a_system_declaring_cp1252_loads_its_accented_rows(warehouse_url, sources, tmp_path, monkeypatch):
    from extract_load.contract import DEFAULT_CONTRACT_PATH

    contract = tmp_path / "contract.yml"
    contract.write_text(DEFAULT_CONTRACT_PATH.read_text().replace("    raw_schema: raw_crm\n", "    raw_schema: raw_crm\n    encoding: cp1252\n"))
    monkeypatch.setenv("CRMW_SOURCE_CONTRACT", str(contract))
    day = DAYS[0]
    # \x80 is the euro sign in CP1252 (a control character in Latin-1); \x81 is no CP1252 character.
    lines = _with_first_names(sources, day, ["José".encode("cp1252"), "Zoë \x80".encode("latin-1"), b"Bad\x81"])

    audit = _load(warehouse_url, day, _settings(sources, max_quarantine_ratio=1.0), systems=("crm",))["crm.customers"]

    assert (audit.rows_read, audit.rows_loaded, audit.rows_quarantined) == (3, 2, 1)
    with connect(warehouse_url) as warehouse:
        names = warehouse.fetchall("select first_name from raw_crm.customers order by _source_row")
    assert names == [("José",), ("Zoë €",)]
    reason, original = _quarantined_bytes(warehouse_url)[(f"crm/{day}/customers.csv", 4)]
    assert "not cp1252" in reason and original == lines[3]


def test_contract_encoding_must_be_a_known_ascii_compatible_file_encoding(tmp_path):
    from extract_load.contract import DEFAULT_CONTRACT_PATH, ContractError

    assert CONTRACT.systems["crm"].encoding == "utf-8"
    contract = tmp_path / "contract.yml"
    for system, encoding, message in [
        ("crm", "klingon", "systems.crm.encoding is 'klingon': not a known encoding"),
        ("crm", "utf-16", "systems.crm.encoding is 'utf-16': expected an encoding that writes ASCII as ASCII"),
        ("sales", "latin-1", "systems.sales.encoding: a SQL source has no file encoding"),
    ]:
        schema = f"    raw_schema: raw_{system}\n"
        contract.write_text(DEFAULT_CONTRACT_PATH.read_text().replace(schema, f"{schema}    encoding: {encoding}\n"))
        with pytest.raises(ContractError, match=message):
            load_contract(contract)


def test_a_quarantined_sql_row_gives_back_the_exact_values_the_source_held(warehouse_url, sources):
    from extract_load.parse import decode_sql_row

    day = DAYS[0]
    stamp = f"{day} 10:00:00"
    with sqlite3.connect(sources / "sales.sqlite") as db:
        # Latin-1 bytes in a TEXT value (a good row otherwise), a BLOB, a NUL, empty text beside NULL,
        # and a REAL whose short form (0.3) would be another number.
        db.execute(
            "insert into products (sku, name, category, subcategory, list_price, unit_cost, updated_at) values"
            " ('LATIN1', cast(X'4a6f73e9' as text), 'c', 's', 1.5, 1, ?),"
            " ('BLOB', X'00ff10', 'c', 's', 'abc', 2, ?),"
            " ('NUL', 'a' || char(0) || 'b', '', null, 'x', 0.1 + 0.2, ?)",
            (stamp, stamp, stamp),
        )

    audits = _load(warehouse_url, day, _settings(sources, max_quarantine_ratio=1.0), systems=("sales",))

    assert audits["sales.products"].rows_quarantined == 3
    with connect(warehouse_url) as warehouse:
        rows = warehouse.fetchall(
            "select raw_text, raw_bytes_base64, reason from raw_meta.quarantine where entity = 'products'"
        )
    quarantined = {json.loads(text)["sku"]: (decode_sql_row(base64.b64decode(kept)), reason) for text, kept, reason in rows}
    values, reason = quarantined["LATIN1"]
    assert values["name"] == b"Jos\xe9" and "name is not utf-8 text" in reason
    assert quarantined["BLOB"][0]["name"] == b"\x00\xff\x10"
    values, _ = quarantined["NUL"]
    assert float(values.pop("unit_cost")) == 0.1 + 0.2
    assert values == {
        "sku": b"NUL", "name": b"a\x00b", "category": b"", "subcategory": None, "list_price": b"x", "updated_at": stamp.encode()
    }
    # Read again by the next day's look-back, they are known by their exact values: held once.
    next_day = _load(warehouse_url, DAYS[1], _settings(sources, max_quarantine_ratio=1.0), systems=("sales",))
    assert next_day["sales.products"].rows_quarantined == 0


def test_missing_source_folder_fails_naming_crmw_source_dir(warehouse_url, tmp_path):
    with pytest.raises(ExtractError, match="CRMW_SOURCE_DIR=.*folder not found"):
        _load(warehouse_url, DAYS[0], _settings(tmp_path / "nowhere"), systems=("crm",))


def test_unknown_system_fails_naming_it(warehouse_url, simulated):
    with pytest.raises(ExtractError, match="source system 'erp': not in the source contract"):
        extract_system("erp", DAYS[0], "r", settings=_settings(simulated), warehouse_url=warehouse_url)


def test_bad_quarantine_ratio_setting_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("CRMW_SOURCE_DIR", str(tmp_path))
    monkeypatch.setenv("CRMW_MAX_QUARANTINE_RATIO", "lots")
    with pytest.raises(ExtractError, match="CRMW_MAX_QUARANTINE_RATIO='lots'"):
        ExtractSettings.from_env()
    monkeypatch.setenv("CRMW_MAX_QUARANTINE_RATIO", "0.2")
    settings = ExtractSettings.from_env()
    assert settings.max_quarantine_ratio == 0.2
    assert settings.sales_db_url == f"sqlite:///{tmp_path / 'sales.sqlite'}"


# -- versions, increments, deletes and late rows (sources simulated one day at a time) ---------------

INCREMENT_DAYS = [START + dt.timedelta(days=offset) for offset in range(3)]
SQL_ENTITIES = tuple(entity for entity in CONTRACT.entities.values() if entity.system.format == "sql")
INSERT_ONLY = ("order_status_history",)  # its rows never change: the whole table is its history
CONTRACT_ONLY = ("_batch_date", "_loaded_at", "_source_row")  # SQL row numbers follow the read


def _simulate_days(out: Path, days: list[dt.date], customers: int, dirty_rate: float, after_each=None) -> None:
    """Simulate `days` one at a time (first day, then appends), calling after_each(day) after each."""
    simulate(SimulationSettings(customers=customers, start=days[0], days=1, seed=5, out=out, dirty_rate=dirty_rate))
    for index, day in enumerate(days):
        if index:
            append_day(out, day)
        if after_each:
            after_each(day)


def _live_versions(url: str, entity) -> list[tuple]:
    """The latest version of every key raw holds that is not marked deleted, contract columns only."""
    key = ", ".join(entity.primary_key)
    columns = ", ".join(entity.column_types)
    with connect(url) as warehouse:
        rows = warehouse.fetchall(
            f"select {columns} from (select *, row_number() over (partition by {key}"
            " order by _delivery_date desc, _deleted desc) as _recency"
            f" from {entity.raw_table}) as versions where _recency = 1 and not _deleted"
        )
    return sorted(rows, key=repr)


def test_three_days_loaded_one_by_one_equal_the_three_days_loaded_at_once(warehouse_url, request, tmp_path):
    settings = _settings(tmp_path / "daily", max_quarantine_ratio=1.0)
    _simulate_days(settings.source_dir, INCREMENT_DAYS, 1500, 0.01, lambda day: _load(warehouse_url, day, settings))
    at_once = _settings(tmp_path / "at-once", max_quarantine_ratio=1.0)
    simulate(SimulationSettings(customers=1500, start=START, days=3, seed=5, out=at_once.source_dir, dirty_rate=0.01))
    at_once_url = _second_warehouse_url(warehouse_url, request, tmp_path)
    _load(at_once_url, INCREMENT_DAYS[-1], at_once)

    for table in FILE_TABLES:  # every version, each once
        assert _snapshot(warehouse_url, table) == _snapshot(at_once_url, table), table
    for entity in SQL_ENTITIES:
        if entity.name in INSERT_ONLY:
            day_by_day = _snapshot(warehouse_url, entity.raw_table, CONTRACT_ONLY + ("_delivery_date", "_source_file"))
            assert day_by_day == _snapshot(at_once_url, entity.raw_table, CONTRACT_ONLY + ("_delivery_date", "_source_file"))
        else:
            assert _live_versions(warehouse_url, entity) == _live_versions(at_once_url, entity), entity.name
    with connect(warehouse_url) as warehouse:  # day by day saw orders change status: more versions
        versions, orders = warehouse.fetchall("select count(*), count(distinct order_id) from raw_sales.orders")[0]
    assert versions > orders

    before = {table: _snapshot(warehouse_url, table) for table in (*RAW_TABLES, "raw_meta.quarantine")}
    audits = _load(warehouse_url, INCREMENT_DAYS[-1], settings, run_id="rerun")
    assert {table: _snapshot(warehouse_url, table) for table in before} == before
    for audit in audits.values():
        assert audit.rows_read == audit.rows_loaded + audit.rows_unchanged + audit.rows_quarantined, audit


def test_defects_owed_quarantine_delete_and_load_are_handled_and_no_good_row_is_missing(warehouse_url, tmp_path):
    days = [START + dt.timedelta(days=offset) for offset in range(6)]  # test orders go 1-3 days after creation
    settings = _settings(tmp_path / "sources", max_quarantine_ratio=1.0)
    _simulate_days(settings.source_dir, days, 1500, 0.03, lambda day: _load(warehouse_url, day, settings))
    with (settings.source_dir / "truth" / "defects.csv").open(newline="") as handle:
        defects = list(csv.DictReader(handle))
    with connect(warehouse_url) as warehouse:
        quarantined = warehouse.fetchall("select entity, source_file, source_row, raw_text, reason from raw_meta.quarantine")
        audits = warehouse.fetchall(
            "select system, entity, _batch_date, rows_read, rows_loaded, rows_unchanged, rows_quarantined, rows_deleted"
            " from raw_meta.load_audit"
        )
        tombstones = {order_id for (order_id,) in warehouse.fetchall("select order_id from raw_sales.orders where _deleted")}
        loaded_orders = {order_id for (order_id,) in warehouse.fetchall("select order_id from raw_sales.orders")}
    with sqlite3.connect(settings.source_dir / "sales.sqlite") as db:
        source_orders = {order_id for (order_id,) in db.execute("select order_id from orders")}

    file_rejects = {(source_file, row): reason for _, source_file, row, _, reason in quarantined}
    sql_rejects = {
        (entity, "-".join(str(json.loads(raw)[name]) for name in CONTRACT.entities[entity].primary_key))
        for entity, source_file, _, raw, _ in quarantined
        if source_file.startswith("sales:")
    }
    owed = {handling: [d for d in defects if d["handling"] == handling] for handling in ("quarantine", "delete", "load")}
    assert all(owed.values()), {handling: len(rows) for handling, rows in owed.items()}
    for defect in owed["quarantine"]:
        if defect["system"] == "sales":
            assert (defect["entity"], defect["record_key"]) in sql_rejects, defect
        else:
            source_file, _, line = defect["location"].rpartition(":")
            assert (source_file, int(line)) in file_rejects, defect
    assert len(sql_rejects) == sum(1 for d in owed["quarantine"] if d["system"] == "sales")  # each once
    for defect in owed["delete"]:
        order_id = int(defect["record_key"])
        assert (order_id in tombstones) == (order_id not in source_orders), defect
    assert tombstones and tombstones <= loaded_orders - source_orders
    for defect in owed["load"]:
        if defect["entity"] == "orders":
            assert int(defect["record_key"]) in loaded_orders, defect
    assert sum(row[7] for row in audits if row[1] == "orders") == len(tombstones)
    for system, entity, day, rows_read, rows_loaded, rows_unchanged, rows_quarantined, _ in audits:
        assert rows_read == rows_loaded + rows_unchanged + rows_quarantined, (system, entity, day)
    for entity in SQL_ENTITIES:  # every source row raw can hold is there, in its current version
        names = list(entity.column_types)
        with sqlite3.connect(settings.source_dir / "sales.sqlite") as db:
            source_keys = {tuple(map(str, row)) for row in db.execute(f"select {', '.join(entity.primary_key)} from {entity.name}")}
        held = {tuple(str(row[names.index(name)]) for name in entity.primary_key) for row in _live_versions(warehouse_url, entity)}
        rejected = {tuple(key.split("-")) for name, key in sql_rejects if name == entity.name}
        assert held == source_keys - rejected if entity.name == "order_lines" else held == source_keys, entity.name


@pytest.mark.parametrize("lookback_hours, recovered", [(72, 0), (0, 1)])
def test_late_rows_are_loaded_by_the_look_back_or_else_by_the_key_reconciliation(warehouse_url, sources, lookback_hours, recovered):
    day = DAYS[0]
    settings = ExtractSettings(
        source_dir=sources, sales_db_url=f"sqlite:///{sources / 'sales.sqlite'}", lookback=dt.timedelta(hours=lookback_hours)
    )
    _load(warehouse_url, day, settings, systems=("sales",))
    with sqlite3.connect(sources / "sales.sqlite") as db:  # written now, stamped with an earlier time
        db.execute(
            "insert into orders (order_id, customer_email, channel, status, created_at, updated_at)"
            " values (800000000, 'late@example.com', 'web', 'placed', ?, ?)",
            (f"{day} 08:00:00", f"{day} 08:00:00"),
        )
    audit = _load(warehouse_url, day + dt.timedelta(days=1), settings, systems=("sales",))["sales.orders:reconcile"]
    assert audit.rows_recovered == recovered
    with connect(warehouse_url) as warehouse:
        assert warehouse.fetchall("select count(*) from raw_sales.orders where order_id = 800000000") == [(1,)]


def test_full_refresh_reloads_the_system_from_scratch(warehouse_url, simulated, request, tmp_path):
    settings = _settings(simulated)
    for day in DAYS[:3]:
        _load(warehouse_url, day, settings, systems=("crm", "sales"))
    for system in ("crm", "sales"):
        audits = extract_system(system, DAYS[2], "refresh", settings=settings, warehouse_url=warehouse_url, full_refresh=True)
        assert all(audit.full_refresh for audit in audits)
    reconcile_system("sales", DAYS[2], "refresh", settings=settings, warehouse_url=warehouse_url)
    direct_url = _second_warehouse_url(warehouse_url, request, tmp_path)
    _load(direct_url, DAYS[2], settings, run_id="refresh", systems=("crm", "sales"))
    refreshed = [table for table in RAW_TABLES if not table.startswith("raw_service")]
    for table in [*refreshed, "raw_meta.load_log"]:
        assert _snapshot(warehouse_url, table, ("_loaded_at",)) == _snapshot(direct_url, table, ("_loaded_at",)), table
    with connect(warehouse_url) as warehouse:
        assert warehouse.fetchall("select distinct _batch_date from raw_meta.load_audit where system in ('crm', 'sales')") == [(DAYS[2],)]


def test_sql_source_gaining_a_column_loads_it_and_one_losing_a_required_column_fails(warehouse_url, sources):
    with sqlite3.connect(sources / "sales.sqlite") as db:
        db.execute("alter table orders add column coupon_code text")
        db.execute("update orders set coupon_code = 'WELCOME' where order_id % 2 = 0")
    audit = _load(warehouse_url, DAYS[0], _settings(sources), systems=("sales",))["sales.orders"]
    assert audit.new_columns == "coupon_code"
    with connect(warehouse_url) as warehouse:
        assert warehouse.fetchall("select count(*) from raw_sales.orders where coupon_code = 'WELCOME'")[0][0] > 0

    with sqlite3.connect(sources / "sales.sqlite") as db:
        db.execute("alter table orders drop column channel")
    with pytest.raises((ExtractError, DeliveryError)) as caught:
        _load(warehouse_url, DAYS[1], _settings(sources), systems=("sales",))
    assert "sales:orders" in str(caught.value) and "'channel'" in str(caught.value)


def test_sales_database_can_come_from_an_airflow_connection(monkeypatch, tmp_path):
    monkeypatch.setenv("CRMW_SOURCE_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_CRMW_SALES", f"sqlite:///{tmp_path / 'shop db.sqlite'}")
    monkeypatch.setenv("CRMW_SALES_CONN_ID", "crmw_sales")
    assert ExtractSettings.from_env().sales_db_url == f"sqlite:///{tmp_path / 'shop db.sqlite'}"
    monkeypatch.setenv("CRMW_SALES_CONN_ID", "nowhere")
    with pytest.raises(ExtractError, match="CRMW_SALES_CONN_ID='nowhere': no such Airflow connection"):
        ExtractSettings.from_env()


KILLED_LOAD = """
import datetime as dt, os, sys, time
from pathlib import Path
from extract_load.load import ExtractSettings, extract_system
from warehouse import adapter

source_dir, url, signal_file = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
for engine_class in (adapter._DuckDBWarehouse, adapter._PostgresWarehouse):
    bulk_write = engine_class.append_arrow

    def write_half_then_hang(self, table, data, bulk_write=bulk_write):
        if not table.startswith("raw_meta.staging__") or data.num_rows < 2:
            return bulk_write(self, table, data)
        bulk_write(self, table, data.slice(0, data.num_rows // 2))
        signal_file.write_text(table)
        time.sleep(600)

    engine_class.append_arrow = write_half_then_hang
settings = ExtractSettings(source_dir=source_dir, sales_db_url=f"sqlite:///{source_dir / 'sales.sqlite'}")
extract_system(sys.argv[4], dt.date.fromisoformat(sys.argv[5]), "killed", settings=settings, warehouse_url=url)
"""


@pytest.mark.parametrize("system", ["sales", "crm"])
def test_a_load_killed_during_its_bulk_write_recovers_on_retry_to_a_clean_runs_rows(warehouse_url, simulated, system, request, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    settings = _settings(simulated)
    clean_url = _second_warehouse_url(warehouse_url, request, tmp_path)
    for url in (warehouse_url, clean_url):
        _load(url, DAYS[0], settings, systems=(system,))
    signal_file = tmp_path / "bulk-write-started"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_LOAD, str(simulated), warehouse_url, str(signal_file), system, DAYS[1].isoformat()],
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.monotonic() + 300
    while not signal_file.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert signal_file.exists(), f"the load never reached its bulk write (exit {child.poll()})"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)

    _load(warehouse_url, DAYS[1], settings, run_id=f"run-{DAYS[1]}", systems=(system,))
    _load(clean_url, DAYS[1], settings, run_id=f"run-{DAYS[1]}", systems=(system,))
    tables = [table for table in RAW_TABLES if table.startswith(f"raw_{system}.")] + ["raw_meta.load_log", "raw_meta.quarantine"]
    for table in tables:
        assert _snapshot(warehouse_url, table, ("_loaded_at",)) == _snapshot(clean_url, table, ("_loaded_at",)), table


def test_contract_cursor_must_be_a_timestamp_column_and_sql_tables_need_one(tmp_path):
    import yaml

    from extract_load.contract import ContractError, DEFAULT_CONTRACT_PATH

    spec = yaml.safe_load(DEFAULT_CONTRACT_PATH.read_text())
    spec["entities"]["orders"]["cursor"] = "channel"
    broken = tmp_path / "contract.yml"
    broken.write_text(yaml.safe_dump(spec))
    with pytest.raises(ContractError, match="entities.orders.cursor names 'channel'; expected a timestamp column"):
        load_contract(broken)
    del spec["entities"]["orders"]["cursor"]
    broken.write_text(yaml.safe_dump(spec))
    with pytest.raises(ContractError, match="entities.orders.cursor is missing"):
        load_contract(broken)


def test_the_contract_loads_strictly_and_an_unknown_key_fails_naming_file_place_and_key(tmp_path):
    from extract_load.contract import DEFAULT_CONTRACT_PATH, ContractError

    descriptions = {(entity.name, column.name): column.description for entity in CONTRACT.entities.values() for column in entity.columns}
    assert descriptions[("order_lines", "unit_price")] == "Price per unit charged, before discount."
    assert descriptions[("tickets", "satisfaction_rating")] == "Customer satisfaction, 1 (bad) to 5 (good)."

    cut = DEFAULT_CONTRACT_PATH.read_text().replace('"Discount on the line, in currency."', "Discount on the line, in currency.")
    broken = tmp_path / "contract.yml"
    broken.write_text(cut)
    with pytest.raises(ContractError) as caught:
        load_contract(broken)
    assert str(caught.value).startswith(f"source contract {broken.resolve()}: entities.order_lines.columns.discount has an unknown key 'in currency.'")
    assert "needs quotes" in str(caught.value)
    broken.write_text(DEFAULT_CONTRACT_PATH.read_text().replace("    raw_schema: raw_crm\n", "    raw_schema: raw_crm\n    delimiter: ';'\n"))
    with pytest.raises(ContractError, match=r"systems.crm has an unknown key 'delimiter' \(expected: description, format"):
        load_contract(broken)


def test_a_deleted_record_that_comes_back_is_live_again(warehouse_url, sources):
    settings = _settings(sources)
    _load(warehouse_url, DAYS[0], settings, systems=("sales",))
    with sqlite3.connect(sources / "sales.sqlite") as db:
        order_id, *_ = row = db.execute("select * from orders where updated_at < ? order by order_id limit 1", (str(DAYS[1]),)).fetchone()
        db.execute("delete from orders where order_id = ?", (order_id,))
    deleted = _load(warehouse_url, DAYS[1], settings, systems=("sales",))["sales.orders:reconcile"]
    with sqlite3.connect(sources / "sales.sqlite") as db:  # restored from a backup: its old updated_at
        db.execute(f"insert into orders values ({', '.join('?' for _ in row)})", row)
    restored = _load(warehouse_url, DAYS[2], settings, systems=("sales",))["sales.orders:reconcile"]

    assert (deleted.rows_deleted, restored.rows_recovered) == (1, 1)
    orders = CONTRACT.entities["orders"]
    live = {values[0] for values in _live_versions(warehouse_url, orders)}
    assert order_id in live


def _reconciled_keys(messages: list[str], entity: str) -> tuple[str, int]:
    """What the reconciliation of sales.`entity` compared, and how many source keys it read."""
    for message in messages:
        found = re.match(rf"reconciliation of sales\.{entity}: compared (.*), (\d+) source keys read", message)
        if found:
            return found.group(1), int(found.group(2))
    raise AssertionError(messages)


def _delete_order(source_dir: Path, before: dt.date) -> int:
    with sqlite3.connect(source_dir / "sales.sqlite") as db:
        (order_id,) = db.execute("select order_id from orders where updated_at < ? order by order_id limit 1", (str(before),)).fetchone()
        db.execute("delete from orders where order_id = ?", (order_id,))
    return order_id


def test_the_key_reconciliation_reads_only_the_keys_of_buckets_whose_digests_differ(warehouse_url, tmp_path, caplog):
    settings = _settings(tmp_path / "sources")
    days = INCREMENT_DAYS
    _simulate_days(settings.source_dir, days[:2], 400, 0.0, lambda day: _load(warehouse_url, day, settings, systems=("sales",)))
    append_day(settings.source_dir, days[2])
    deleted = _delete_order(settings.source_dir, days[2])
    caplog.clear()  # the earlier days' messages, when another test left the level at INFO
    with caplog.at_level("INFO", logger="extract_load.load"):
        audit = _load(warehouse_url, days[2], settings, systems=("sales",))["sales.orders:reconcile"]

    assert audit.rows_deleted == 1
    with connect(warehouse_url) as warehouse:
        assert warehouse.fetchall(f"select count(*) from raw_sales.orders where order_id = {deleted} and _deleted") == [(1,)]
        (orders,) = warehouse.fetchall("select count(distinct order_id) from raw_sales.orders")[0]
    assert _reconciled_keys(caplog.messages, "orders")[0] == f"the keys of 1 of {KEY_BUCKETS} buckets whose digests differ"
    assert _reconciled_keys(caplog.messages, "orders")[1] < orders / 20
    assert _reconciled_keys(caplog.messages, "order_lines") == (f"the keys of 0 of {KEY_BUCKETS} buckets whose digests differ", 0)
    assert _reconciled_keys(caplog.messages, "products")[0] == "every key"  # keyed by text: no hash for it


def test_reconciling_a_past_date_again_after_later_ones_leaves_raw_as_it_was_and_the_next_day_compares_no_key(warehouse_url, tmp_path, caplog):
    settings = _settings(tmp_path / "sources")
    days = [START + dt.timedelta(days=offset) for offset in range(4)]

    def load_deleting_an_order_before(day: dt.date) -> None:
        if day == days[2]:
            _delete_order(settings.source_dir, day)
        _load(warehouse_url, day, settings, systems=("sales",))

    _simulate_days(settings.source_dir, days, 300, 0.0, load_deleting_an_order_before)
    tables = [entity.raw_table for entity in SQL_ENTITIES]
    before = {table: _snapshot(warehouse_url, table) for table in tables}
    rerun = {audit.entity: audit for audit in reconcile_system("sales", days[2], "rerun", settings=settings, warehouse_url=warehouse_url)}
    assert rerun["orders"].rows_deleted == 1
    assert {table: _snapshot(warehouse_url, table) for table in tables} == before
    caplog.clear()
    with caplog.at_level("INFO", logger="extract_load.load"):
        again = _load(warehouse_url, days[3], settings, systems=("sales",))["sales.orders:reconcile"]
    assert (again.rows_deleted, again.rows_recovered) == (0, 0)
    assert _reconciled_keys(caplog.messages, "orders") == (f"the keys of 0 of {KEY_BUCKETS} buckets whose digests differ", 0)
    assert {table: _snapshot(warehouse_url, table) for table in tables} == before


def test_quarantined_source_rows_do_not_make_their_buckets_differ_on_every_later_reconciliation(warehouse_url, tmp_path, caplog):
    settings = _settings(tmp_path / "sources", max_quarantine_ratio=1.0)
    days = INCREMENT_DAYS
    _simulate_days(settings.source_dir, days, 1500, 0.03, lambda day: _load(warehouse_url, day, settings, systems=("sales",)))
    with connect(warehouse_url) as warehouse:
        held = dict(warehouse.fetchall("select entity, count(*) from raw_meta.quarantine where system = 'sales' group by entity"))
    bucketed = [entity.name for entity in SQL_ENTITIES if is_bucketed(entity)]
    assert any(held.get(name) for name in bucketed), held  # the source keeps rows raw lacks

    caplog.clear()
    with caplog.at_level("INFO", logger="extract_load.load"):
        again = reconcile_system("sales", days[-1], "again", settings=settings, warehouse_url=warehouse_url)
    assert all((audit.rows_deleted, audit.rows_recovered) == (0, 0) for audit in again)
    for name in bucketed:  # raw holds what the source has, but for what quarantine holds: no bucket to compare
        assert _reconciled_keys(caplog.messages, name) == (f"the keys of 0 of {KEY_BUCKETS} buckets whose digests differ", 0), (name, held.get(name))


def test_the_key_states_digests_move_with_each_day_and_equal_its_keys_summed_again(warehouse_url, tmp_path, caplog):
    settings = _settings(tmp_path / "sources")
    days = [START + dt.timedelta(days=offset) for offset in range(5)]

    def load_deleting_an_order_on_the_middle_days(day: dt.date) -> None:
        if day in days[2:4]:
            _delete_order(settings.source_dir, day)
        _load(warehouse_url, day, settings, systems=("sales",))

    _simulate_days(settings.source_dir, days[:4], 300, 0.0, load_deleting_an_order_on_the_middle_days)
    bucketed = [entity for entity in SQL_ENTITIES if is_bucketed(entity)]

    def kept_and_summed(entity) -> tuple[set, set]:
        from extract_load.key_state import digest_columns_sql

        suffix = f"{entity.system.name}__{entity.name}"
        with connect(warehouse_url) as warehouse:
            kept = warehouse.fetchall(f"select bucket, keys, hash_sum, square_sum from raw_meta.key_digests__{suffix}")
            summed = warehouse.fetchall(f"select {digest_columns_sql('_hash')} from raw_meta.key_state__{suffix} group by 1")
        return {tuple(map(int, row)) for row in kept}, {tuple(map(int, row)) for row in summed}

    for entity in bucketed:
        kept, summed = kept_and_summed(entity)
        assert kept == summed and len(kept) > 10, entity.name

    # A key state an earlier version kept has no digests: they are summed once, and the day compares as before.
    with connect(warehouse_url) as warehouse:
        for entity in bucketed:
            warehouse.execute(f"delete from raw_meta.key_digests__{entity.system.name}__{entity.name}")
    append_day(settings.source_dir, days[4])
    caplog.clear()
    with caplog.at_level("INFO", logger="extract_load.load"):
        audits = _load(warehouse_url, days[4], settings, systems=("sales",))
    for entity in bucketed:
        assert (audits[f"sales.{entity.name}:reconcile"].rows_deleted, audits[f"sales.{entity.name}:reconcile"].rows_recovered) == (0, 0)
        assert _reconciled_keys(caplog.messages, entity.name) == (f"the keys of 0 of {KEY_BUCKETS} buckets whose digests differ", 0)
        kept, summed = kept_and_summed(entity)
        assert kept == summed, entity.name


def test_key_bucket_digests_are_the_same_from_sqlite_postgresql_and_the_warehouse(warehouse_url, postgres_url, tmp_path):
    import psycopg

    from extract_load.key_state import digest_columns_sql, key_hash_sql, source_digests
    from extract_load.sql_source import SqlSource

    lines = CONTRACT.entities["order_lines"]
    keys = [(1, 1), (2, 7), (-5, 3), (2**40 + 3, 2), (2**63 - 1, 1), (123456, 4)]
    irregular = [("12abc", "1"), ("7", "1.5"), (str(2**63), "1")]  # no exact integer: read key by key, not digested
    with sqlite3.connect(tmp_path / "sales.sqlite") as db:
        db.execute("create table order_lines (order_id integer, line_number integer)")
        db.executemany("insert into order_lines values (?, ?)", [*keys, *irregular])
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("create table order_lines (order_id text, line_number text)")
        for row in [*keys, *irregular]:
            db.execute("insert into order_lines values (%s, %s)", tuple(map(str, row)))
    with connect(warehouse_url) as warehouse:
        warehouse.execute("create table raw_keys (order_id bigint, line_number bigint)")  # beside the PostgreSQL source's
        for row in keys:
            warehouse.execute("insert into raw_keys values (?, ?)", row)
        hashed = key_hash_sql(["cast(order_id as bigint)", "cast(line_number as bigint)"])
        in_warehouse = {row[0]: tuple(map(int, row[1:])) for row in warehouse.fetchall(f"select {digest_columns_sql(hashed)} from raw_keys group by 1")}
    for url in (f"sqlite:///{tmp_path / 'sales.sqlite'}", postgres_url):
        with SqlSource(url) as source:
            assert source_digests(source, lines, "1 = 1", []) == in_warehouse, url


def test_a_date_without_a_delivery_within_the_freshness_window_is_named_for_the_run_summary(warehouse_url, simulated):
    from extract_load.load import stale_deliveries

    _load(warehouse_url, DAYS[-1], _settings(simulated))
    later, earlier = DAYS[-1] + dt.timedelta(days=3), START - dt.timedelta(days=1)
    with connect(warehouse_url) as warehouse:
        stale = stale_deliveries(warehouse, [DAYS[-1], later, earlier])
    on_time, three_days_on, before_any = stale[DAYS[-1]], stale[later], stale[earlier]
    assert on_time == []  # a backfill of a delivered date is not stale
    assert f"raw_crm.customers: no delivery within 26 hours of {DAYS[-1] + dt.timedelta(days=3)} (the latest is dated {DAYS[-1]})" in three_days_on
    assert any(line.startswith("raw_service.tickets: ") for line in three_days_on)
    assert f"raw_crm.customers: no delivery within 26 hours of {START - dt.timedelta(days=1)} (none has arrived yet)" in before_any
