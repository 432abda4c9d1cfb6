"""crm_maintenance's steps: old files pruned by their own retention each (the reports' index
rewritten), old model dates thinned for a model that stopped running, the engines' housekeeping run;
and the DAG run through Airflow."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crmw.airflow_runner import airflow_environment, prepare_airflow
from maintenance.tasks import Retention, prune_files, thin_model_history, vacuum_analyze
from ml_tasks import tasks
from reporting.run_report import INDEX, report_path
from tests.airflow_runs import metadata
from tests.test_ml_contract import SPENDS, _load_features, _rows
from tests.toy_model import SPEC
from warehouse import connect

NOW = time.time()


def _file(path: Path, days_old: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (NOW - days_old * 86_400,) * 2)
    return path


def test_files_older_than_their_retention_go_each_folder_by_its_own_and_the_report_index_is_rewritten(tmp_path: Path) -> None:
    exports, logs = tmp_path / "exports", tmp_path / "airflow-logs"
    reports = exports / "reports"
    old_list = _file(exports / "activation" / "contact_list_2025-01-01.csv", 40)
    new_list = _file(exports / "activation" / "contact_list_2025-02-05.csv", 2)
    old_report = _file(report_path(reports, dt.date(2024, 1, 1)), 500)
    kept_report = _file(report_path(reports, dt.date(2025, 1, 1)), 40)  # past the exports' 30 days, within the reports' 400
    old_log = _file(logs / "dag_id=crm_daily" / "run_id=old" / "task_id=publish" / "attempt=1.log", 31)
    new_log = _file(logs / "dag_id=crm_daily" / "run_id=new" / "task_id=publish" / "attempt=1.log", 1)
    deleted = prune_files({"reports": reports, "exports": exports, "logs": logs}, Retention(), now=NOW)
    assert deleted == {"reports": 1, "exports": 1, "logs": 1}
    assert not old_list.exists() and not old_report.exists() and not old_log.exists()
    assert new_list.exists() and kept_report.exists() and new_log.exists()
    assert not (logs / "dag_id=crm_daily" / "run_id=old").exists()  # emptied folders go too
    assert "crm_report_2025-01-01.html" in (reports / INDEX).read_text() and "2024-01-01" not in (reports / INDEX).read_text()
    assert prune_files({"reports": tmp_path / "none"}, Retention(), now=NOW) == {"reports": 0}


@pytest.mark.parametrize(("environ", "message"), [
    ({"CRMW_LOG_RETENTION_DAYS": "a month"}, "CRMW_LOG_RETENTION_DAYS='a month': expected a whole number of days, 1 or more"),
    ({"CRMW_EXPORT_RETENTION_DAYS": "0"}, "CRMW_EXPORT_RETENTION_DAYS='0': expected a whole number of days, 1 or more"),
])
def test_a_retention_that_is_not_a_number_of_days_is_refused_naming_the_setting(environ: dict, message: str) -> None:
    assert Retention.from_environ({"CRMW_REPORT_RETENTION_DAYS": "90"}) == Retention(reports=90)
    with pytest.raises(ValueError, match=message):
        Retention.from_environ(environ)


def test_a_model_that_stopped_running_has_its_old_dates_thinned_and_the_engine_housekept(warehouse_url: str, monkeypatch) -> None:
    days = [dt.date(2025, 3, 31), dt.date(2025, 4, 30), dt.date(2025, 5, 30), dt.date(2025, 5, 31)]
    for number, day in enumerate(days):
        _load_features(warehouse_url, day, SPENDS)
        tasks.run_model(SPEC, day, f"run-{number}", warehouse_url=warehouse_url)
    assert len(_rows(warehouse_url, "select distinct as_of_date from ml.toy_scores")) == 4  # the default policy keeps them
    # Weeks later, with no run since: one month-end kept besides the last two days.
    monkeypatch.setenv("CRMW_ML_DAILY_HISTORY_DAYS", "2")
    monkeypatch.setenv("CRMW_ML_MONTHLY_HISTORY_MONTHS", "1")
    deleted = thin_model_history(dt.date(2025, 6, 20), warehouse_url, models=[SPEC])
    kept = [row[0] for row in _rows(warehouse_url, "select distinct as_of_date from ml.toy_scores order by 1")]
    assert kept == [dt.date(2025, 5, 31)] and deleted == {SPEC.name: 3 * len(SPENDS)}
    assert thin_model_history(dt.date(2025, 6, 20), warehouse_url, models=[SPEC]) == {SPEC.name: 0}
    statement = vacuum_analyze(warehouse_url)
    if warehouse_url.startswith("postgres"):
        assert statement == "vacuum (analyze)"
        with connect(warehouse_url) as warehouse:
            [(vacuumed,)] = warehouse.fetchall(
                "select last_vacuum is not null and last_analyze is not null from pg_stat_user_tables"
                " where schemaname = 'ml' and relname = 'toy_scores'")
        assert vacuumed
    else:
        assert statement == "checkpoint"


@pytest.mark.airflow
def test_the_maintenance_dag_runs_through_airflow(tmp_path: Path, airflow_home: Path) -> None:
    exports = tmp_path / "exports"
    old_list = _file(exports / "activation" / "contact_list_2024-01-01.csv", 90)
    env = airflow_environment({**os.environ, "WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
                               "CRMW_EXPORT_DIR": str(exports), "AIRFLOW_HOME": str(airflow_home), "CRMW_TASK_RETRIES": "0"})
    prepare_airflow(env)
    result = subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "test", "crm_maintenance", "2025-06-01"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not old_list.exists()
    states = metadata(airflow_home, "select task_id, state from task_instance where dag_id = 'crm_maintenance'")
    assert dict(states) == {"thin_model_history": "success", "prune_files": "success", "vacuum_analyze": "success"}
