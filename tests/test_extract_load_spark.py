"""The extract-load on a Spark warehouse, past a first load (which crm_daily's run on Spark compares
with DuckDB's, tests/test_spark_end_to_end.py): on dirty sources, every source system extracted and
reconciled for one date, then an erasure request for a customer whose record the next date's
delivery holds again, then that date's increment leave the raw tables, quarantine, load log and load
audit DuckDB's steps leave (the person erased everywhere and again as the delivery loads). A rerun of
a date goes through the same delete_rows as on DuckDB (tests/test_extract_load.py), which the
adapter's tests check on Spark."""

from __future__ import annotations

import csv
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from crmw.scratch import load_raw
from tests.spark_support import module_spark_session, spark_missing, table_differences, table_rows
from warehouse.adapter import Warehouse, connect
from warehouse.erasure import ERASURE_REQUESTS, IDENTITY, ensure_audit_tables, forget_requested

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.spark, pytest.mark.skipif(spark_missing() is not None, reason=spark_missing() or "")]

# Small on purpose: Spark's cost is per statement (each ~0.1-1 s), not per row.
CUSTOMERS = 100
START = dt.date(2025, 1, 1)
DAYS = 30
FIRST_DATE = START + dt.timedelta(days=DAYS - 2)
NEXT_DATE = FIRST_DATE + dt.timedelta(days=1)
COMPARED_SCHEMAS = ("raw_sales", "raw_crm", "raw_service", "raw_meta", "audit")
# Columns that differ from run to run: when a row was written, by which run, how long a load took,
# and the key state's fingerprint of the load audit (its latest `_loaded_at`).
RUN_SPECIFIC = {"_loaded_at", "_run_id", "seconds", "erased_at", "requested_at", "audit_fingerprint"}
ERASED_CUSTOMER = "customer-erased-in-test"


@dataclass
class Warehouses:
    duckdb_url: str
    spark_url: str
    sources: Path
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouses]:
    """Small simulated sources, a DuckDB warehouse and a Spark one (this module's session) in a new folder."""
    from simulator import SimulationSettings, simulate

    folder = tmp_path_factory.mktemp("extract-load-spark")
    sources = folder / "sources"
    simulate(SimulationSettings(customers=CUSTOMERS, start=START, days=DAYS, seed=23, out=sources, dirty_rate=0.05))
    spark_folder = folder / "spark"
    started = time.monotonic()
    with module_spark_session(spark_folder, "crmw-test-extract-load-spark", "the extract-load on Spark"):
        seconds = {"spark session start": time.monotonic() - started}
        yield Warehouses(f"duckdb:///{folder / 'warehouse.duckdb'}", f"spark://{spark_folder}", sources, seconds)
        log.info("extract-load on Spark, seconds: %s", {step: round(value, 1) for step, value in seconds.items()})


def _timed(warehouses: Warehouses, step: str, url: str, day: dt.date) -> None:
    started = time.monotonic()
    load_raw(url, warehouses.sources, day)
    warehouses.seconds[step] = time.monotonic() - started


def _request_erasure(warehouse: Warehouse, crm_id: str) -> None:
    """An identity table naming `crm_id` as the one record of ERASED_CUSTOMER (what dbt's identity
    resolution would say), and a request waiting to erase that customer."""
    warehouse.ensure_table(IDENTITY, {"customer_id": "string", "source_table": "string", "source_key": "string"})
    warehouse.execute(f"insert into {IDENTITY} (customer_id, source_table, source_key) values (?, 'customers', ?)",
                      (ERASED_CUSTOMER, crm_id))
    ensure_audit_tables(warehouse)
    warehouse.execute(f"insert into {ERASURE_REQUESTS} (customer_id, requested_at, requested_by) values (?, ?, 'test')",
                      (ERASED_CUSTOMER, dt.datetime(2025, 2, 1, 9, 30)))


def _redelivered_crm_id(warehouses: Warehouses) -> str:
    """A CRM record raw holds by the first date that the next date's CRM export delivers again."""
    with (warehouses.sources / "crm" / NEXT_DATE.isoformat() / "customers.csv").open(newline="", encoding="utf-8") as handle:
        delivered = {row["crm_id"] for row in csv.DictReader(handle)}
    with connect(warehouses.duckdb_url) as warehouse:
        held = {crm_id for (crm_id,) in warehouse.fetchall("select distinct crm_id from raw_crm.customers where email is not null")}
    both = sorted(delivered & held)
    assert both, f"no CRM record of {FIRST_DATE} or before is delivered again on {NEXT_DATE}: simulate more customers"
    return both[0]


def test_extract_and_reconcile_of_every_system_on_spark_give_duckdbs_rows_erasure_and_increment_included(warehouses: Warehouses):
    _timed(warehouses, f"duckdb extract {FIRST_DATE}", warehouses.duckdb_url, FIRST_DATE)
    _timed(warehouses, f"spark extract {FIRST_DATE}", warehouses.spark_url, FIRST_DATE)
    # The first load's rows are compared with the increment's below, in the same tables: a read of
    # every table on Spark takes a minute.

    # The DAG's first task with no request waiting, then with one for a customer delivered again.
    assert forget_requested(warehouse_url=warehouses.spark_url) == []
    crm_id = _redelivered_crm_id(warehouses)
    for url in (warehouses.duckdb_url, warehouses.spark_url):
        with connect(url) as warehouse:
            _request_erasure(warehouse, crm_id)
        started = time.monotonic()
        (erasure,) = forget_requested(warehouse_url=url)
        warehouses.seconds[f"{url.partition(':')[0]} erasure"] = time.monotonic() - started
        assert erasure.rows.get("raw_crm.customers"), f"{url}: {erasure.summary()}"

    _timed(warehouses, f"duckdb extract {NEXT_DATE}", warehouses.duckdb_url, NEXT_DATE)
    _timed(warehouses, f"spark extract {NEXT_DATE}", warehouses.spark_url, NEXT_DATE)
    with connect(warehouses.spark_url) as spark:
        erased_on_load = spark.fetchall("select sum(rows_erased) from raw_meta.load_audit where _batch_date = ?", (NEXT_DATE,))
    assert erased_on_load[0][0], f"the CRM record {crm_id} delivered again on {NEXT_DATE} was not erased as it loaded"
    expected = table_rows(warehouses.duckdb_url, COMPARED_SCHEMAS, RUN_SPECIFIC)
    assert expected["raw_meta.quarantine"], "the dirty sources quarantined nothing: the comparison misses quarantine"
    differences = table_differences(expected, table_rows(warehouses.spark_url, COMPARED_SCHEMAS, RUN_SPECIFIC), ("DuckDB", "Spark"))
    assert not differences, "\n".join(differences)
