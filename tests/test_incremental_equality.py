"""Issue 16's acceptance: daily runs over consecutive days leave every table dbt builds (marts,
features, intermediate, activation) and the last as-of date's ML rows identical to a full refresh
on the last day, through late rows, deletes, an identity merge, a payment delivered days before its
order, a month's end and a training snapshot whose labels came in."""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from crmw.scratch import load_raw
from tests.conftest import PROJECT_ROOT, dbt_in_process
from tests.test_dbt_marts import (
    INCREMENTAL_START, _add_late_order_and_delete_the_first, _delete_a_line_alone, _insert_order,
    _link_early_customers, grown_day_by_day,
)
from warehouse.adapter import connect

# Three labelled monthly snapshots by the last day (March 31st's churn window ends on June 29th)
# feed the churn model; June 30th is a month's end. The simulation starts on INCREMENTAL_START,
# where the identity merge looks for its early customers.
LAST_DAY = dt.date(2025, 6, 30)
DAYS = 6
DAY_OF_ORPHAN_PAYMENT = LAST_DAY - dt.timedelta(days=4)
DAY_OF_LATE_ORDER_AND_DELETE = LAST_DAY - dt.timedelta(days=1)
LATE_ORDER_AGE_DAYS = 12
HELD_BACK_ORDER_ID = 990_000_200
HELD_BACK_PAYMENT_ID = f"P{HELD_BACK_ORDER_ID}"
# An order delivered on DAY_OF_ORPHAN_PAYMENT but dated the day before the last (a date typed
# ahead), of a customer the other changes leave alone: it counts in customer_360 from that day
# on, when nothing of it is delivered.
ORDER_DATED_AHEAD_ID = 990_000_300
ORDER_DATED_AHEAD_DATE = LAST_DAY - dt.timedelta(days=1)
BUILT_SCHEMAS = ("staging", "marts", "features", "intermediate", "activation")
# What a run records about itself rather than computes from the data: when dbt wrote a row and for
# which as-of date, the key a record had in the build before (a full refresh is one more build),
# and the ML run's id, clock and memory. A fitted model's pickle is left out: its training data's fingerprint and its
# metrics stand for it, and a diff of base64 text reads as noise.
RUN_RECORD_COLUMNS = {
    "_built_at", "_built_as_of", "key_changed_at", "previous_customer_id", "run_id", "seconds", "phase_seconds",
    "peak_memory_mb", "finished_at", "trained_at", "artifact",
}
# The incremental models' lists of what changed since they last ran: about a run, not data.
RUN_RECORD_TABLES = {"features.changed_customers", "features.changed_baskets"}


def _day(offset: int) -> dt.date:
    return LAST_DAY - dt.timedelta(days=DAYS - 1 - offset)


@pytest.fixture(scope="module")
def daily_sources(tmp_path_factory) -> list[Path]:
    """500 customers from INCREMENTAL_START, grown one day at a time over the last DAYS days, each
    day's state copied. On DAY_OF_ORPHAN_PAYMENT a payment arrives whose order reaches the source
    only on the last day (placed the day it was paid); on DAY_OF_LATE_ORDER_AND_DELETE an order
    placed LATE_ORDER_AGE_DAYS earlier arrives and the first order is deleted; on the last day a
    line is deleted on its own and orders link early customers into one."""
    from simulator import SimulationSettings, simulate

    growing = tmp_path_factory.mktemp("equality-sources") / "growing"
    sales_db = growing / "sales.sqlite"
    days_before = (_day(0) - INCREMENTAL_START).days + 1
    simulate(SimulationSettings(customers=500, start=INCREMENTAL_START, days=days_before, seed=5, out=growing))

    def change(day: dt.date) -> None:
        if day == DAY_OF_ORPHAN_PAYMENT:
            _pay_for_an_order_the_source_holds_back(sales_db, day)
            _insert_order_of_one_line(sales_db, ORDER_DATED_AHEAD_ID, f"{ORDER_DATED_AHEAD_DATE} 09:00:00", f"{day} 12:00:00", 50)
        if day == DAY_OF_LATE_ORDER_AND_DELETE:
            _add_late_order_and_delete_the_first(sales_db, day - dt.timedelta(days=LATE_ORDER_AGE_DAYS))
        if day == LAST_DAY:
            _deliver_the_held_back_order(sales_db, day)
            _delete_a_line_alone(sales_db, day)
            _link_early_customers(growing, day)

    return grown_day_by_day(growing, [_day(offset) for offset in range(DAYS)], change)


