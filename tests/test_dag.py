"""The DAG file imports cleanly, quickly, and wires the tasks the way the design says."""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest

from extract_load.contract import load_contract
from ml_tasks.registry import MODELS
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
    assert sorted(dagbag.dag_ids) == ["crm_bi_export", "crm_daily", "crm_maintenance"]


def test_the_dag_file_imports_no_data_library(monkeypatch_module) -> None:
    import os
    import subprocess
    import sys

    # Every task process parses the DAG file (122 a run under the scheduler), and numpy alone took ~0.5 s.
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        " print(sorted({'numpy', 'pandas', 'scipy', 'sklearn', 'pyarrow', 'duckdb'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(PROJECT_ROOT / "dags" / "crm_daily.py")],
                            env=dict(os.environ), cwd=PROJECT_ROOT, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_crm_daily_runs_daily_one_at_a_time_without_catchup(dagbag) -> None:
    dag = dagbag.dags["crm_daily"]
    assert dag.schedule == "@daily"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "extract" in (dag.doc_md or "").lower()


def test_every_task_retries_as_configured_takes_the_warehouse_pool_and_alerts_when_it_fails(dagbag) -> None:
    from reporting.alerts import alert_on_failure

    dag = dagbag.dags["crm_daily"]
    assert dag.tasks
    for task in dag.tasks:
        assert task.retries == 3, task.task_id
        assert task.retry_delay.total_seconds() == 42, task.task_id
        assert task.pool == "warehouse_writer", task.task_id
        callbacks = task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback]
        assert alert_on_failure in callbacks, task.task_id  # Cosmos' producer keeps its own beside it


def test_tasks_flow_extract_then_dbt_models_then_ml_then_publish_then_the_report(dagbag) -> None:
    dag = dagbag.dags["crm_daily"]
    ids = set(dag.task_ids)
    extract_tasks = {f"extract_{entity.system.name}.{entity.name}" for entity in load_contract().entities.values()}
    assert extract_tasks <= ids
    # One dbt build (the producer) and, watching it, a task per model and one per model's tests.
    producer = dag.get_task("dbt.dbt_producer_watcher")
    assert producer.exclude == "resource_type:unit_test"  # `make test` runs them; a day's data cannot change them
    # The date goes in the environment and the vars stay the same: the build and the freshness check,
    # and one day and the next, reuse dbt's parse (tests/test_dbt_manifest.py).
    freshness = dag.get_task("source_freshness")
    assert producer.env == freshness.env == {"CRMW_AS_OF_DATE": "{{ ds }}"}
    assert producer.vars == freshness.vars and set(producer.vars) == {"test_scope"}
    assert {task_id.partition(".")[0] for task_id in producer.upstream_task_ids} == {
        f"extract_{system}" for system in load_contract().systems
    }
    for model in (
        "stg_sales__orders", "stg_crm__customers", "stg_service__tickets", "fct_orders", "customer_rfm",
        "customer_features", "training_set", "basket_items",
    ):
        assert {f"dbt.{model}.run", f"dbt.{model}.test"} <= ids, model
        assert "dbt.dbt_producer_watcher" in dag.get_task(f"dbt.{model}.run").upstream_task_ids, model
    models = {f"ml.{spec.name}" for spec in MODELS}
    assert models and models <= ids
    # A model reading other models' outputs of the date runs after them; publish after the last ones.
    read_by_others = {f"ml.{upstream}" for spec in MODELS for upstream in spec.after}
    assert dag.get_task("publish").upstream_task_ids == {*(models - read_by_others), "source_freshness"}
    # The report comes last and runs whatever happened before it (it says what did not publish), as
    # a teardown: the run's state stays publish's (test_dag_failures.py runs one that fails).
    report = dag.get_task("report")
    assert report.upstream_task_ids == {"publish"} and report.downstream_task_ids == set()
    assert report.is_teardown and not report.on_failure_fail_dagrun
    for spec in MODELS:
        task = dag.get_task(f"ml.{spec.name}")
        assert extract_tasks <= task.get_flat_relative_ids(upstream=True)
        assert {"dbt.customer_features.test", "dbt.basket_items.test"} <= task.get_flat_relative_ids(upstream=True)
        if spec.after:
            assert task.upstream_task_ids == {f"ml.{upstream}" for upstream in spec.after}, spec.name
        else:
            assert any(tid.startswith("dbt.") for tid in task.upstream_task_ids), spec.name


