"""The DAG file imports cleanly, quickly, and wires the tasks the way the design says."""

from __future__ import annotations

import time

import pytest

from extract_load.contract import load_contract
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    print(f"\nDAG folder parse time: {time.perf_counter() - started:.2f} s")
    return bag


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
        patch.setenv("CRMW_TASK_RETRIES", "3")
        patch.setenv("CRMW_RETRY_DELAY_SECONDS", "42")
        patch.setenv("WAREHOUSE_URL", f"duckdb:///{tmp_path_factory.mktemp('wh') / 'warehouse.duckdb'}")
        yield patch


def test_dag_folder_imports_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert list(dagbag.dag_ids) == ["crm_daily"]


def test_crm_daily_runs_daily_one_at_a_time_without_catchup(dagbag) -> None:
    dag = dagbag.dags["crm_daily"]
    assert dag.schedule == "@daily"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "extract" in (dag.doc_md or "").lower()


def test_every_task_retries_as_configured_and_takes_the_warehouse_pool(dagbag) -> None:
    dag = dagbag.dags["crm_daily"]
    assert dag.tasks
    for task in dag.tasks:
        assert task.retries == 3, task.task_id
        assert task.retry_delay.total_seconds() == 42, task.task_id
        assert task.pool == "warehouse_writer", task.task_id


def test_tasks_flow_extract_then_dbt_models_then_ml_then_publish(dagbag) -> None:
    dag = dagbag.dags["crm_daily"]
    ids = set(dag.task_ids)
    extract_tasks = {f"extract_{entity.system.name}.{entity.name}" for entity in load_contract().entities.values()}
    assert extract_tasks <= ids
    # Cosmos renders one task per dbt model (model and its tests run together).
    for model in ("stg_sales__orders", "stg_crm__customers", "stg_service__tickets", "fct_orders", "customer_rfm"):
        assert f"dbt.{model}_model_build" in ids or f"dbt.{model}.{model}_build" in ids, model
    segments = dag.get_task("score_segments")
    assert dag.get_task("publish").upstream_task_ids == {"score_segments"}
    upstream = segments.get_flat_relative_ids(upstream=True)
    assert extract_tasks <= upstream
    assert any(task_id.startswith("dbt.customer_rfm") for task_id in segments.upstream_task_ids)


def test_extract_has_a_task_group_per_source_and_a_full_refresh_param(dagbag) -> None:
    dag = dagbag.dags["crm_daily"]
    groups = {task_id.partition(".")[0] for task_id in dag.task_ids if task_id.startswith("extract_")}
    assert groups == {f"extract_{system}" for system in load_contract().systems}
    assert dag.params["full_refresh"] is False