def _pay_for_an_order_the_source_holds_back(sales_db: Path, day: dt.date) -> None:
    with sqlite3.connect(sales_db) as db:
        db.execute("insert into payments values (?, ?, 'card', 21.0, ?)", (HELD_BACK_PAYMENT_ID, HELD_BACK_ORDER_ID, f"{day} 12:00:00"))


def _deliver_the_held_back_order(sales_db: Path, day: dt.date) -> None:
    """The paid order, placed on DAY_OF_ORPHAN_PAYMENT by the second order's customer, changed (so
    delivered) only on `day`: more days after its payment than any reprocessing window here."""
    _insert_order_of_one_line(sales_db, HELD_BACK_ORDER_ID, f"{DAY_OF_ORPHAN_PAYMENT} 11:00:00", f"{day} 12:00:00", 1)


def _insert_order_of_one_line(sales_db: Path, order_id: int, placed: str, changed: str, customer_of_order: int) -> None:
    """An order of one line by the customer of the order at position `customer_of_order` (0 is
    the first) in order id order."""
    with sqlite3.connect(sales_db) as db:
        email, crm_id = db.execute("select customer_email, crm_id from orders order by order_id limit 1 offset ?",
                                   (customer_of_order,)).fetchone()
        _insert_order(db, order_id, email, crm_id, placed, changed_at=changed)
        db.execute("insert into order_lines values (?, 1, 'SKU-01001', 2, 10.5, 0.0, ?)", (order_id, changed))


def _comparable(value):
    """NaN as text: a float NaN never equals another, so two equal tables holding one would differ."""
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def _rows(warehouse, table: str, where: str = "") -> list[tuple]:
    """The table's rows without RUN_RECORD_COLUMNS, ordered by every column."""
    columns = [column for column in warehouse.table_columns(table) if column not in RUN_RECORD_COLUMNS]
    selected = ", ".join(f'"{column}"' for column in columns)
    order = ", ".join(str(position) for position in range(1, len(columns) + 1))
    rows = warehouse.fetchall(f"select {selected} from {table} {where} order by {order}")
    return [tuple(map(_comparable, row)) for row in rows]


def _built_tables(url: str) -> dict[str, list[tuple]]:
    """Every table dbt builds in BUILT_SCHEMAS (the activation list there is the models' output)."""
    from ml_tasks import registry

    model_outputs = {table.name for table in registry.output_tables()}
    with connect(url) as warehouse:
        names = warehouse.fetchall(
            "select table_schema || '.' || table_name from information_schema.tables where table_type = 'BASE TABLE'"
            f" and table_schema in ({', '.join(repr(schema) for schema in BUILT_SCHEMAS)}) order by 1")
        return {name: _rows(warehouse, name) for (name,) in names if name not in model_outputs | RUN_RECORD_TABLES}


def _incremental_tables() -> dict[str, list[str]]:
    """schema.table of each incremental model, with its unique key's columns."""
    manifest = json.loads((PROJECT_ROOT / "dbt_project" / "target" / "manifest.json").read_text())
    return {f"{node['schema']}.{node['alias']}": [node["config"]["unique_key"]] if isinstance(node["config"]["unique_key"], str)
            else list(node["config"]["unique_key"] or [])
            for node in manifest["nodes"].values()
            if node["resource_type"] == "model" and node["config"]["materialized"] == "incremental"}


