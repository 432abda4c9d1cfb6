"""
### crm_daily — the daily customer-analytics run

For one logical date: **extract** each source system (sales database, CRM CSV drops, service-desk
JSON lines) into its raw schema, one task per source table, grouped by source; each SQL table
is then reconciled by key (hard deletes marked, rows the cursor missed loaded) → **dbt** builds
staging, marts and feature tables in one `dbt build` (`dbt.dbt_producer_watcher`), each model and
its tests shown by a task of its own (`dbt.<model>.run`, `dbt.<model>.test`); a failing test fails
the build and stops ML and publish → **ml** runs each registered model (`ml_tasks/registry.py`),
one task per model family, publishing its tables for the date and a row in `ml.model_runs`; the
activation list runs after the models it reads and also writes a dated CSV for the CRM tool →
**publish** brings the `published` marts BI reads level with the build just tested, in one
transaction (write-audit-publish: a build whose tests fail never reaches BI), and refreshes the
models' `_latest` views → **report** writes the date's run report (an HTML page: KPIs, each
model's results and quality, the load's data quality) whatever happened before it, and returns
its path. Model settings (a param per model, e.g. `{"association_rules":
{"top_k_offers": 10}}`) are checked first, before anything is written. One build instead of a
dbt process per model: with some forty models the per-task dbt start-up made a run several times
slower.

**Erasure requests** waiting in `audit.erasure_requests` are carried out first (`erase_requested`,
as `crmw forget` does); the extract then erases any row of an erased person as it loads.

**Source freshness** (`dbt source freshness`) is checked after the extract on the current day's
run only: a backfill of past dates is not stale, so there the check is skipped. Stale sources
fail the run and hold back publish.

Every task that writes the warehouse takes a slot of the `warehouse_writer` pool: one slot on
DuckDB (one writer per file), more on PostgreSQL. Re-running a date replaces that date's rows.
Retries and their delay come from `CRMW_TASK_RETRIES` and `CRMW_RETRY_DELAY_SECONDS`. A task that
fails for good logs a one-line alert (DAG, task, date, error, log link) and posts it to the webhook
of the Airflow connection `crmw_alerts` where there is one.
Trigger with `{"full_refresh": true}` to reload every raw table from scratch. The incremental
facts' tests read the rows the run wrote, and every row on Sundays or with `{"test_whole_tables": true}`.

**Triggering by hand**: the form's Logical Date defaults to now, a day the sources may not have
delivered yet. Set it (Advanced Options → Logical Date) to a day the exports cover — for `make
demo`'s data any day from 2024-01-01 to 2025-12-30 — and untick "Unpause crm_daily on trigger"
unless the daily schedule should start too.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, ParamsDict, TaskGroup, dag, task
from cosmos import (
    DbtTaskGroup,
    ExecutionConfig,
    ExecutionMode,
    InvocationMode,
    LoadMode,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
    TestBehavior,
)
from cosmos.constants import PRODUCER_WATCHER_TASK_ID
from cosmos.operators._watcher import base as cosmos_watcher
from cosmos.operators._watcher.state import get_dbt_event_xcom_key
from cosmos.operators.local import DbtSourceLocalOperator

from extract_load.contract import load_contract
from ml_tasks.contract import param_schema
from ml_tasks.registry import MODELS
from reporting.alerts import alert_on_failure
from warehouse import parse_warehouse_url
from warehouse.publish import marts_of

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT = PROJECT_ROOT / "dbt_project"
MANIFEST = DBT_PROJECT / "target" / "manifest.json"
WAREHOUSE_POOL = "warehouse_writer"


def warehouse_asset(table: str) -> Asset:
    """A warehouse table as an Airflow Asset (`schema.table`), which the task that writes it updates."""
    return Asset(name=table, uri=f"crmw://warehouse/{table.replace('.', '/')}")


# Every task of both DAGs: retries from the environment, the writer pool, an alert when it fails for good.
DEFAULT_ARGS = {
    "owner": "data-platform",
    "retries": int(os.environ.get("CRMW_TASK_RETRIES", "2")),
    "retry_delay": timedelta(seconds=int(os.environ.get("CRMW_RETRY_DELAY_SECONDS", "300"))),
    "pool": WAREHOUSE_POOL,
    "on_failure_callback": alert_on_failure,
}
# What BI reads, updated by publish once a build passed its tests; crm_bi_export is scheduled on them.
PUBLISHED_ASSETS = [warehouse_asset(f"published.{mart.name}") for mart in marts_of(MANIFEST)]

# Cosmos' dbt producer writes a node's event XCom at each step of the node (start, compiling,
# executing, finished); the node's task reads it once, when the node has finished, to log its times
# and message (astronomer-cosmos#2777). Each write is an execution-API call (~26 ms here), and the
# three that nobody reads cost ~1,000 calls a run: keep the finished and error events only.
cosmos_watcher._DBT_EVENT_ALLOWLIST = cosmos_watcher._DBT_EVENT_ALLOWLIST - {"NodeStart", "NodeCompiling", "NodeExecuting"}

DBT_PROFILE = ProfileConfig(
    profile_name="crm_warehouse",
    target_name=parse_warehouse_url().engine,
    profiles_yml_filepath=DBT_PROJECT / "profiles.yml",
)

# What every dbt invocation of a run is given. Tests of the incremental facts read the rows the day
# wrote, and whole tables on Sundays (or when asked): two years of rows re-tested every day cost
# more than the day's build. The date goes in the environment, not in the vars: dbt parses the
# whole project again when its vars change (~6 s here), but only the files that use an environment
# variable when that changes; with the same vars, the source freshness check and the build, and
# one day and the next, reuse the parse Cosmos caches (macro as_of_date_sql).
DBT_RUN_ARGS = {
    "vars": {"test_scope": "{{ 'all' if params.test_whole_tables or logical_date.isoweekday() == 7 else 'written' }}"},
    "env": {"CRMW_AS_OF_DATE": "{{ ds }}"},
}


@task
def extract_entity(system: str, entity: str, ds: str | None = None, run_id: str | None = None, params=None) -> dict:
    from dataclasses import asdict
    from datetime import date

    from extract_load.load import extract_system

    full_refresh = bool(params and params.get("full_refresh"))
    (audit,) = extract_system(system, date.fromisoformat(ds), run_id, entities=[entity], full_refresh=full_refresh)
    return asdict(audit)


@task
def reconcile_entity(system: str, entity: str, ds: str | None = None, run_id: str | None = None) -> dict:
    from dataclasses import asdict
    from datetime import date

    from extract_load.load import reconcile_system

    (audit,) = reconcile_system(system, date.fromisoformat(ds), run_id, entities=[entity])
    return asdict(audit)


@task
def erase_requested() -> list[str]:
    """The right to erasure, in bulk: carry out the requests waiting in `audit.erasure_requests`
    (customer key, requested_at, requested_by) before the day's load, which then erases any new row
    of those people as it loads (warehouse/erasure.py); returns what each erased."""
    from ml_tasks.tasks import export_dir
    from warehouse.erasure import forget_requested

    return [erasure.summary() for erasure in forget_requested(export_dir() / "activation")]


@task
def check_model_params(params=None) -> dict:
    """Fail the run before it writes anything when a model param is out of range (no retry)."""
    from airflow.sdk.exceptions import AirflowFailException

    from ml_tasks.contract import BadParameter
    from ml_tasks.tasks import check_params

    try:
        return check_params(params)
    except BadParameter as error:
        raise AirflowFailException(str(error)) from None


@task
def run_model(model: str, ds: str | None = None, run_id: str | None = None, params=None) -> dict:
    """Fit and score one registered model for the run's date and publish its results. A quality
    floor missed on held-out data fails the task without retrying: a retry cannot change it."""
    from datetime import date

    from airflow.sdk.exceptions import AirflowFailException

    from ml_tasks.contract import BadParameter, QualityBelowFloor
    from ml_tasks.tasks import run_model as run_registered_model

    try:
        run = run_registered_model(model, date.fromisoformat(ds), run_id, params)
    except (BadParameter, QualityBelowFloor) as error:
        raise AirflowFailException(str(error)) from None
    return {key: value for key, value in run.items() if key not in ("parameters", "as_of_date")}


@task.short_circuit(ignore_downstream_trigger_rules=False)
def is_current_day(logical_date=None) -> bool:
    """True on the run for today (UTC); a manual run without a logical date counts as today's."""
    return logical_date is None or logical_date.date() >= pendulum.now("UTC").date()


