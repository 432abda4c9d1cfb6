"""crm_daily on PostgreSQL as a team serves it: a run triggered in `crmw airflow`, picked up by the
real scheduler and executed by its LocalExecutor, several tasks at a time in the warehouse_writer
pool. Its outputs match counts and sums computed straight from the source files and equal the
DuckDB run's of test_dag_end_to_end.py (made once for all test workers). A file of its own so that
a test worker runs it beside that file's DuckDB runs instead of after them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from crmw.airflow_runner import WAREHOUSE_POOL
from tests.airflow_runs import SERVED_RUN_TIMEOUT
from tests.test_dag_end_to_end import (  # noqa: F401 (dag_run and sources are fixtures)
    RUN_DATE, _run_sources, _served, assert_outputs_match_the_sources, dag_run, outputs, sources,
)

pytestmark = pytest.mark.airflow


@pytest.mark.timeout(SERVED_RUN_TIMEOUT)
def test_dag_outputs_match_counts_and_sums_from_the_sources(dag_run) -> None:
    assert_outputs_match_the_sources(dag_run("postgres"), _run_sources["postgres"])


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