def _run_the_models(url: str, run_id: str) -> dict[str, list[tuple]]:
    """Every registered model for LAST_DAY on a warehouse without ML history, as a new install's
    first run (a rerun would reuse the first run's fits and record that it did); their published
    rows and runs of that date. A model below its quality floor on this small simulation is
    recorded as such, and compared like any other outcome."""
    from ml_tasks import registry, tasks, warehouse_io
    from ml_tasks.contract import QualityBelowFloor

    with connect(url) as warehouse:
        warehouse.execute("drop schema if exists ml cascade")
    for spec in registry.MODELS:
        try:
            tasks.run_model(spec, LAST_DAY, run_id, warehouse_url=url)
        except QualityBelowFloor:
            pass
    tables = [table.name for table in registry.output_tables()] + [warehouse_io.MODEL_RUNS.name, warehouse_io.TRAINED_MODELS.name]
    with connect(url) as warehouse:
        return {table: _rows(warehouse, table, f"where as_of_date = cast('{LAST_DAY}' as date)") for table in tables}


def _differences(incremental: dict[str, list[tuple]], full_refresh: dict[str, list[tuple]], shown: int = 3) -> list[str]:
    """Per differing table, its first `shown` rows only the daily runs hold and only the full refresh holds."""
    found = []
    for table in sorted(incremental.keys() | full_refresh.keys()):
        if table not in incremental or table not in full_refresh:
            found.append(f"{table}: built only by the {'daily runs' if table in incremental else 'full refresh'}")
            continue
        daily, whole = Counter(incremental[table]), Counter(full_refresh[table])
        if daily != whole:
            only_daily, only_whole = sorted(daily - whole, key=repr)[:shown], sorted(whole - daily, key=repr)[:shown]
            found.append(f"{table}: {sum((daily - whole).values())} rows only after the daily runs, e.g. {only_daily};"
                         f" {sum((whole - daily).values())} only after the full refresh, e.g. {only_whole}")
    return found


def _assert_one_index_each_on_built_at_and_key(url: str) -> None:
    """On PostgreSQL, each incremental model's table has one index on _built_at, and one on
    as_of_date for those keyed by feature date or else on its unique key unless that is the
    customer (macros/index_written_rows.sql)."""
    if not url.startswith("postgresql"):
        return
    with connect(url) as warehouse:
        indexed = warehouse.fetchall(
            "select schemaname || '.' || tablename, substring(indexdef from '\\(([a-z_, ]+)\\)$'), count(*) from pg_indexes"
            " where schemaname in ('staging', 'intermediate', 'marts', 'features') group by 1, 2")
    tables = _incremental_tables()
    expected = {(table, column): 1 for table, key in tables.items()
                for column in ["_built_at", "as_of_date" if "as_of_date" in key else ", ".join(key)] if column != "customer_id"}
    assert {(table, column): count for table, column, count in indexed if table in tables} == expected
    assert sum(column == "as_of_date" for _, column in expected) == 3  # the feature snapshots, purchase summary, training set