@task(trigger_rule="none_failed", outlets=PUBLISHED_ASSETS)
def publish(ds: str | None = None, run_id: str | None = None) -> dict:
    """Only after a build whose tests passed: BI's `published` marts catch up with it in one
    transaction (rows written per mart returned), and the `_latest` views are refreshed."""
    from datetime import date

    from ml_tasks.tasks import publish as publish_build

    return publish_build(date.fromisoformat(ds), run_id)


@task
def report(ds: str | None = None, run_id: str | None = None, ti=None) -> dict:
    """Write the run report of the date (an HTML page beside an index of earlier ones) and return
    its path with the run's data quality in figures (BI published or held back, rows quarantined,
    each model's status, dbt tests warned, failed or not run), which the UI shows as the task's
    result. It runs whatever happened upstream: a model that did not publish, or a build held back
    from BI, is what its sections then say."""
    import json
    import logging
    from datetime import date

    from reporting.run_report import run_summary, write_report

    # Each dbt test's outcome as the build reported it: the producer keeps each node's last event
    # (pass, warn, skipped; a failing test's is its error event, with no status but dbt's message)
    # as an XCom. The watcher tasks cannot tell: a failed build leaves every one upstream_failed.
    def outcome(test: dict) -> str | None:
        event = ti.xcom_pull(task_ids=f"dbt.{PRODUCER_WATCHER_TASK_ID}", key=get_dbt_event_xcom_key(test["unique_id"]))
        if not event:
            return None  # not reached
        return "error" if event.get("status") in (None, "None") else event["status"]

    manifest = json.loads(MANIFEST.read_text())
    dbt_tests = {node["name"]: outcome(node) for node in manifest["nodes"].values() if node["resource_type"] == "test"}
    as_of_date = date.fromisoformat(ds)
    path = write_report(as_of_date, run_id, dbt_tests=dbt_tests)
    logging.getLogger(__name__).info("run report: %s", path.as_uri())
    return {"report": str(path), **run_summary(as_of_date, dbt_tests)}


