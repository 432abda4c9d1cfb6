"""crm_daily run through Airflow on each engine, as users run it: `crmw run` on DuckDB, and on
PostgreSQL a run triggered in `crmw airflow`, picked up by the real scheduler and executed by its
LocalExecutor, several tasks at a time in the warehouse_writer pool (on Spark:
test_spark_end_to_end.py, which reuses these checks). Outputs match counts and sums computed
straight from the source files, both engines give the same outputs, and a date range that
reruns the day leaves its tables, then stops at a next day whose delivery fails a dbt test, with ML
and publish held back. Runs that fail before dbt are in test_dag_failures.py and test_cli.py."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from crmw.airflow_runner import WAREHOUSE_POOL, airflow_environment
from crmw.scratch import new_postgres_database
from ml_tasks import registry
from ml_tasks.contract import nest_setting_params
from tests.airflow_runs import SERVED_RUN_TIMEOUT, ServedRun, crmw, export_dir, run_served, simulate_clean_sources, task_result, task_states
from tests.test_run_report import assert_self_contained
from warehouse import PROJECT_ROOT, connect

pytestmark = pytest.mark.airflow

# Six months: enough baskets and buyers for every model to publish, and three monthly training
# snapshots whose 90-day churn labels are complete by the run date for the trained models.
START, DAYS = dt.date(2025, 1, 1), 181
RUN_DATE = START + dt.timedelta(days=DAYS - 1)
_runs: dict[str, str] = {}
_served: dict[str, ServedRun] = {}
# A run that failed is not run again for the next test that reads it (another ten minutes).
_failed: dict[str, str] = {}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_clean_sources(tmp_path_factory.mktemp("sources"), START, DAYS)


# Six months of 400 customers hold 218 rated tickets and 64 comments: the service models' minimums
# (250 and 200, for the figures to mean something) are lowered through DAG params so that this run
# publishes them too.
MODEL_PARAMS = {"satisfaction_drivers__min_rated_tickets": 100, "comment_topics__minimum_comments": 50}
# Too few campaign controls here to validate an uplift model (89 in the training campaigns; the
# demo's two years of 4,000 customers hold thousands): it reports insufficient data, as a new install would.
INSUFFICIENT_HERE = {"campaign_uplift"}


def model_params() -> list[str]:
    return [argument for name, value in MODEL_PARAMS.items() for argument in ("--param", f"{name}={value}")]


def crmw_run(warehouse_url: str, sources: Path, airflow_home: Path, logical_date: dt.date) -> float:
    started = time.perf_counter()
    result = crmw(warehouse_url, sources, airflow_home, "run", "--date", logical_date.isoformat(), *model_params())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ml.customer_segments" in result.stdout
    # A past date: the freshness check is skipped, and Airflow logs nothing for it; crmw says so.
    assert " skipped source_freshness" in result.stdout
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def dag_run(request: pytest.FixtureRequest, sources: Path, airflow_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """Run the DAG once per engine and hand back the warehouse URL: `crmw run` on DuckDB, a run
    served by `crmw airflow` on PostgreSQL (what it left is in `_served`)."""

    def run(engine: str) -> str:
        if engine in _failed:
            pytest.fail(f"crm_daily on {engine} failed in an earlier test of this module: {_failed[engine]}")
        try:
            return _runs[engine] if engine in _runs else _run(engine)
        except BaseException as error:
            _failed[engine] = f"{type(error).__name__}: {str(error)[:1000]}"
            raise

    def _run(engine: str) -> str:
        if engine == "duckdb":
            url = f"duckdb:///{tmp_path_factory.mktemp('duckdb') / 'warehouse.duckdb'}"
            seconds = crmw_run(url, sources, airflow_home, RUN_DATE)
            print(f"\ncrm_daily on {engine}: {seconds:.1f} s (crmw run, incl. Airflow start-up)")
        else:
            url = new_postgres_database(request.getfixturevalue("postgres_server_url"), "crmw_dag_run")
            settings = {
                "WAREHOUSE_URL": url,
                "CRMW_SOURCE_DIR": str(sources),
                "CRMW_EXPORT_DIR": str(export_dir(url, sources)),
                "CRMW_TASK_RETRIES": "0",
                "CRMW_BI_KEY_SALT": os.environ["CRMW_BI_KEY_SALT"],  # publish refuses PostgreSQL without it
            }
            _served[engine] = run_served(
                settings, tmp_path_factory.mktemp("served"), RUN_DATE, nest_setting_params(MODEL_PARAMS.items())
            )
        _runs[engine] = url
        return url

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
        tables[table.name] = sorted((tuple(_comparable(value) for value in row) for row in rows), key=repr)
    return tables


def _comparable(value):
    """A value as every engine's Python types meet: decimals and floats as floats rounded (the engines
    sum in different orders), uuids as text (Spark has no uuid type)."""
    if isinstance(value, (float, Decimal)):
        return round(float(value), 6)
    return str(value) if isinstance(value, uuid.UUID) else value


# A finished run's outputs by warehouse URL, read once for the tests that compare them (on Spark a
# read of them takes minutes); a test that runs more days on a warehouse reads it afresh and keeps that.
_outputs_of_run: dict[str, dict] = {}


def run_outputs(url: str) -> dict:
    if url not in _outputs_of_run:
        _outputs_of_run[url] = outputs(url)
    return _outputs_of_run[url]


def outputs(url: str) -> dict:
    with connect(url) as warehouse:
        segments = warehouse.fetchall(
            "select customer_id, frequency, monetary, rfm_segment, cluster_id, as_of_date, model_version"
            " from ml.customer_segments order by customer_id"
        )
        return {
            "counts": dict(warehouse.row_counts(["raw_sales", "raw_crm", "raw_service", "staging", "marts", "published", "features", "ml", "activation"])),
            "orders": warehouse.fetchall("select order_id, round(net_amount, 2), order_status from marts.fct_orders order by order_id"),
            "segments": [(str(key), frequency, round(float(monetary), 2), rfm, cluster, as_of.isoformat(), version)
                         for key, frequency, monetary, rfm, cluster, as_of, version in segments],
            "models": _model_outputs(warehouse),
            "run_ids": {row[0] for row in warehouse.fetchall("select distinct run_id from ml.customer_segments")},
            "model_runs": [(name, as_of.isoformat(), status, version) for name, as_of, status, version in warehouse.fetchall(
                "select model_name, as_of_date, status, model_version from ml.model_runs order by 1"
            )],
            "customer_of_order": {order: str(key) for order, key in warehouse.fetchall(
                "select cast(source_key as bigint), customer_id from intermediate.int_customer_identity"
                " where source_table = 'orders'"
            )},
        }


@pytest.mark.timeout(SERVED_RUN_TIMEOUT)
@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_dag_outputs_match_counts_and_sums_from_the_sources(engine: str, dag_run, sources: Path) -> None:
    expected = expected_from_sources(sources)
    got = run_outputs(dag_run(engine))
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
    assert {name.partition(".")[2] for name in got["counts"] if name.startswith("published.")} == marts | {"publish_log", "publish_watermarks"}
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
    # The run report: every section filled but uplift's, which says why; the charts drawn; nothing
    # fetched from elsewhere; no email (customers appear by key only).
    page = (export_dir(dag_run(engine), sources) / "reports" / f"crm_report_{RUN_DATE}.html").read_text()
    assert re.findall(r'<p class="missing">\s*(\S+)', page) == ["campaign_uplift"]
    assert page.count("<svg") == 6
    assert "@" not in page
    assert_self_contained(page)


def test_the_postgres_run_was_scheduled_queued_and_executed_by_the_served_airflow_and_it_stopped_cleanly(dag_run) -> None:
    dag_run("postgres")
    served = _served["postgres"]
    # The banner's login is the generated one, for the port the API server listens on.
    assert served.login == (str(served.port), served.generated_password)
    assert not served.outlived, f"processes outlived `crmw airflow` and were killed: {served.outlived}"
    assert served.server_exit == 0, f"crmw airflow exited {served.server_exit}:\n{served.log[-3000:]}"
    # The triggered run is the only one: the daily schedule, off in the test, started none beside it.
    [(run_id, logical_date, state)] = [(run["run_id"], str(run["logical_date"]), run["state"]) for run in served.runs]
    assert run_id == served.run_id and logical_date.startswith(RUN_DATE.isoformat()) and state == "success"
    # Queued by the scheduler, executed by its LocalExecutor, every task that ran in the writer pool.
    assert served.tasks and not served.failed_tasks()
    # The scheduler completes an EmptyOperator (Cosmos' end-of-build marker) without running it.
    executed = [(task, state, pool, job) for task, state, pool, job, operator in served.tasks
                if state == "success" and operator != "EmptyOperator"]  # fmt: skip
    assert {job_type for *_, job_type in executed} == {"SchedulerJob"}
    assert {pool for _, _, pool, _ in executed} == {WAREHOUSE_POOL}
    enqueued_local = set()
    for batch in re.findall(r"Trying to enqueue tasks: \[(.*?)\] for executor: LocalExecutor\(", served.log):
        enqueued_local.update(re.findall(rf"<TaskInstance: crm_daily\.(\S+) {served.run_id} ", batch))
    assert enqueued_local == {task for task, *_ in executed}


@pytest.mark.parametrize("engine", ["postgres"])
def test_every_engine_gives_duckdbs_outputs(engine: str, dag_run) -> None:
    duck, other = run_outputs(dag_run("duckdb")), run_outputs(dag_run(engine))
    assert duck["counts"] == other["counts"]
    assert [(i, float(a), s) for i, a, s in duck["orders"]] == [(i, float(a), s) for i, a, s in other["orders"]]
    assert duck["segments"] == other["segments"]
    assert duck["models"].keys() == other["models"].keys()
    # Equal up to floating-point noise: the engines compute the features' averages and ratios in
    # different orders, which moves a distance to a centroid in its sixth decimal.
    for table, rows in duck["models"].items():
        differing = [(ours, theirs) for ours, theirs in zip(rows, other["models"][table]) if not _close(ours, theirs)]
        assert len(rows) == len(other["models"][table]) and not differing, f"{table}: {differing[:2]}"


def _close(ours: tuple, theirs: tuple) -> bool:
    return len(ours) == len(theirs) and all(
        math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) if isinstance(a, float) and isinstance(b, float) else a == b
        for a, b in zip(ours, theirs)
    )


def test_a_range_rerunning_the_day_leaves_its_tables_and_stops_at_the_next_day_whose_dbt_test_fails(
        dag_run, sources: Path, airflow_home: Path, tmp_path: Path) -> None:
    """`crmw run --from RUN_DATE --to RUN_DATE+2` on the warehouse that already ran RUN_DATE. The
    day after delivers an order in a status the shop does not have: extract loads it (any text is
    a status), staging's accepted-values test fails the build, and the range ends there."""
    url = dag_run("duckdb")
    before = run_outputs(url)
    next_day, day_after = RUN_DATE + dt.timedelta(days=1), RUN_DATE + dt.timedelta(days=2)
    delivering = tmp_path / "sources"
    shutil.copytree(sources, delivering)
    with sqlite3.connect(delivering / "sales.sqlite") as db:
        email, crm_id = db.execute("select customer_email, crm_id from orders order by order_id limit 1").fetchone()
        db.execute("insert into orders values (990000400, ?, ?, 'web', null, 'lost', ?, ?)",
                   (email, crm_id, f"{next_day} 12:00:00", f"{next_day} 12:00:00"))
    result = crmw(url, delivering, airflow_home, "run", "--from", RUN_DATE.isoformat(), "--to", day_after.isoformat(), *model_params())
    assert result.returncode != 0 and f"crm_daily for {next_day}" in result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    started = [line.split()[4] for line in result.stdout.splitlines() if line.startswith("crmw: running")]
    assert started == [RUN_DATE.isoformat(), next_day.isoformat()]  # in order, the third never started

    # The rerun of RUN_DATE rebuilt the same tables, published them and replaced the models' results.
    after = _outputs_of_run[url] = outputs(url)
    runs = {"ml.model_runs", "ml.model_runs_latest", "published.publish_log"}
    # What the failed day changed: raw took its delivery and the staging models its extract feeds;
    # everything downstream of the failing test was skipped, and ML and publish never ran on it.
    delivered = {"raw_sales.orders", "staging.stg_sales__order_versions", "staging.stg_sales__orders"}
    changed = {name for name in after["counts"] if after["counts"][name] != before["counts"][name]}
    assert changed - runs == delivered
    assert all(after["counts"][name] == before["counts"][name] + 1 for name in delivered)
    assert after["counts"]["ml.model_runs"] == 2 * before["counts"]["ml.model_runs"]
    assert after["counts"]["published.publish_log"] == 2 * before["counts"]["published.publish_log"] == 2
    assert {as_of for _, as_of, *_ in after["model_runs"]} == {RUN_DATE.isoformat()}
    assert after["orders"] == before["orders"]
    assert after["segments"] == before["segments"]
    assert after["models"] == before["models"]  # deterministic: same warehouse and date, same outputs
    assert after["run_ids"] != before["run_ids"], "the rerun should have replaced the day's results"

    states = task_states(airflow_home, next_day)
    assert states["extract_sales.orders"] == "success"
    assert states["dbt.dbt_producer_watcher"] == "failed"
    assert states["dbt.customer_rfm.run"] == "upstream_failed"
    for spec in registry.MODELS:
        assert states[f"ml.{spec.name}"] == "upstream_failed", spec.name
    assert states["publish"] == "upstream_failed"
    # The report ran anyway, says BI still shows the day before, and returned the run's data quality.
    assert states["report"] == "success"
    page = (export_dir(url, delivering) / "reports" / f"crm_report_{next_day}.html").read_text()
    assert f"Not published for {next_day}: BI still shows the build of {RUN_DATE}" in page
    summary = task_result(airflow_home, next_day, "report")
    assert summary["published_for_date"] is False and summary["models"] == {}
    failing = "accepted_values_stg_sales__orders_order_status__placed__shipped__completed__cancelled__returned"
    assert summary["dbt_tests"]["failed"] == [failing] and summary["dbt_tests"]["not_run"] > 0
    assert summary["report"].endswith(f"crm_report_{next_day}.html") and failing in page
    tests = summary["dbt_tests"]["passed"] + len(summary["dbt_tests"]["warned"]) + 1 + summary["dbt_tests"]["not_run"]
    green = task_result(airflow_home, RUN_DATE, "report")["dbt_tests"]
    assert green["failed"] == [] and green["not_run"] == 0 and green["passed"] + len(green["warned"]) == tests
    with connect(url) as warehouse:
        [(orders, distinct_orders)] = warehouse.fetchall("select count(*), count(distinct order_id) from raw_sales.orders")
    with sqlite3.connect(delivering / "sales.sqlite") as db:
        (delivered_orders,) = db.execute("select count(*) from orders where updated_at < ?", (day_after.isoformat(),)).fetchone()
    assert orders == distinct_orders == delivered_orders


