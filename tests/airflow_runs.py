"""Running crm_daily as users do, for the end-to-end tests: `crmw run`, and serving Airflow with
`crmw airflow` (API server, scheduler with its LocalExecutor, DAG processor, triggerer), for a test
to use while it is up (`served_airflow`: the browser tests) or to run one triggered run through the
API (`run_served`).

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
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from crmw.airflow_runner import DAG_ID, airflow_environment
from simulator import SimulationSettings, simulate

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 180
PARSE_TIMEOUT = 120
# A guard against a hung run, not a speed check: the end-to-end tests' run on PostgreSQL took 649 s
# from start to stop in `make test` on two cores (540 s with one other test file beside it).
RUN_TIMEOUT = 1800
STOP_TIMEOUT = 90  # crmw airflow bounds its own stop at about a minute
# What a test that runs it may take in all: serving, parsing, the run and stopping, with slack.
SERVED_RUN_TIMEOUT = STARTUP_TIMEOUT + PARSE_TIMEOUT + RUN_TIMEOUT + 2 * STOP_TIMEOUT + 300
LOGIN_LINE = re.compile(r"crmw: Airflow UI at http://localhost:(\d+) \S+ user admin / password (\S+)")


@dataclass
class ServedRun:
    """What one triggered run left: its state, its tasks as the metadata DB has them, the runs the
    CLI lists, the server's output, and how serving and stopping went."""

    run_id: str
    state: str | None
    tasks: list[tuple]  # (task_id, state, pool, job_type that queued it, operator), by start
    runs: list[dict]
    log: str
    startup_seconds: float
    run_seconds: float
    login: tuple[str, str] = ("", "")  # (port, password) from the banner
    generated_password: str = ""
    port: int = 0
    server_exit: int | None = None
    outlived: dict[int, str] = field(default_factory=dict)

    def failed_tasks(self) -> list[str]:
        # A past logical date is a backfill: its source-freshness check is skipped, not failed.
        return [task for task, state, *_ in self.tasks
                if state != "success" and (task, state) != ("source_freshness", "skipped")]  # fmt: skip


def simulate_clean_sources(folder: Path, start: dt.date, days: int) -> Path:
    """400 simulated customers from `start` for `days`, without dirty rows: the end-to-end tests' sources."""
    out = folder / "sources"
    simulate(SimulationSettings(customers=400, start=start, days=days, seed=11, out=out, dirty_rate=0.0))
    return out


def export_dir(warehouse_url: str, sources: Path) -> Path:
    """Each engine's files for other tools in a folder of its own."""
    return sources.parent / f"exports_{warehouse_url.split(':')[0]}"


def crmw(warehouse_url: str, sources: Path, airflow_home: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the crmw CLI on a warehouse and sources with the tests' Airflow home, without retries."""
    env = {
        **os.environ,
        "WAREHOUSE_URL": warehouse_url,
        "CRMW_SOURCE_DIR": str(sources),
        "AIRFLOW_HOME": str(airflow_home),
        "CRMW_TASK_RETRIES": "0",
        "CRMW_EXPORT_DIR": str(export_dir(warehouse_url, sources)),
    }
    return subprocess.run([str(BIN / "crmw"), *args], env=env, capture_output=True, text=True)


def task_states(airflow_home: Path, logical_date: dt.date) -> dict[str, str | None]:
    """Each task's state in the last DAG run of `logical_date`, read from Airflow's metadata DB."""
    return dict(metadata(
        airflow_home,
        "select ti.task_id, ti.state from task_instance ti join dag_run dr"
        " on dr.dag_id = ti.dag_id and dr.run_id = ti.run_id"
        " where dr.id = (select max(id) from dag_run where dag_id = ? and logical_date like ?)",
        (DAG_ID, f"{logical_date.isoformat()}%"),
    ))


def task_result(airflow_home: Path, logical_date: dt.date, task_id: str):
    """What a task returned (its XCom) in the last DAG run of `logical_date`, decoded."""
    [(value,)] = metadata(
        airflow_home,
        "select value from xcom where dag_id = ? and task_id = ? and key = 'return_value'"
        " and dag_run_id = (select max(id) from dag_run where dag_id = ? and logical_date like ?)",
        (DAG_ID, task_id, DAG_ID, f"{logical_date.isoformat()}%"),
    )
    return json.loads(value)


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


@dataclass
class ServedAirflow:
    """A `crmw airflow` serving from a folder, for a test to use while it runs: where it listens, the
    login from its banner, a token for its API, and, once stopped, how it stopped."""

    process: subprocess.Popen
    home: Path
    env: dict[str, str]  # what `crmw airflow` hands to Airflow, for our CLI calls
    port: int
    log_path: Path
    startup_seconds: float = 0.0
    login: tuple[str, str] = ("", "")  # (port, password) from the banner
    generated_password: str = ""
    token: str = ""
    exit_code: int | None = None
    outlived: dict[int, str] = field(default_factory=dict)

    def assert_running(self) -> None:
        assert self.process.poll() is None, f"crmw airflow exited {self.process.returncode}:\n{log_tail(self.log_path)}"


@contextmanager
def served_airflow(settings: dict[str, str], folder: Path) -> Iterator[ServedAirflow]:
    """Serve Airflow with `crmw airflow` from `folder` (its AIRFLOW_HOME and log) until the block
    ends, then stop it as Ctrl-C would. Yields once the login line is printed, the API answers and
    crm_daily is parsed. `settings` (WAREHOUSE_URL, CRMW_* ...) go over an environment cleared of
    Airflow's and crmw's variables."""
    home = folder / "airflow"
    port = free_loopback_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CRMW_"))}
    base.update(
        {
            "AIRFLOW_HOME": str(home),
            **settings,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            # The scheduler's and triggerer's log servers cannot be told an address (Airflow binds them
            # to all interfaces); at least keep them off the default ports another Airflow may hold.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_loopback_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_loopback_port()),
            # An idle scheduler loop sleeps 1 s by default, so each of the run's 126 tasks waited about
            # half a second to be queued (66 s of a 238 s run on DuckDB's one-slot pool).
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",
            # No run from the daily schedule: unpausing crm_daily would otherwise start today's run
            # right after the triggered one, on the warehouse the tests then read. Triggered runs
            # still run (Airflow's [scheduler] use_job_schedule).
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "NO_COLOR": "1",
        }
    )
    env = airflow_environment(base)
    log = folder / "crmw-airflow.log"

    started = time.monotonic()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "crmw"), "airflow"], env=base, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    served = ServedAirflow(process=server, home=home, env=env, port=port, log_path=log)
    try:
        # 1. Served: the login line is printed and the API answers.
        login = None
        while time.monotonic() - started < STARTUP_TIMEOUT:
            served.assert_running()
            login = login or LOGIN_LINE.search(log.read_text(errors="replace"))
            if login and api_healthy(port):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"no login line / API after {STARTUP_TIMEOUT} s (login={bool(login)}):\n{log_tail(log)}")
        served.startup_seconds = time.monotonic() - started
        served.login = (login.group(1), login.group(2))
        served.generated_password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        served.token = api(port, "POST", "/auth/token", {"username": "admin", "password": login.group(2)})["access_token"]

        # 2. The DAG processor has stored crm_daily (and it imports cleanly).
        deadline = time.monotonic() + PARSE_TIMEOUT
        while not metadata(home, "select 1 from serialized_dag where dag_id = ?", (DAG_ID,)):
            errors = metadata(home, "select filename, stacktrace from import_error")
            assert not errors, f"DAG import errors: {errors}"
            assert time.monotonic() < deadline, f"{DAG_ID} not parsed after {PARSE_TIMEOUT} s:\n{log_tail(log)}"
            time.sleep(2)
        yield served
    finally:
        stopping = time.monotonic()
        served.outlived = stop_server(server, home)
        served.exit_code = server.returncode
        print(f"crmw airflow: stopped in {time.monotonic() - stopping:.1f} s (exit {server.returncode})")