@dag(
    dag_id="crm_daily",
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=os.environ.get("CRMW_CATCHUP", "false").lower() == "true",
    max_active_runs=1,
    description="Daily: extract CRM, sales and service exports → dbt marts and features → customer models → BI views",
    doc_md=__doc__,
    tags=["crm-warehouse"],
    params={
        "full_refresh": Param(
            False, type="boolean", description="Forget what raw holds and reload every source from scratch."
        ),
        "test_whole_tables": Param(
            False, type="boolean",
            description="Test every row of the incremental facts, not only those the run wrote (done on Sundays anyway).",
        ),
        **{spec.name: Param(**param_schema(spec)) for spec in MODELS},
    },
    default_args=DEFAULT_ARGS,
)
def crm_daily() -> None:
    contract = load_contract()
    params_checked = check_model_params()
    extract_groups = []
    for system in contract.systems:
        with TaskGroup(group_id=f"extract_{system}", tooltip=contract.systems[system].description) as group:
            for entity in contract.entities_of(system):
                loaded = extract_entity.override(task_id=entity.name)(system, entity.name)
                if entity.system.format == "sql":
                    loaded >> reconcile_entity.override(task_id=f"reconcile_{entity.name}")(system, entity.name)
        extract_groups.append(group)

    dbt = DbtTaskGroup(
        group_id="dbt",
        project_config=ProjectConfig(
            manifest_path=MANIFEST,
            project_name="crm_warehouse",
            install_dbt_deps=False,
        ),
        profile_config=DBT_PROFILE,
        execution_config=ExecutionConfig(
            dbt_project_path=DBT_PROJECT,
            execution_mode=ExecutionMode.WATCHER,
            invocation_mode=InvocationMode.DBT_RUNNER,
        ),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            test_behavior=TestBehavior.AFTER_EACH,
            # dbt's unit tests check a model's SQL on fixed rows, not the day's data: `make test` runs
            # them on both engines with every change, and a daily run would only repeat them.
            exclude=["resource_type:unit_test"],
        ),
        operator_args=DBT_RUN_ARGS,
    )
    # Watcher mode: one `dbt build` of the whole project (the producer; a failing test fails it,
    # and dbt skips what depends on the failure) and a task per model and per model's tests that
    # shows its result. Cosmos starts those with the extract, polling the producer; run one at a
    # time (one DuckDB writer slot, `airflow dags test`) a polling task would hold up the producer
    # it waits for. After the producer, each reads its result at once.
    producer = dbt.tasks_map[PRODUCER_WATCHER_TASK_ID]
    for watcher in dbt.iter_tasks():
        if watcher is not producer and producer not in watcher.upstream_list:
            producer >> watcher

    freshness = DbtSourceLocalOperator(
        task_id="source_freshness",
        project_dir=DBT_PROJECT,
        profile_config=DBT_PROFILE,
        invocation_mode=InvocationMode.DBT_RUNNER,
        install_deps=False,
        **DBT_RUN_ARGS,
    )

    with TaskGroup(group_id="ml", tooltip="One task per registered model (ml_tasks/registry.py)") as models:
        model_tasks = {
            spec.name: run_model.override(
                task_id=spec.name, doc_md=spec.description, outlets=[warehouse_asset(table.name) for table in spec.writes]
            )(spec.name)
            for spec in MODELS
        }
        for spec in MODELS:
            for upstream in spec.after:  # it reads their outputs of the same date
                model_tasks[upstream] >> model_tasks[spec.name]

    params_checked >> erase_requested() >> extract_groups
    extract_groups >> dbt
    extract_groups >> is_current_day() >> freshness
    # The report runs however the tasks before it ended, as a teardown: a run's state is that of its
    # leaves, teardowns aside, so the run is publish's outcome. As a plain all_done leaf, its own
    # success made a run whose build had failed green. A report that fails alerts and shows red, and
    # leaves the run as the data made it.
    [dbt >> models, freshness] >> publish() >> report().as_teardown()