AGE_BANDS = {None, "under 25", "25-34", "35-44", "45-54", "55-64", "65 and over"}


def _personal_values_and_keys(url: str) -> tuple[set[str], set[str]]:
    """Every customer's email, first and last name and phone, and every customer key."""
    with connect(url) as warehouse:
        personal = {value for (value,) in warehouse.fetchall(" union ".join(
            f"select {column} from published.dim_customers" for column in ("email", "first_name", "last_name", "phone")
        )) if value}
        keys = {key for (key,) in warehouse.fetchall("select customer_id from published.dim_customers")}
    return personal, keys


def _assert_bi_holds_no_personal_value(fetchall, personal: set[str], keys: set[str]) -> set[str]:
    """Read every text column of schema bi through `fetchall` (sql -> rows): no email-like value,
    no customer's personal value, no warehouse customer key; salted keys join, ages are banded.
    Returns BI's table names."""
    from warehouse.bi import PERSONAL

    columns = fetchall("select table_name, column_name, data_type from information_schema.columns where table_schema = 'bi'")
    assert not {column for _, column, _ in columns} & PERSONAL
    for table, column, data_type in columns:
        if data_type.lower() in ("varchar", "text", "character varying"):
            values = {value for (value,) in fetchall(f'select distinct "{column}" from bi."{table}"') if value}
            leaked = {value for value in values if "@" in value or value in personal or value in keys}
            assert not leaked, (table, column, sorted(leaked)[:3])
    assert fetchall("select count(*) from bi.churn_scores join bi.dim_customers using (customer_id)") == \
        fetchall("select count(*) from bi.churn_scores") != [(0,)]
    assert {band for (band,) in fetchall("select distinct age_band from bi.dim_customers")} <= AGE_BANDS
    # The questions README's "Connect a BI tool" offers as ready SQL answer from schema bi alone.
    for question in sorted((PROJECT_ROOT / "bi").glob("*.sql")):
        assert fetchall(question.read_text()), f"bi/{question.name}: no rows"
    return {table for table, *_ in columns}