def wait_for_run(served: ServedAirflow, run_id: str) -> str | None:
    """The state DAG run `run_id` of crm_daily ended in (None if it never showed up), once it is
    over or after RUN_TIMEOUT."""
    state = None
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        served.assert_running()
        rows = metadata(served.home, "select state from dag_run where dag_id = ? and run_id = ?", (DAG_ID, run_id))
        state = rows[0][0] if rows else None
        if state in ("success", "failed"):
            break
        time.sleep(1)
    return state


def run_tasks(served: ServedAirflow, run_id: str) -> list[tuple]:
    """Each task of DAG run `run_id`, by start: (task_id, state, pool, job_type that queued it, operator)."""
    return metadata(
        served.home,
        "select ti.task_id, ti.state, ti.pool, j.job_type, ti.operator"
        " from task_instance ti left join job j on j.id = ti.queued_by_job_id"
        " where ti.dag_id = ? and ti.run_id = ? order by ti.start_date",
        (DAG_ID, run_id),
    )


def run_served(settings: dict[str, str], folder: Path, logical_date: dt.date, conf: dict) -> ServedRun:
    """Serve Airflow with `crmw airflow` from `folder` (`served_airflow`), trigger one crm_daily run
    for `logical_date` with `conf`, wait for it to end, and stop the server as Ctrl-C would."""
    run_id = f"served__{logical_date.isoformat()}"
    run = ServedRun(run_id=run_id, state=None, tasks=[], runs=[], log="", startup_seconds=0.0, run_seconds=0.0)
    with served_airflow(settings, folder) as served:
        run.port, run.startup_seconds, run.login = served.port, served.startup_seconds, served.login
        run.generated_password = served.generated_password

        # 3. Trigger while still paused (the run waits queued), then unpause through the API, with
        #    the login from the banner.
        run_started = time.monotonic()
        airflow_cli(
            served.env, "dags", "trigger", DAG_ID, "--logical-date", f"{logical_date.isoformat()}T00:00:00+00:00",
            "--run-id", run_id, "--conf", json.dumps(conf), "--output", "json",
        )  # fmt: skip
        set_paused(served.port, served.token, False)

        # 4. The scheduler runs it to the end.
        run.state = wait_for_run(served, run_id)
        run.run_seconds = time.monotonic() - run_started

        listing = [line for line in airflow_cli(served.env, "dags", "list-runs", DAG_ID, "--output", "json").splitlines()
                   if line.startswith("[{")]  # fmt: skip
        run.runs = json.loads(listing[-1]) if listing else []
        run.tasks = run_tasks(served, run_id)
        print(f"\ncrmw airflow: served in {run.startup_seconds:.1f} s; {DAG_ID} {logical_date} ended {run.state}"
              f" after {run.run_seconds:.1f} s (trigger to end, {len(run.tasks)} tasks)")  # fmt: skip
        assert run.state == "success", f"run ended {run.state}; tasks not successful: {run.failed_tasks()}\n{log_tail(served.log_path)}"
    run.outlived, run.server_exit = served.outlived, served.exit_code
    run.log = served.log_path.read_text(errors="replace")
    return run
