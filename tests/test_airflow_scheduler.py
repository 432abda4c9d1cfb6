"""`crmw airflow` serves a working Airflow: a run of crm_daily triggered in it is picked up by the real
scheduler, executed by the LocalExecutor (not `airflow dags test`), every task takes a slot of the
warehouse_writer pool, and the run records each model's run for its logical date.

The API server listens on a free 127.0.0.1 port and is the only address contacted. The scheduler's and
triggerer's log servers bind all interfaces whatever the configuration (Airflow's choice); they get free
ports here so as not to clash with another Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import duckdb
import pytest

from crmw.airflow_runner import DAG_ID, WAREHOUSE_POOL, airflow_environment
from ml_tasks.registry import MODELS

pytestmark = pytest.mark.airflow

BIN = Path(sys.executable).parent
START, DAYS = dt.date(2025, 1, 1), 10
LOGICAL_DATE = dt.date(2025, 1, 10)
RUN_ID = f"test_scheduler__{LOGICAL_DATE.isoformat()}"
STARTUP_TIMEOUT = 180
PARSE_TIMEOUT = 120
# A guard against a hung run, not a speed check: quiet, the run takes about 165 s (122 tasks one at
# a time in DuckDB's one-slot pool; 340 s before the model params were grouped and the scheduler's
# idle sleep shortened); with other work on the two cores, twice that, and `make test` runs another
# test file beside it (the whole test: 282 s alone, 587 s so). Kept wide, the test's own time limit
# too (the suite's 900 s would cut it first).
RUN_TIMEOUT = 1500
STOP_TIMEOUT = 90  # crmw airflow bounds its own stop at about a minute
LOGIN_LINE = re.compile(r"crmw: Airflow UI at http://localhost:(\d+) \S+ user admin / password (\S+)")


def free_loopback_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_cli(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    """Run the airflow CLI with the served Airflow's environment; retry when SQLite is busy."""
    for attempt in range(4):
        result = subprocess.run(
            [str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode == 0:
            return result.stdout
        if "database is locked" not in result.stdout + result.stderr or attempt == 3:
            raise AssertionError(
                f"airflow {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        time.sleep(2)
    raise AssertionError("unreachable")


def metadata(home: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the Airflow metadata DB (SQLite) without writing to it."""
    with closing(sqlite3.connect(f"file:{home / 'airflow.db'}?mode=ro", uri=True, timeout=30)) as db:
        return db.execute(sql, params).fetchall()


def api_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def api(port: int, method: str, path: str, body: dict, token: str | None = None) -> dict:
    """Call the served API on 127.0.0.1 with a JSON body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method=method,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def set_paused(port: int, token: str, paused: bool) -> None:
    answer = api(port, "PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": paused}, token)
    assert answer["is_paused"] is paused, answer


def log_tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def processes_of(home: Path, session: int) -> dict[int, str]:
    """Live processes in the server's session or started with its AIRFLOW_HOME, by pid."""
    marker = f"AIRFLOW_HOME={home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            state, sid = fields[0], int(fields[3])
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if state != "Z" and (sid == session or marker in environ):
            found[int(entry.name)] = cmdline
    return found


def stop_server(process: subprocess.Popen, home: Path) -> dict[int, str]:
    """SIGINT to `crmw airflow`, as Ctrl-C would; kill what is left. Returns processes that outlived it."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10
    while (left := processes_of(home, process.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if process.poll() is None or left:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(10)
    return left


@pytest.mark.timeout(STARTUP_TIMEOUT + PARSE_TIMEOUT + RUN_TIMEOUT + 2 * STOP_TIMEOUT + 300)
def test_triggered_run_succeeds_under_scheduler(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    home = tmp_path / "airflow"
    warehouse = tmp_path / "wh.duckdb"
    subprocess.run(
        [str(BIN / "crmw"), "simulate", "--customers", "80", "--start", START.isoformat(),
         "--days", str(DAYS), "--seed", "3", "--out", str(sources)],
        check=True, capture_output=True,
    )  # fmt: skip

    port = free_loopback_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CRMW_"))}
    base.update(
        {
            "AIRFLOW_HOME": str(home),
            "WAREHOUSE_URL": f"duckdb:///{warehouse}",
            "CRMW_SOURCE_DIR": str(sources),
            "CRMW_TASK_RETRIES": "0",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            # The scheduler's and triggerer's log servers cannot be told an address (Airflow binds them
            # to all interfaces); at least keep them off the default ports another Airflow may hold.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_loopback_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_loopback_port()),
            # An idle scheduler loop sleeps 1 s by default, so each of the run's 122 tasks, one at a time
            # in the one-slot pool, waited about half a second to be queued (66 s of a 238 s run).
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",
            "NO_COLOR": "1",
        }
    )
    env = airflow_environment(base)  # what `crmw airflow` hands to Airflow, for our CLI calls
    log = tmp_path / "crmw-airflow.log"

    started = time.monotonic()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "crmw"), "airflow"], env=base, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    outlived: dict[int, str] = {}
    try:
        # 1. Served: the login line is printed and the API answers.
        login = None
        while time.monotonic() - started < STARTUP_TIMEOUT:
            assert server.poll() is None, f"crmw airflow exited {server.returncode}:\n{log_tail(log)}"
            login = login or LOGIN_LINE.search(log.read_text(errors="replace"))
            if login and api_healthy(port):
                break
            time.sleep(1)
        else:
            pytest.fail(f"no login line / API after {STARTUP_TIMEOUT} s (login={bool(login)}):\n{log_tail(log)}")
        startup = time.monotonic() - started
        generated = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
        assert login.group(1) == str(port)
        assert login.group(2) == generated["admin"]
        token = api(port, "POST", "/auth/token", {"username": "admin", "password": login.group(2)})["access_token"]

        # 2. The DAG processor has stored crm_daily (and it imports cleanly).
        deadline = time.monotonic() + PARSE_TIMEOUT
        while not metadata(home, "select 1 from serialized_dag where dag_id = ?", (DAG_ID,)):
            errors = metadata(home, "select filename, stacktrace from import_error")
            assert not errors, f"DAG import errors: {errors}"
            assert time.monotonic() < deadline, f"{DAG_ID} not parsed after {PARSE_TIMEOUT} s:\n{log_tail(log)}"
            time.sleep(2)

        # 3. Trigger while still paused (the run waits queued), then unpause. Unpausing a @daily DAG
        #    (catchup off) also makes the scheduler create a run for today, which would start first,
        #    unless the DAG is known to be at max_active_runs=1: wait for the DAG processor to record
        #    that. The login from the banner is the one the API takes.
        run_started = time.monotonic()
        airflow_cli(
            env, "dags", "trigger", DAG_ID, "--logical-date", f"{LOGICAL_DATE.isoformat()}T00:00:00+00:00",
            "--run-id", RUN_ID, "--output", "json",
        )  # fmt: skip
        deadline = time.monotonic() + 2 * 30 + 60  # two of the DAG processor's re-parses (every 30 s) and slack
        while time.monotonic() < deadline and not metadata(
            home, "select 1 from dag where dag_id = ? and exceeds_max_non_backfill", (DAG_ID,)
        ):
            time.sleep(1)
        set_paused(port, token, False)

        # 4. The scheduler runs it to the end.
        deadline = time.monotonic() + RUN_TIMEOUT
        state = None
        while time.monotonic() < deadline:
            assert server.poll() is None, f"crmw airflow exited {server.returncode}:\n{log_tail(log)}"
            rows = metadata(home, "select state from dag_run where dag_id = ? and run_id = ?", (DAG_ID, RUN_ID))
            state = rows[0][0] if rows else None
            if state in ("success", "failed"):
                break
            time.sleep(1)
        run_seconds = time.monotonic() - run_started
        # Right after our run ends the scheduler starts today's scheduled run; hold it as soon as we can.
        set_paused(port, token, True)

        listing = [line for line in airflow_cli(env, "dags", "list-runs", DAG_ID, "--output", "json").splitlines()
                   if line.startswith("[{")]  # fmt: skip
        runs = json.loads(listing[-1]) if listing else []
        tasks = metadata(
            home,
            "select ti.task_id, ti.state, ti.pool, j.job_type, ti.operator"
            " from task_instance ti left join job j on j.id = ti.queued_by_job_id"
            " where ti.dag_id = ? and ti.run_id = ? order by ti.start_date",
            (DAG_ID, RUN_ID),
        )
        print(f"\ncrmw airflow: served in {startup:.1f} s; {DAG_ID} {LOGICAL_DATE} ended {state} after {run_seconds:.1f} s"
              f" (trigger to end, {len(tasks)} tasks)")  # fmt: skip
        print("runs:", [(run["run_id"], run["state"]) for run in runs])
        # A past logical date is a backfill: its source-freshness check is skipped, not failed.
        failed = [task for task, ti_state, *_ in tasks if ti_state != "success"
                  and (task, ti_state) != ("source_freshness", "skipped")]  # fmt: skip
        assert state == "success", f"run ended {state}; tasks not successful: {failed}\n{log_tail(log)}"
    finally:
        stopping = time.monotonic()
        outlived = stop_server(server, home)
        print(f"crmw airflow: stopped in {time.monotonic() - stopping:.1f} s (exit {server.returncode})")

    assert not outlived, f"processes outlived `crmw airflow` and were killed: {outlived}"
    assert server.returncode == 0, f"crmw airflow exited {server.returncode}:\n{log_tail(log)}"
    assert [(run["run_id"], run["state"]) for run in runs if run["run_id"] == RUN_ID] == [(RUN_ID, "success")]
    assert str(runs[[run["run_id"] for run in runs].index(RUN_ID)]["logical_date"]).startswith(LOGICAL_DATE.isoformat())

    # Queued by the scheduler, executed by its LocalExecutor, every task that ran in the writer pool.
    assert tasks and not failed
    # The scheduler completes an EmptyOperator (Cosmos' end-of-build marker) without running it.
    executed = [(task, state, pool, job) for task, state, pool, job, operator in tasks
                if state == "success" and operator != "EmptyOperator"]  # fmt: skip
    assert {job_type for *_, job_type in executed} == {"SchedulerJob"}
    assert {pool for _, _, pool, _ in executed} == {WAREHOUSE_POOL}
    enqueued_local = set()
    for batch in re.findall(r"Trying to enqueue tasks: \[(.*?)\] for executor: LocalExecutor\(", log.read_text(errors="replace")):
        enqueued_local.update(re.findall(rf"<TaskInstance: {DAG_ID}\.(\S+) {RUN_ID} ", batch))
    assert enqueued_local == {task for task, *_ in executed}

    # Ten days of history are too little to fit the models: each records so for the logical date and
    # publishes its tables empty, with their columns.
    with closing(duckdb.connect(str(warehouse), read_only=True)) as db:
        runs = db.execute(
            "select model_name, status from ml.model_runs where as_of_date = ? order by 1", [LOGICAL_DATE]
        ).fetchall()
        segment_columns = db.execute(
            "select count(*) from information_schema.columns where table_schema = 'ml' and table_name = 'customer_segments'"
        ).fetchone()[0]
    assert runs == sorted((spec.name, "insufficient_data") for spec in MODELS)
    assert segment_columns > 3
