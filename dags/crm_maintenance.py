"""
### crm_maintenance — weekly housekeeping of the crm-warehouse

- **thin_model_history**: each model's as-of dates past the ML history policy
  (`CRMW_ML_DAILY_HISTORY_DAYS`, `CRMW_ML_MONTHLY_HISTORY_MONTHS`) are deleted, as a model's own
  run does when it publishes; this catches the models that stopped running.
- **prune_files**: run reports (`CRMW_REPORT_RETENTION_DAYS`, 400), exported files such as the
  contact lists, which hold names and contacts (`CRMW_EXPORT_RETENTION_DAYS`, 30), and Airflow's
  task logs (`CRMW_LOG_RETENTION_DAYS`, 30) last written longer ago are deleted.
- **vacuum_analyze**: PostgreSQL reclaims the dead rows of the daily delete+insert and refreshes
  the planner's statistics; DuckDB checkpoints.

Raw versions are never deleted: full refreshes, history and training labels are built from them.
Each task returns what it did (rows or files deleted per kind), shown as its result in the UI.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from reporting.alerts import alert_on_failure

WAREHOUSE_POOL = "warehouse_writer"


@task(pool=WAREHOUSE_POOL)
def thin_model_history(ds: str | None = None) -> dict:
    from datetime import date

    from maintenance.tasks import thin_model_history as thin

    return thin(date.fromisoformat(ds))


@task
def prune_files() -> dict:
    from pathlib import Path

    from airflow.configuration import conf

    from maintenance.tasks import Retention
    from maintenance.tasks import prune_files as prune
    from ml_tasks.tasks import export_dir
    from reporting.run_report import report_dir

    folders = {"reports": report_dir(), "exports": export_dir(), "logs": Path(conf.get("logging", "base_log_folder"))}
    return prune(folders, Retention.from_environ())


@task(pool=WAREHOUSE_POOL)
def vacuum_analyze() -> str:
    from maintenance.tasks import vacuum_analyze as reclaim

    return reclaim()


@dag(
    dag_id="crm_maintenance",
    schedule="@weekly",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    description="Weekly: thin old ML as-of dates, prune old reports, exports and logs, VACUUM/ANALYZE the warehouse",
    doc_md=__doc__,
    tags=["crm-warehouse"],
    default_args={
        "owner": "data-platform",
        "retries": int(os.environ.get("CRMW_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("CRMW_RETRY_DELAY_SECONDS", "300"))),
        "on_failure_callback": alert_on_failure,
    },
)
def crm_maintenance() -> None:
    thin_model_history() >> vacuum_analyze()
    prune_files()


DAG = crm_maintenance()