def test_the_bi_export_holds_every_bi_table_and_no_personal_value_and_refuses_another_salt(
        dag_run, sources: Path, airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`crmw bi-export` of the DuckDB run: the published marts and the models' tables in a file of
    their own, checked on the values: no email, name or phone of a customer, no customer key of
    the warehouse (salted ones instead, which still join), ages in bands."""
    import duckdb

    url, out = dag_run("duckdb"), tmp_path / "crm_bi.duckdb"  # the run made schema bi with the tests' salt
    result = crmw(url, sources, airflow_home, "bi-export", "--out", str(out))
    assert result.returncode == 0 and f"crmw: wrote {out}" in result.stdout, result.stderr
    personal, keys = _personal_values_and_keys(url)
    with connect(url) as warehouse:
        marts = {name.partition(".")[2] for (name, _) in warehouse.row_counts(["published"])} - {"publish_log", "publish_watermarks"}
    with duckdb.connect(str(out), read_only=True) as bi:
        tables = _assert_bi_holds_no_personal_value(lambda sql: bi.execute(sql).fetchall(), personal, keys)
    assert tables >= marts | {"churn_scores", "churn_scores_latest", "customer_segments", "model_runs", "bi_info"}
    monkeypatch.setenv("CRMW_BI_KEY_SALT", "another-salt-of-32-characters-xy")
    refused = crmw(url, sources, airflow_home, "bi-export", "--out", str(out))
    assert refused.returncode == 2 and "not the salt" in refused.stderr and "Traceback" not in refused.stderr
    monkeypatch.undo()
    # The downstream DAG writes the same file, where files for other tools go.
    env = airflow_environment({**os.environ, "WAREHOUSE_URL": url, "CRMW_SOURCE_DIR": str(sources), "AIRFLOW_HOME": str(airflow_home),
                               "CRMW_EXPORT_DIR": str(export_dir(url, sources)), "CRMW_TASK_RETRIES": "0"})
    ran = subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "test", "crm_bi_export", RUN_DATE.isoformat()],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    with duckdb.connect(str(export_dir(url, sources) / "bi" / "crm_bi.duckdb"), read_only=True) as bi:
        assert bi.execute("select count(*) from bi.churn_scores").fetchone() != (0,)


def test_a_bi_login_on_postgresql_reads_schema_bi_alone_cannot_write_and_reads_no_personal_value(dag_run) -> None:
    """A login in BI's role (as the compose stack makes one) after the served PostgreSQL run: every
    table of every other schema refused, no writing, and no value it can read is personal."""
    import psycopg

    url = dag_run("postgres")
    personal, keys = _personal_values_and_keys(url)
    login = f"bi_login_{os.getpid()}"
    with connect(url) as warehouse:
        warehouse.execute(f"create role {login} login password 'bi-secret' in role crmw_bi_reader")
        relations = warehouse.fetchall(
            "select namespace.nspname, relation.relname from pg_class as relation join pg_namespace as namespace"
            " on namespace.oid = relation.relnamespace where relation.relkind in ('r', 'v', 'm', 'p')"
            " and namespace.nspname not in ('pg_catalog', 'information_schema')"
        )
    as_bi = urlsplit(url)._replace(netloc=f"{login}:bi-secret@{urlsplit(url).hostname}:{urlsplit(url).port}").geturl()
    try:
        with psycopg.connect(as_bi, autocommit=True) as bi:
            elsewhere = [(schema, name) for schema, name in relations if schema != "bi"]
            assert {schema for schema, _ in elsewhere} >= {"raw_crm", "raw_sales", "raw_service", "raw_meta", "staging", "marts", "published", "features", "ml", "activation"}
            for schema, name in elsewhere:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    bi.execute(f'select 1 from "{schema}"."{name}" limit 1')
            for statement in ("delete from bi.churn_scores", "create table bi.notes (note text)", "create table public.notes (note text)",
                              "drop view bi.dim_customers"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    bi.execute(statement)
            tables = _assert_bi_holds_no_personal_value(lambda sql: bi.execute(sql).fetchall(), personal, keys)
            assert {"dim_customers", "fct_orders", "churn_scores_latest", "customer_value_segments_latest", "bi_info"} <= tables
    finally:
        with connect(url) as warehouse:
            warehouse.execute(f"drop role {login}")
