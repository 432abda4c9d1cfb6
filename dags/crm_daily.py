"""
### crm_daily — the daily customer-analytics run

For one logical date: **extract** each source system (sales database, CRM CSV drops, service-desk
JSON lines) into its raw schema, one task per source table, grouped by source; each SQL table
is then reconciled by key (hard deletes marked, rows the cursor missed loaded) → **dbt** builds staging, marts and feature tables (one task per
model, each running the model and its tests) → **ml** scores RFM segments into
`ml.customer_segments` → **publish** refreshes the `_latest` views BI tools read.

Every task that writes the warehouse takes a slot of the `warehouse_writer` pool: one slot on
DuckDB (one writer per file), more on PostgreSQL. Re-running a date replaces that date's rows.
Retries and their delay come from `CRMW_TASK_RETRIES` and `CRMW_RETRY_DELAY_SECONDS`.
Trigger with `{"full_refresh": true}` to reload every raw table from scratch.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Param, TaskGroup, dag, task
from cosmos import (
    DbtTaskGroup,
    ExecutionConfig,
    InvocationMode,
    LoadMode,
    ProfileConfig,
    ProjectConfig,
    RenderConfig,
    TestBehavior,
)

from extract_load.contract import load_contract
from warehouse import parse_warehouse_url

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT = PROJECT_ROOT / "dbt_project"
WAREHOUSE_POOL = "warehouse_writer"

DBT_PROFILE = ProfileConfig(
    profile_name="crm_warehouse",
    target_name=parse_warehouse_url().engine,
    profiles_yml_filepath=DBT_PROJECT / "profiles.yml",
)


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
def score_segments(ds: str | None = None, run_id: str | None = None) -> dict:
    from datetime import date

    from ml_tasks.tasks import run_segmentation

    return run_segmentation(date.fromisoformat(ds), run_id)


@task
def publish() -> None:
    from ml_tasks.tasks import publish as publish_views

    publish_views()


@dag(
    dag_id="crm_daily",
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=os.environ.get("CRMW_CATCHUP", "false").lower() == "true",
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm-warehouse"],
    params={
        "full_refresh": Param(
            False, type="boolean", description="Forget what raw holds and reload every source from scratch."
        ),
    },
    default_args={
        "owner": "data-platform",
        "retries": int(os.environ.get("CRMW_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("CRMW_RETRY_DELAY_SECONDS", "300"))),
        "pool": WAREHOUSE_POOL,
    },
)
def crm_daily() -> None:
    contract = load_contract()
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
            manifest_path=DBT_PROJECT / "target" / "manifest.json",
            project_name="crm_warehouse",
            install_dbt_deps=False,
        ),
        profile_config=DBT_PROFILE,
        execution_config=ExecutionConfig(dbt_project_path=DBT_PROJECT, invocation_mode=InvocationMode.DBT_RUNNER),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            test_behavior=TestBehavior.BUILD,
            # A relationships test reads two models: run it once both exist, not inside either build.
            should_detach_multiple_parents_tests=True,
        ),
        operator_args={"vars": {"as_of_date": "{{ ds }}"}},
    )

    extract_groups >> dbt
    dbt >> score_segments() >> publish()


crm_daily()