DAG = crm_daily()

# Airflow copies every DAG param into each task's own params, and serializing the DAG validates every
# copy against its JSON schema: 12 params on 124 tasks cost 2.2 s of each parse by the DAG processor
# (three times a `crmw run`) and made the stored DAG 1.77 MB instead of 0.19 MB (apache/airflow#32434).
# A task gets the DAG's params at run time anyway (merged under its own): keep only a task's own. That
# merge then writes the run's conf into the DAG's Param objects rather than a task's copies, harmless
# where each DAG run parses the DAG afresh (a task process; `airflow dags test` runs one DAG run).
for _task in DAG.tasks:
    _task.params = ParamsDict.filter_params_by_source(_task.params, "task")


@task
def export_for_bi() -> str:
    """BI's tables without personal data into a DuckDB file of their own (`crmw bi-export`); skipped
    on PostgreSQL and Spark, which BI tools query themselves, and without CRMW_BI_KEY_SALT."""
    from airflow.sdk.exceptions import AirflowSkipException

    from ml_tasks.tasks import bi_export
    from warehouse.bi import SALT_SETTING

    engine = parse_warehouse_url().engine
    if engine == "postgres":
        raise AirflowSkipException("PostgreSQL warehouse: BI tools read it through the BI login, no file is exported")
    if engine == "spark":
        raise AirflowSkipException("Spark warehouse: BI tools read it through a Spark Thrift server, no file is exported")
    if not os.environ.get(SALT_SETTING):
        raise AirflowSkipException(f"{SALT_SETTING} is not set: set it to export BI's tables (README, 'Connect a BI tool')")
    path, rows = bi_export()
    return f"{path}: {len(rows)} tables, {sum(rows.values())} rows"


@dag(
    dag_id="crm_bi_export",
    schedule=PUBLISHED_ASSETS,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    description="After each publish of crm_daily: BI's tables without personal data, in a DuckDB file of their own",
    doc_md="Scheduled on the published marts (Assets that crm_daily's publish task updates): writes BI's tables, "
    "without names, contacts or source ids and with customers by salted key, into `$CRMW_EXPORT_DIR/bi/crm_bi.duckdb` "
    "for a desktop BI tool (DuckDB warehouses; skipped on PostgreSQL).",
    tags=["crm-warehouse"],
    default_args=DEFAULT_ARGS,
)
def crm_bi_export() -> None:
    export_for_bi()


BI_EXPORT_DAG = crm_bi_export()
