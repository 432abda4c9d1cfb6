"""crm_daily runs through `crmw run` that fail, and what they leave: a bad source file ends the run
with one line naming it, a date range stops at the date whose dbt tests fail (ML and publish never
run on that build), a stale source fails the freshness check, and a bad model param fails the run
before anything is written. Early dates of a short simulation: a run costs about the same whatever
the data, and these check what stops, not what the models make of it."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from crmw.airflow_runner import airflow_environment
from extract_load.contract import load_contract
from extract_load.load import ExtractSettings, extract_system
from ml_tasks import registry
from tests.airflow_runs import crmw, simulate_clean_sources
from warehouse import connect

pytestmark = pytest.mark.airflow

START, DAYS = dt.date(2025, 1, 1), 12


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_clean_sources(tmp_path_factory.mktemp("sources"), START, DAYS)


def test_a_failed_run_exits_with_one_line_naming_the_cause(sources: Path, airflow_home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "sources"
    shutil.copytree(sources, broken)
    drop = broken / "crm" / START.isoformat() / "customers.csv"
    header, *rows = drop.read_text().splitlines()
    drop.write_text("\n".join([header.replace("signup_date", "signed_up"), *rows]) + "\n")
    result = crmw(f"duckdb:///{tmp_path / 'warehouse.duckdb'}", broken, airflow_home, "run", "--date", START.isoformat())
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [message] = result.stderr.strip().splitlines()
    assert "customers.csv" in message and "'signup_date'" in message and "failed" in message


def _task_states(airflow_home: Path, logical_date: dt.date) -> dict[str, str | None]:
    """Each task's state in the DAG run of `logical_date`, read from Airflow's metadata DB."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute(
            "select ti.task_id, ti.state from task_instance ti join dag_run dr"
            " on dr.dag_id = ti.dag_id and dr.run_id = ti.run_id"
            " where dr.dag_id = 'crm_daily' and dr.logical_date like ?",
            (f"{logical_date.isoformat()}%",),
        ).fetchall()
    return dict(rows)


def test_a_date_range_runs_its_dates_in_order_and_a_failing_dbt_test_stops_the_ml_publish_and_the_range(
        sources: Path, airflow_home: Path, tmp_path: Path) -> None:
    # Early dates: a full DAG run costs the same on less data. The second date delivers an order in a
    # status the shop does not have: extract loads it (any text is a status), staging's
    # accepted-values test fails, and the range ends there, its third date never started.
    first = START + dt.timedelta(days=4)
    second, third = first + dt.timedelta(days=1), first + dt.timedelta(days=2)
    broken = tmp_path / "sources"
    shutil.copytree(sources, broken)
    with sqlite3.connect(broken / "sales.sqlite") as db:
        email, crm_id = db.execute("select customer_email, crm_id from orders order by order_id limit 1").fetchone()
        db.execute("insert into orders values (990000400, ?, ?, 'web', null, 'lost', ?, ?)",
                   (email, crm_id, f"{second} 12:00:00", f"{second} 12:00:00"))
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    result = crmw(url, broken, airflow_home, "run", "--from", first.isoformat(), "--to", third.isoformat(), "--full-refresh")
    assert result.returncode != 0 and f"crm_daily for {second}" in result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    started = [line for line in result.stdout.splitlines() if line.startswith("crmw: running")]
    assert [line.split()[4] for line in started] == [first.isoformat(), second.isoformat()]
    # The first date ran to its end; the second stopped after dbt.
    assert _task_states(airflow_home, first)["publish"] == "success"
    states = _task_states(airflow_home, second)
    assert states["extract_sales.orders"] == "success"
    assert states["dbt.dbt_producer_watcher"] == "failed"
    assert states["dbt.customer_rfm.run"] == "upstream_failed"
    for spec in registry.MODELS:
        assert states[f"ml.{spec.name}"] == "upstream_failed", spec.name
    assert states["publish"] == "upstream_failed"
    with connect(url) as warehouse:
        # Five days of history are too little to fit the models: each records so for the first date
        # and publishes its tables empty, with their columns.
        assert warehouse.fetchall("select model_name, cast(as_of_date as varchar), status from ml.model_runs order by 1") == [
            (spec.name, first.isoformat(), "insufficient_data") for spec in sorted(registry.MODELS, key=lambda spec: spec.name)
        ]
        for table in registry.output_tables():
            assert warehouse.fetchall(f"select {', '.join(table.all_columns)} from {table.name}") == [], table.name
        assert warehouse.fetchall("select count(*) from published.publish_log") == [(1,)]
        # The full refresh (a DAG param) applies to the first date; the second loads its increment,
        # so raw holds each order delivered by then once.
        assert warehouse.fetchall(
            "select distinct cast(_batch_date as varchar), full_refresh from raw_meta.load_audit where step = 'extract'"
            " order by 1"
        ) == [(first.isoformat(), True), (second.isoformat(), False)]
        [(orders, distinct_orders)] = warehouse.fetchall("select count(*), count(distinct order_id) from raw_sales.orders")
    with sqlite3.connect(broken / "sales.sqlite") as db:
        (delivered,) = db.execute("select count(*) from orders where updated_at < ?", (third.isoformat(),)).fetchone()
    assert orders == distinct_orders == delivered


def test_source_freshness_task_fails_naming_a_source_loaded_days_ago(sources: Path, airflow_home: Path, tmp_path: Path) -> None:
    # Freshness reads raw alone: a warehouse with every source extracted once, the orders loaded
    # five days ago by their load times.
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    settings = ExtractSettings(source_dir=sources, sales_db_url=f"sqlite:///{sources / 'sales.sqlite'}")
    for system in load_contract().systems:
        extract_system(system, START, "freshness", settings=settings, warehouse_url=url)
    with connect(url) as warehouse:
        warehouse.execute("update raw_sales.orders set _loaded_at = _loaded_at - interval 5 days")
    env = airflow_environment(
        {**os.environ, "WAREHOUSE_URL": url, "CRMW_SOURCE_DIR": str(sources), "AIRFLOW_HOME": str(airflow_home)}
    )
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    # `airflow tasks test` runs the one task (for today, so its gate would let it run) and exits 0
    # whatever the task's outcome: the outcome is read from its output.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "tasks", "test", "crm_daily", "source_freshness", today],
        env=env,
        capture_output=True,
        text=True,
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert re.search(r"ERROR STALE freshness of raw_sales\.orders", output), output[-3000:]
    assert re.search(r"PASS freshness of raw_sales\.order_lines", output)
    assert "dbt invocation completed with errors" in output


def test_a_bad_model_param_fails_the_run_before_anything_is_written(sources: Path, airflow_home: Path, tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    run_date = START + dt.timedelta(days=10)  # a date no other test runs
    result = crmw(url, sources, airflow_home, "run", "--date", run_date.isoformat(), "--param", "association_rules__top_k_offers=0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [message] = result.stderr.strip().splitlines()
    assert "param association_rules__top_k_offers: got 0, expected between 1 and 100" in message, message
    states = _task_states(airflow_home, run_date)
    assert states["check_model_params"] == "failed"
    assert states["extract_sales.orders"] == "upstream_failed"
    with connect(url) as warehouse:
        assert warehouse.fetchall("select count(*) from information_schema.tables where table_schema like 'raw%'") == [(0,)]