def test_model_params_are_checked_before_anything_runs_and_each_model_has_a_param_naming_its_settings(dagbag) -> None:
    dag = dagbag.dags["crm_daily"]
    check = dag.get_task("check_model_params")
    assert check.upstream_task_ids == set()
    first_tasks = {task.task_id for task in dag.tasks if not task.upstream_task_ids}
    assert first_tasks == {"check_model_params"}
    # A param per model, not per setting: Airflow copies and serializes every param once per task.
    assert set(dag.params) == {"full_refresh", "test_whole_tables", *(spec.name for spec in MODELS)}
    for spec in MODELS:
        param = dag.params.get_param(spec.name)
        assert param.value == {} and param.schema == {"type": "object", "section": "Model settings"}, spec.name
        for setting in spec.parameter_names().values():
            assert f"{setting} (default " in param.description, (spec.name, setting)
        # Each setting says what it does, not only its name (the form shows no other help).
        undescribed = [field.name for field in dataclasses.fields(spec.settings) if not field.metadata.get("doc")]
        assert not undescribed, (spec.name, undescribed)


def test_tasks_carry_no_copy_of_the_dags_params_yet_each_task_runs_with_them(dagbag) -> None:
    from airflow.sdk.definitions.param import process_params
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags["crm_daily"]
    # Airflow copies the DAG's params into every task and validates each copy whenever it serializes
    # the DAG (each parse): the DAG drops the copies.
    assert [task.task_id for task in dag.tasks if task.params] == []
    serialized = DagSerialization.to_dict(dag)
    assert not any("params" in task["__var"] for task in serialized["dag"]["tasks"])
    assert {name for name, _ in serialized["dag"]["params"]} == set(dag.params)
    # What a task sees at run time: the DAG's params, under a run's conf. (The merge writes the conf into
    # the DAG's Param objects: a copy here, as each task process parses its own DAG.)
    run_dag = copy.deepcopy(dag)
    for task_id in ("check_model_params", "dbt.dbt_producer_watcher", "ml.customer_segments"):
        params = process_params(run_dag, run_dag.get_task(task_id), {"full_refresh": True}, suppress_exception=False)
        assert params["full_refresh"] is True and params["test_whole_tables"] is False, task_id
        assert params["association_rules"] == {}, task_id


def test_extract_has_a_task_group_per_source_and_a_full_refresh_param(dagbag) -> None:
    dag = dagbag.dags["crm_daily"]
    groups = {task_id.partition(".")[0] for task_id in dag.task_ids if task_id.startswith("extract_")}
    assert groups == {f"extract_{system}" for system in load_contract().systems}
    assert dag.params["full_refresh"] is False


def test_source_freshness_runs_after_the_extract_on_the_current_day_only(dagbag) -> None:
    import pendulum

    dag = dagbag.dags["crm_daily"]
    gate = dag.get_task("is_current_day")
    assert dag.get_task("source_freshness").upstream_task_ids == {"is_current_day"}
    assert {task_id.partition(".")[0] for task_id in gate.upstream_task_ids} == {
        f"extract_{system}" for system in load_contract().systems
    }
    # Skipping it must not skip publish: a backfill publishes as usual.
    assert gate.ignore_downstream_trigger_rules is False
    assert dag.get_task("publish").trigger_rule == "none_failed"
    now = pendulum.now("UTC")
    assert gate.python_callable(logical_date=now) is True
    assert gate.python_callable(logical_date=now.subtract(days=1)) is False
    assert gate.python_callable(logical_date=pendulum.datetime(2025, 1, 1, tz="UTC")) is False


def test_the_maintenance_dag_runs_weekly_its_warehouse_steps_in_the_writer_pool_and_alerts(dagbag) -> None:
    from reporting.alerts import alert_on_failure

    dag = dagbag.dags["crm_maintenance"]
    assert dag.schedule == "@weekly" and dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.task_ids) == {"thin_model_history", "prune_files", "vacuum_analyze"}
    assert dag.get_task("vacuum_analyze").upstream_task_ids == {"thin_model_history"}  # vacuum after the deletes
    for task_id in ("thin_model_history", "vacuum_analyze"):
        assert dag.get_task(task_id).pool == "warehouse_writer", task_id
    for task in dag.tasks:
        assert task.retries == 3 and task.retry_delay.total_seconds() == 42, task.task_id
        assert alert_on_failure in (task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback])


def test_publish_and_each_model_task_update_their_tables_as_assets_and_the_bi_export_is_scheduled_on_the_published_ones(dagbag) -> None:
    from warehouse.publish import marts_of

    daily, export = dagbag.dags["crm_daily"], dagbag.dags["crm_bi_export"]
    published = {f"published.{mart.name}" for mart in marts_of()}
    assert {outlet.name for outlet in daily.get_task("publish").outlets} == published
    assert all(outlet.uri == f"crmw://warehouse/{outlet.name.replace('.', '/')}" for outlet in daily.get_task("publish").outlets)
    for spec in MODELS:
        assert {outlet.name for outlet in daily.get_task(f"ml.{spec.name}").outlets} == {table.name for table in spec.writes}, spec.name
    # Run once publish has updated every published mart: a build that fails its tests exports nothing.
    assert {asset.name for asset in export.timetable.asset_condition.objects} == published
    assert export.task_ids == ["export_for_bi"] and export.catchup is False
    assert export.get_task("export_for_bi").pool == "warehouse_writer"
