"""Running crm_daily as users do, for the end-to-end tests: `crmw run`, and serving Airflow with
`crmw airflow` (API server, scheduler with its LocalExecutor, DAG processor, triggerer), for a test
to use while it is up (`served_airflow`: the browser tests) or to run one triggered run through the
API (`run_served`). `served_airflow` also serves Airflow on the CeleryExecutor, which `crmw airflow`
cannot (its `airflow standalone` forces a local executor): each component as a process of its own,
as a deployment runs them, and a Celery worker beside them.

The API server listens on a free 127.0.0.1 port and is the only address contacted. The scheduler's and
triggerer's log servers bind all interfaces whatever the configuration (Airflow's choice); they get free
ports here so as not to clash with another Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
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
from urllib.parse import urlsplit, urlunsplit

from crmw.airflow_runner import DAG_ID, airflow_environment, prepare_airflow
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
LOCAL_EXECUTOR, CELERY_EXECUTOR = "LocalExecutor", "CeleryExecutor"
# What serves Airflow on the CeleryExecutor, each `airflow <command>` a process: the API server
# first, since a test reaches Airflow through it, and the Celery worker that runs the tasks.
CELERY_COMPONENTS = {
    "api-server": ("api-server",),
    "scheduler": ("scheduler",),
    "dag-processor": ("dag-processor",),
    "celery-worker": ("celery", "worker"),
}
# Stopped in this order: the scheduler queues nothing more, the worker finishes what it runs while
# the API server still takes its tasks' reports, the API server last.
CELERY_STOP_ORDER = ("scheduler", "celery-worker", "dag-processor", "api-server")


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


def read_metadata(env: dict[str, str], sql: str, params: tuple = ()) -> list[tuple]:
    """Read the metadata DB that `env` names, SQLite or PostgreSQL, with `?` placeholders."""
    url = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    if url.scheme.startswith("sqlite"):
        return metadata(Path(env["AIRFLOW_HOME"]), sql, params)
    import psycopg

    # psycopg's placeholder is %s; the queries here are written once, in sqlite3's style.
    with psycopg.connect(urlunsplit(url._replace(scheme="postgresql")), autocommit=True) as db:
        return db.execute(sql.replace("?", "%s"), params).fetchall()


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


def set_paused(port: int, token: str, paused: bool, dag_id: str = DAG_ID) -> None:
    answer = api(port, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused}, token)
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


def kill_leftovers(processes: list[subprocess.Popen], home: Path) -> dict[int, str]:
    """Kill whatever is left of `processes` (each the leader of its session) and of any process
    started with their AIRFLOW_HOME; returns what had to be killed, by pid."""
    deadline = time.monotonic() + 10
    while (left := {pid: cmd for process in processes for pid, cmd in processes_of(home, process.pid).items()}) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    for process in processes:
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
    for process in processes:
        process.wait(10)
    return left


def stop_components(processes: dict[str, subprocess.Popen], home: Path) -> dict[int, str]:
    """SIGTERM to each Airflow component in CELERY_STOP_ORDER, each given STOP_TIMEOUT to end (the
    Celery worker's warm shutdown lets its running tasks finish); kill what is left. Returns the
    processes that outlived them."""
    for name in CELERY_STOP_ORDER:
        process = processes[name]
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
    return kill_leftovers(list(processes.values()), home)


def stop_server(process: subprocess.Popen, home: Path) -> dict[int, str]:
    """SIGINT to `crmw airflow`, as Ctrl-C would; kill what is left. Returns processes that outlived it."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    return kill_leftovers([process], home)


@dataclass
class ServedAirflow:
    """Airflow serving from a folder, for a test to use while it runs: where it listens, the login,
    a token for its API, and, once stopped, how it stopped. Served by `crmw airflow` on the
    LocalExecutor, or by one process per component on the CeleryExecutor."""

    processes: dict[str, subprocess.Popen]  # `crmw airflow`, or each component, the API server first
    logs: dict[str, Path]  # the output of each, by the same names
    home: Path
    env: dict[str, str]  # what Airflow is run with, for our CLI calls
    port: int
    startup_seconds: float = 0.0
    login: tuple[str, str] = ("", "")  # (port, password) from the banner, or from the passwords file
    generated_password: str = ""
    token: str = ""
    exit_code: int | None = None  # of `crmw airflow`, or of the API server
    outlived: dict[int, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return next(iter(self.logs.values()))

    def assert_running(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} exited {process.returncode}:\n{log_tail(self.logs[name])}"

    def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read its metadata DB (`read_metadata`)."""
        return read_metadata(self.env, sql, params)

    def log_tails(self) -> str:
        return "\n".join(f"--- {name}:\n{log_tail(path)}" for name, path in self.logs.items())


def _generated_password(passwords: Path) -> str:
    """The admin's password from the auth manager's generated file; empty until it is written whole."""
    try:
        return json.loads(passwords.read_text())["admin"]
    except (OSError, ValueError, KeyError):
        return ""


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `command` in a session of its own (so that what it starts can be found and stopped),
    its output going to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip


@contextmanager
def served_airflow(settings: dict[str, str], folder: Path, executor: str = LOCAL_EXECUTOR,
                   dag_id: str = DAG_ID) -> Iterator[ServedAirflow]:
    """Serve Airflow from `folder` (its AIRFLOW_HOME and logs) until the block ends, then stop it.
    Yields once it is served (the login is known, the API answers) and `dag_id` is parsed.
    `settings` (WAREHOUSE_URL, CRMW_* ...) go over an environment cleared of Airflow's and crmw's
    variables.

    On the LocalExecutor it is `crmw airflow`, stopped as Ctrl-C would. On the CeleryExecutor
    (`settings` name the broker, the result backend and a metadata DB other than SQLite, which that
    executor refuses) it is CELERY_COMPONENTS, after the metadata DB and pool are prepared as
    `crmw airflow` does, stopped by `stop_components`."""
    assert executor in (LOCAL_EXECUTOR, CELERY_EXECUTOR), executor
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
            # half a second to be queued (66 s of a 238 s run on DuckDB's one-slot pool). Not less than
            # half a second: each loop costs ~15 ms of CPU, and at 0.1 s an idle Airflow took 10 CPU
            # seconds a minute (2 at 1 s), taken from the tests running beside it on two cores.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            # No run from the daily schedule: unpausing crm_daily would otherwise start today's run
            # right after the triggered one, on the warehouse the tests then read. Triggered runs
            # still run (Airflow's [scheduler] use_job_schedule).
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "NO_COLOR": "1",
            "AIRFLOW__CORE__EXECUTOR": executor,
        }
    )
    env = airflow_environment(base)
    passwords = home / "simple_auth_manager_passwords.json.generated"

    started = time.monotonic()
    if executor == LOCAL_EXECUTOR:
        log = folder / "crmw-airflow.log"
        served = ServedAirflow(processes={"crmw airflow": _start([str(BIN / "crmw"), "airflow"], base, log)},
                               logs={"crmw airflow": log}, home=home, env=env, port=port)  # fmt: skip
    else:
        # The scheduler signs each task's token for the Execution API and the API server checks it:
        # run apart, each would make up a secret of its own (`airflow standalone` shares one).
        env["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_urlsafe(32)
        prepare_airflow(env)
        logs = {name: folder / f"airflow-{name}.log" for name in CELERY_COMPONENTS}
        processes = {name: _start([str(BIN / "airflow"), *command], env, logs[name]) for name, command in CELERY_COMPONENTS.items()}
        served = ServedAirflow(processes=processes, logs=logs, home=home, env=env, port=port)
    try:
        # 1. Served: the login is known (from the banner of `crmw airflow`, else from the file the
        #    API server writes it to) and the API answers.
        login = None
        while time.monotonic() - started < STARTUP_TIMEOUT:
            served.assert_running()
            if login is None and executor == LOCAL_EXECUTOR:
                if match := LOGIN_LINE.search(served.log_path.read_text(errors="replace")):
                    login = (match.group(1), match.group(2))
            elif login is None and (password := _generated_password(passwords)):
                login = (str(port), password)
            if login and api_healthy(port):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"no login / API after {STARTUP_TIMEOUT} s (login={bool(login)}):\n{served.log_tails()}")
        served.startup_seconds = time.monotonic() - started
        served.login = login
        served.generated_password = _generated_password(passwords)
        served.token = api(port, "POST", "/auth/token", {"username": "admin", "password": login[1]})["access_token"]

        # 2. The DAG processor has stored the DAG (and it imports cleanly).
        deadline = time.monotonic() + PARSE_TIMEOUT
        while not served.read("select 1 from serialized_dag where dag_id = ?", (dag_id,)):
            errors = served.read("select filename, stacktrace from import_error")
            assert not errors, f"DAG import errors: {errors}"
            assert time.monotonic() < deadline, f"{dag_id} not parsed after {PARSE_TIMEOUT} s:\n{served.log_tails()}"
            time.sleep(2)
        yield served
    finally:
        stopping = time.monotonic()
        first = next(iter(served.processes.values()))
        if executor == LOCAL_EXECUTOR:
            served.outlived = stop_server(first, home)
        else:
            served.outlived = stop_components(served.processes, home)
        served.exit_code = first.returncode
        print(f"{', '.join(served.processes)}: stopped in {time.monotonic() - stopping:.1f} s (exit {first.returncode})")


def wait_for_run(served: ServedAirflow, run_id: str, dag_id: str = DAG_ID) -> str | None:
    """The state DAG run `run_id` of `dag_id` ended in (None if it never showed up), once it is
    over or after RUN_TIMEOUT."""
    state = None
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        served.assert_running()
        rows = served.read("select state from dag_run where dag_id = ? and run_id = ?", (dag_id, run_id))
        state = rows[0][0] if rows else None
        if state in ("success", "failed"):
            break
        time.sleep(1)
    return state


def run_tasks(served: ServedAirflow, run_id: str, dag_id: str = DAG_ID) -> list[tuple]:
    """Each task of DAG run `run_id`, by start: (task_id, state, pool, job_type that queued it, operator)."""
    return served.read(
        "select ti.task_id, ti.state, ti.pool, j.job_type, ti.operator"
        " from task_instance ti left join job j on j.id = ti.queued_by_job_id"
        " where ti.dag_id = ? and ti.run_id = ? order by ti.start_date",
        (dag_id, run_id),
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