@pytest.mark.parametrize("engine, days", [("duckdb", DAYS), pytest.param("postgres", 3, marks=pytest.mark.postgres)])
def test_daily_runs_leave_every_table_and_the_last_days_ml_rows_equal_to_a_full_refresh(
        engine, days, daily_sources, request, tmp_path, monkeypatch):
    # "Days" are as-of dates built: a first build of the sources as they stood on the first, then
    # one daily run per later day. Models and seeds without their tests (a test changes no table);
    # no reprocessing window, so whatever lands comes from the delivery dates. Features depend on
    # the as-of date, which the DAG passes in the environment (so that the days share one parse).
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}" if engine == "duckdb" else request.getfixturevalue("postgres_url")
    training_snapshots = []
    for offset in range(DAYS - days, DAYS):
        load_raw(url, daily_sources[offset], _day(offset))
        monkeypatch.setenv("CRMW_AS_OF_DATE", _day(offset).isoformat())
        dbt_in_process(url, "build", "--resource-type", "model", "--resource-type", "seed", "--vars", "{reprocessing_window_days: 0}",
                       tmp_path=tmp_path)
        with connect(url) as warehouse:
            training_snapshots.append(warehouse.fetchall("select distinct as_of_date from features.training_set order by 1"))
    assert training_snapshots[0] != training_snapshots[-1], "no training snapshot's labels came in over the days run"
    with connect(url) as warehouse:
        assert warehouse.fetchall(f"select is_valid from marts.fct_payments where payment_id = '{HELD_BACK_PAYMENT_ID}'") == [(True,)]
    # Every incremental model stamps what a run wrote: a day's tests read those rows (macros/test_scope.sql).
    with connect(url) as warehouse:
        unstamped = [table for table in _incremental_tables() if "_built_at" not in warehouse.table_columns(table)]
    assert not unstamped, f"incremental models without _built_at: {unstamped}"
    _assert_one_index_each_on_built_at_and_key(url)
    # Identity's last daily run redid the customers the day could reach and left the rest alone, so
    # the comparison below covers its incremental path.
    with connect(url) as warehouse:
        [(redone, left_alone)] = warehouse.fetchall(
            "select sum(case when _built_at = latest then 1 else 0 end), sum(case when _built_at < latest then 1 else 0 end)"
            " from intermediate.int_customer_identity cross join"
            " (select max(_built_at) as latest from intermediate.int_customer_identity) as last_run")
    assert 0 < redone < left_alone, (redone, left_alone)
    incremental, incremental_ml = _built_tables(url), _run_the_models(url, "daily")
    # The full refresh writes the feature models' customers in batches (macros/incremental_features.sql).
    with connect(url) as warehouse:
        [(customers,)] = warehouse.fetchall("select count(distinct customer_id) from intermediate.int_customer_identity")
    monkeypatch.setenv("CRMW_AS_OF_DATE", LAST_DAY.isoformat())
    batched = ["--vars", f"{{reprocessing_window_days: 0, feature_customers_per_statement: {customers // 5 + 1}}}"]
    dbt_in_process(url, "run", "--full-refresh", *batched, tmp_path=tmp_path)
    _assert_one_index_each_on_built_at_and_key(url)  # the full refresh swapped in new tables
    full_refresh, full_refresh_ml = _built_tables(url), _run_the_models(url, "full-refresh")
    assert not _differences(incremental, full_refresh), "\n".join(_differences(incremental, full_refresh))
    assert not _differences(incremental_ml, full_refresh_ml), "\n".join(_differences(incremental_ml, full_refresh_ml))

    # A rerun of an earlier date takes back the baskets later days added and restores those they
    # changed, and customer_360 stops counting the orders placed after it (the order dated ahead
    # among them, with nothing delivered since): both, built incrementally from the last day's,
    # equal their full builds then.
    monkeypatch.setenv("CRMW_AS_OF_DATE", (LAST_DAY - dt.timedelta(days=3)).isoformat())
    earlier = ["--vars", "{reprocessing_window_days: 0}"]
    rerun_tables = {"basket_items": "features.basket_items", "customer_360": "marts.customer_360"}
    dbt_in_process(url, "run", "--select", "changed_baskets", "changed_customers", *rerun_tables, *earlier,
                   tmp_path=tmp_path)
    with connect(url) as warehouse:
        rerun = {table: _rows(warehouse, table) for table in rerun_tables.values()}
    dbt_in_process(url, "run", "--full-refresh", "--select", *rerun_tables, *earlier, tmp_path=tmp_path)
    with connect(url) as warehouse:
        rebuilt = {table: _rows(warehouse, table) for table in rerun_tables.values()}
    for table in rerun_tables.values():
        assert rerun[table] != full_refresh[table], f"the earlier date should show {table} as it stood before"
    assert not _differences(rerun, rebuilt), "\n".join(_differences(rerun, rebuilt))
