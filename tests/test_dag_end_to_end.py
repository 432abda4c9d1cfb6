"""crm_daily run through Airflow on each engine: outputs match counts and sums computed straight
from the source files, both engines give the same outputs, a rerun of the day changes nothing,
and a source row that fails a dbt test stops the ML and publish steps."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from ml_tasks import registry
from simulator import SimulationSettings, simulate
from crmw.scratch import new_postgres_database
from warehouse import connect

pytestmark = pytest.mark.airflow

# Six months: enough baskets and buyers for every model to publish, and three monthly training
# snapshots whose 90-day churn labels are complete by the run date for the trained models.
START, DAYS = dt.date(2025, 1, 1), 181
RUN_DATE = START + dt.timedelta(days=DAYS - 1)
_runs: dict[str, str] = {}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sources") / "sources"
    simulate(SimulationSettings(customers=400, start=START, days=DAYS, seed=11, out=out, dirty_rate=0.0))
    return out


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("airflow_home")


def export_dir(warehouse_url: str, sources: Path) -> Path:
    """Each engine's files for other tools in a folder of its own."""
    return sources.parent / f"exports_{warehouse_url.split(':')[0]}"


def crmw(warehouse_url: str, sources: Path, airflow_home: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the crmw CLI on a warehouse and sources with the tests' Airflow home, without retries."""
    env = {
        **os.environ,
        "WAREHOUSE_URL": warehouse_url,
        "CRMW_SOURCE_DIR": str(sources),
        "AIRFLOW_HOME": str(airflow_home),
        "CRMW_TASK_RETRIES": "0",
        "CRMW_EXPORT_DIR": str(export_dir(warehouse_url, sources)),
    }
    return subprocess.run([str(Path(sys.executable).parent / "crmw"), *args], env=env, capture_output=True, text=True)


# Six months of 400 customers hold 218 rated tickets and 64 comments: the service models' minimums
# (250 and 200, for the figures to mean something) are lowered through DAG params so that this run
# publishes them too.
MODEL_PARAMS = ("satisfaction_drivers__min_rated_tickets=100", "comment_topics__minimum_comments=50")
# Too few campaign controls here to validate an uplift model (89 in the training campaigns; the
# demo's two years of 4,000 customers hold thousands): it reports insufficient data, as a new install would.
INSUFFICIENT_HERE = {"campaign_uplift"}


def crmw_run(warehouse_url: str, sources: Path, airflow_home: Path, logical_date: dt.date) -> float:
    started = time.perf_counter()
    params = [argument for param in MODEL_PARAMS for argument in ("--param", param)]
    result = crmw(warehouse_url, sources, airflow_home, "run", "--date", logical_date.isoformat(), *params)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ml.customer_segments" in result.stdout
    # A past date: the freshness check is skipped, and Airflow logs nothing for it; crmw says so.
    assert " skipped source_freshness" in result.stdout
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def dag_run(request: pytest.FixtureRequest, sources: Path, airflow_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """Run the DAG once per engine and hand back the warehouse URL."""

    def run(engine: str) -> str:
        if engine not in _runs:
            if engine == "duckdb":
                url = f"duckdb:///{tmp_path_factory.mktemp('duckdb') / 'warehouse.duckdb'}"
            else:
                url = new_postgres_database(request.getfixturevalue("postgres_server_url"), "crmw_dag_run")
            seconds = crmw_run(url, sources, airflow_home, RUN_DATE)
            print(f"\ncrm_daily on {engine}: {seconds:.1f} s (crmw run, incl. Airflow start-up)")
            _runs[engine] = url
        return _runs[engine]

    return run


def expected_from_sources(sources: Path) -> dict:
    """Counts and sums computed from the source files alone, without the pipeline."""
    with sqlite3.connect(sources / "sales.sqlite") as db:
        orders = db.execute("select count(*) from orders").fetchone()[0]
        revenue = db.execute(
            "select o.order_id, sum(l.quantity * l.unit_price - l.discount)"
            " from orders o join order_lines l on l.order_id = o.order_id"
            " where o.status not in ('cancelled', 'returned') and o.created_at < ?"
            " group by 1",
            ((RUN_DATE + dt.timedelta(days=1)).isoformat(),),
        ).fetchall()
    crm_ids = set()
    for path in (sources / "crm").glob("*/customers.csv"):
        with path.open(newline="") as handle:
            crm_ids.update(row["crm_id"] for row in csv.DictReader(handle))
    ticket_ids = {
        json.loads(line)["ticket_id"]
        for path in (sources / "service").glob("*/tickets.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    }
    return {
        "orders": orders,
        "customers": len(crm_ids),
        "tickets": len(ticket_ids),
        "revenue_by_order": dict(revenue),
    }


def _model_outputs(warehouse) -> dict[str, list[tuple]]:
    """Every registered model's rows, without run ids, sorted; floats rounded (the engines sum in
    different orders)."""
    tables = {}
    for table in registry.output_tables():
        columns = [column for column in table.all_columns if column != "run_id"]
        rows = warehouse.fetchall(f"select {', '.join(columns)} from {table.name}")
        tables[table.name] = sorted(
            (tuple(round(float(value), 6) if isinstance(value, (float, Decimal)) else value for value in row) for row in rows),
            key=repr,
        )
    return tables


def outputs(url: str) -> dict:
    with connect(url) as warehouse:
        segments = warehouse.fetchall(
            "select customer_id, frequency, monetary, rfm_segment, cluster_id, cast(as_of_date as varchar), model_version"
            " from ml.customer_segments order by customer_id"
        )
        return {
            "counts": dict(warehouse.row_counts(["raw_sales", "raw_crm", "raw_service", "staging", "marts", "published", "features", "ml", "activation"])),
            "orders": warehouse.fetchall("select order_id, round(net_amount, 2), order_status from marts.fct_orders order by order_id"),
            "segments": [(row[0], row[1], round(float(row[2]), 2), *row[3:]) for row in segments],
            "models": _model_outputs(warehouse),
            "run_ids": {row[0] for row in warehouse.fetchall("select distinct run_id from ml.customer_segments")},
            "model_runs": warehouse.fetchall(
                "select model_name, cast(as_of_date as varchar), status, model_version from ml.model_runs order by 1"
            ),
            "customer_of_order": dict(warehouse.fetchall(
                "select cast(source_key as bigint), customer_id from intermediate.int_customer_identity"
                " where source_table = 'orders'"
            )),
        }


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_dag_outputs_match_counts_and_sums_from_the_sources(engine: str, dag_run, sources: Path) -> None:
    expected = expected_from_sources(sources)
    got = outputs(dag_run(engine))
    assert got["counts"]["raw_sales.orders"] == expected["orders"]
    assert got["counts"]["marts.fct_orders"] == expected["orders"]
    assert got["counts"]["marts.dim_customers"] == expected["customers"]
    assert got["counts"]["staging.stg_service__tickets"] == expected["tickets"]
    # Revenue per order from the sources, summed per customer of identity resolution.
    revenue_by_customer: dict[str, list[float]] = defaultdict(list)
    for order_id, amount in expected["revenue_by_order"].items():
        revenue_by_customer[got["customer_of_order"][order_id]].append(amount)
    segments = {row[0]: row for row in got["segments"]}
    assert set(segments) == set(revenue_by_customer)
    for customer, amounts in revenue_by_customer.items():
        assert segments[customer][1] == len(amounts), customer
        assert float(segments[customer][2]) == pytest.approx(sum(amounts), abs=0.005), customer
    assert {row[5] for row in got["segments"]} == {RUN_DATE.isoformat()}
    assert len(got["run_ids"]) == 1 and next(iter(got["run_ids"]))
    # Every registered model published for the date, and every table it writes has a latest view.
    assert got["model_runs"] == [
        (spec.name, RUN_DATE.isoformat(), "insufficient_data" if spec.name in INSUFFICIENT_HERE else "published", spec.version)
        for spec in sorted(registry.MODELS, key=lambda s: s.name)
    ]
    assert got["counts"]["ml.customer_segments_latest"] == len(segments)
    # BI's copy of the marts caught up with the green build.
    marts = {name.partition(".")[2] for name in got["counts"] if name.startswith("marts.")} - {"service_sla_targets"}
    assert {name.partition(".")[2] for name in got["counts"] if name.startswith("published.")} == marts | {"publish_log"}
    for mart in marts:
        assert got["counts"][f"published.{mart}"] == got["counts"][f"marts.{mart}"], mart
    for table in registry.output_tables():
        assert got["counts"][f"{table.name}_latest"] == got["counts"][table.name], table.name
    assert got["counts"]["ml.association_rules"] > 0 and got["counts"]["ml.product_recommendations"] > 0
    for table in ("ml.satisfaction_drivers", "ml.comment_topics", "ml.sales_forecast", "activation.contact_list"):
        assert got["counts"][table] > 0, table
    # The CRM tool's file holds the published list.
    exported = export_dir(dag_run(engine), sources) / "activation" / f"contact_list_{RUN_DATE}.csv"
    with exported.open(newline="") as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == got["counts"]["activation.contact_list"]
    assert {row[4] for row in got["segments"]} >= {1, 2, 3, 4}  # customers spread over the clusters


def test_both_engines_give_the_same_outputs(dag_run) -> None:
    duck, pg = outputs(dag_run("duckdb")), outputs(dag_run("postgres"))
    assert duck["counts"] == pg["counts"]
    assert [(i, float(a), s) for i, a, s in duck["orders"]] == [(i, float(a), s) for i, a, s in pg["orders"]]
    assert duck["segments"] == pg["segments"]
    assert duck["models"].keys() == pg["models"].keys()
    # Equal up to floating-point noise: the engines compute the features' averages and ratios in
    # different orders, which moves a distance to a centroid in its sixth decimal.
    for table, rows in duck["models"].items():
        differing = [(ours, theirs) for ours, theirs in zip(rows, pg["models"][table]) if not _close(ours, theirs)]
        assert len(rows) == len(pg["models"][table]) and not differing, f"{table}: {differing[:2]}"


def _close(ours: tuple, theirs: tuple) -> bool:
    return len(ours) == len(theirs) and all(
        math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) if isinstance(a, float) and isinstance(b, float) else a == b
        for a, b in zip(ours, theirs)
    )


def test_rerunning_a_day_leaves_the_same_tables(dag_run, sources: Path, airflow_home: Path) -> None:
    url = dag_run("duckdb")
    before = outputs(url)
    crmw_run(url, sources, airflow_home, RUN_DATE)
    after = outputs(url)
    # ml.model_runs keeps a row per run: the rerun adds its own.
    runs = {"ml.model_runs", "ml.model_runs_latest", "published.publish_log"}
    assert {k: v for k, v in after["counts"].items() if k not in runs} == {k: v for k, v in before["counts"].items() if k not in runs}
    assert after["counts"]["ml.model_runs"] == 2 * before["counts"]["ml.model_runs"]
    assert after["counts"]["published.publish_log"] == 2 * before["counts"]["published.publish_log"] == 2
    assert after["orders"] == before["orders"]
    assert after["segments"] == before["segments"]
    assert after["models"] == before["models"]  # deterministic: same warehouse and date, same outputs
    assert after["run_ids"] != before["run_ids"], "the rerun should have replaced the day's results"


def test_a_failed_run_exits_with_one_line_naming_the_cause(sources: Path, airflow_home: Path, tmp_path: Path) -> None:
    import shutil

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
    import shutil

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
        assert warehouse.fetchall("select distinct cast(as_of_date as varchar) from ml.model_runs") == [(first.isoformat(),)]
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


def test_source_freshness_task_fails_naming_a_source_loaded_days_ago(dag_run, sources: Path, airflow_home: Path, tmp_path: Path) -> None:
    import re
    import shutil

    from crmw.airflow_runner import airflow_environment

    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(dag_run("duckdb")[len("duckdb:///"):], copy)
    with connect(f"duckdb:///{copy}") as warehouse:
        warehouse.execute("update raw_sales.orders set _loaded_at = _loaded_at - interval 5 days")
    env = airflow_environment(
        {**os.environ, "WAREHOUSE_URL": f"duckdb:///{copy}", "CRMW_SOURCE_DIR": str(sources), "AIRFLOW_HOME": str(airflow_home)}
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
