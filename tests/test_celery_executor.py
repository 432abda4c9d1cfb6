"""Airflow on Celery workers: one triggered crm_maintenance run on the CeleryExecutor, with a local
Redis as the broker, the metadata DB on the session's throwaway PostgreSQL (the CeleryExecutor
refuses SQLite), and the API server, scheduler, DAG processor and a Celery worker each run as a
process of its own (`served_airflow`), as a deployment on several machines runs them.

crm_maintenance, not crm_daily: its three tasks prove that the scheduler hands tasks to the worker
as well as crm_daily's 126 would, in a fraction of the time. The worker's tasks prune an old exported file, so
they did their work with the environment the worker passed them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from crmw.scratch import new_postgres_database
from tests.airflow_runs import (
    CELERY_EXECUTOR, SERVED_RUN_TIMEOUT, airflow_cli, free_loopback_port, served_airflow, set_paused, wait_for_run,
)  # fmt: skip

# The module's run is set up by whichever test comes first: each may take as long as a served run.
pytestmark = [pytest.mark.airflow, pytest.mark.celery, pytest.mark.postgres, pytest.mark.timeout(SERVED_RUN_TIMEOUT)]

MAINTENANCE_DAG = "crm_maintenance"
MAINTENANCE_TASKS = {"thin_model_history", "prune_files", "vacuum_analyze"}
RUN_DATE = dt.date(2025, 6, 1)
REDIS_STARTUP_TIMEOUT = 30
# Celery's worker logs each message it takes: "Task <celery task name>[<celery task id>] received".
RECEIVED = re.compile(r"Task \S+\[([0-9a-f-]+)\] received")
REDIS_SERVER = shutil.which("redis-server")
# Checked before any fixture starts: the session's PostgreSQL would otherwise start for nothing.
needs_redis_server = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (Debian: apt-get install -y redis-server); the CeleryExecutor needs it as its broker",
)


@dataclass
class CeleryRun:
    """What the run left: its state, each task's row, the Celery results, the worker's log, the
    exported files it should have pruned or kept, and what outlived the components."""

    state: str | None
    tasks: dict[str, tuple]  # task_id -> (state, external_executor_id: its Celery task id, queue, job_type that queued it)
    celery_results: dict[str, str]  # Celery task id -> status, from the result backend's table
    worker_log: str
    old_export: Path
    recent_export: Path
    outlived: dict[int, str]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis on a loopback port (Debian's redis-server), without persistence."""
    import redis

    folder, port = tmp_path_factory.mktemp("redis"), free_loopback_port()
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + REDIS_STARTUP_TIMEOUT
        while True:
            assert process.poll() is None, f"redis-server exited {process.returncode}: {(folder / 'redis.log').read_text()}"
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, f"redis-server did not answer within {REDIS_STARTUP_TIMEOUT} s"
                time.sleep(0.2)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _aged_file(path: Path, days_old: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("customer_key,email\n")
    os.utime(path, (time.time() - days_old * 86_400,) * 2)
    return path


@pytest.fixture(scope="module")
def celery_run(redis_url: str, postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> CeleryRun:
    folder = tmp_path_factory.mktemp("celery")
    metadata_url = new_postgres_database(postgres_server_url, f"crmw_celery_airflow_{os.getpid()}")
    exports = folder / "exports"
    # Exported contact lists are kept 30 days (CRMW_EXPORT_RETENTION_DAYS): prune_files deletes the first.
    old_export = _aged_file(exports / "activation" / "contact_list_2025-04-01.csv", 60)
    recent_export = _aged_file(exports / "activation" / "contact_list_2025-05-31.csv", 1)
    settings = {
        "WAREHOUSE_URL": f"duckdb:///{folder / 'warehouse.duckdb'}",
        "CRMW_EXPORT_DIR": str(exports),
        "CRMW_TASK_RETRIES": "0",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url.replace("postgresql://", "postgresql+psycopg2://", 1),
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_url}",
        # Celery's default is 16 task processes per worker; two cores here.
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
    }
    run_id = f"celery__{RUN_DATE.isoformat()}"
    with served_airflow(settings, folder, executor=CELERY_EXECUTOR, dag_id=MAINTENANCE_DAG) as served:
        run_started = time.monotonic()
        airflow_cli(served.env, "dags", "trigger", MAINTENANCE_DAG, "--logical-date", f"{RUN_DATE.isoformat()}T00:00:00+00:00",
                    "--run-id", run_id)  # fmt: skip
        set_paused(served.port, served.token, False, dag_id=MAINTENANCE_DAG)
        state = wait_for_run(served, run_id, dag_id=MAINTENANCE_DAG)
        run_seconds = time.monotonic() - run_started
        rows = served.read(
            "select ti.task_id, ti.state, ti.external_executor_id, ti.queue, j.job_type"
            " from task_instance ti left join job j on j.id = ti.queued_by_job_id where ti.dag_id = ? and ti.run_id = ?",
            (MAINTENANCE_DAG, run_id),
        )
        print(f"\nCeleryExecutor: served in {served.startup_seconds:.1f} s; {MAINTENANCE_DAG} {RUN_DATE} ended {state}"
              f" after {run_seconds:.1f} s (trigger to end, {len(rows)} tasks)")  # fmt: skip
        assert state == "success", f"run ended {state}: {rows}\n{served.log_tails()}"
    # Read once the worker has stopped: it records a Celery task's end just after the Airflow task
    # has reported its own to the API server, so the run can be over before the last record.
    celery_results = dict(served.read("select task_id, status from celery_taskmeta"))
    return CeleryRun(
        state=state,
        tasks={task_id: tuple(rest) for task_id, *rest in rows},
        celery_results=celery_results,
        worker_log=served.logs["celery-worker"].read_text(errors="replace"),
        old_export=old_export,
        recent_export=recent_export,
        outlived=served.outlived,
    )


def test_the_celery_provider_imports_with_the_installed_celery() -> None:
    """Checked on its own, in a second, before the run: the provider imports names of Celery's
    internals (celery 5.7.0 dropped `celery.backends.database.retry`, which provider 3.26.0 imports),
    and a mismatch stops the scheduler and the worker at their start."""
    import celery

    try:
        import airflow.providers.celery.executors.celery_executor_utils  # noqa: F401
    except ImportError as error:
        pytest.fail(f"apache-airflow-providers-celery does not import with celery {celery.__version__}: {error}")


@needs_redis_server
def test_the_run_succeeds_with_every_task_queued_by_the_scheduler_on_the_celery_executor(celery_run: CeleryRun) -> None:
    assert celery_run.state == "success"
    assert set(celery_run.tasks) == MAINTENANCE_TASKS
    for task_id, (state, celery_task_id, queue, queued_by) in celery_run.tasks.items():
        assert state == "success", task_id
        assert queued_by == "SchedulerJob", task_id
        assert queue == "default", task_id
        assert celery_task_id, f"{task_id} was never handed to Celery"


@needs_redis_server
def test_each_task_was_received_by_the_worker_and_its_result_stored_in_the_result_backend(celery_run: CeleryRun) -> None:
    received = set(RECEIVED.findall(celery_run.worker_log))
    for task_id, (_, celery_task_id, *_) in celery_run.tasks.items():
        assert celery_task_id in received, f"{task_id} ({celery_task_id}) not in the worker's log:\n{celery_run.worker_log[-3000:]}"
        assert celery_run.celery_results.get(celery_task_id) == "SUCCESS", task_id


@needs_redis_server
def test_the_tasks_on_the_worker_did_their_work_with_the_served_environment(celery_run: CeleryRun) -> None:
    assert not celery_run.old_export.exists(), "prune_files kept an export past its retention"
    assert celery_run.recent_export.exists()


@needs_redis_server
def test_every_process_stopped_with_its_component(celery_run: CeleryRun) -> None:
    assert not celery_run.outlived, f"processes outlived the Airflow components and were killed: {celery_run.outlived}"

