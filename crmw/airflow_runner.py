"""Run Airflow for this project: its environment, its metadata DB and pool, and DAG runs.

`crmw run` and `crmw airflow` both go through here, so a DAG run from the command line and one
from the scheduler see the same DAG folder, warehouse and pool.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

from extract_load.load import DEFAULT_SOURCE_DIR
from warehouse import PROJECT_ROOT, parse_warehouse_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DAG_ID = "crm_daily"
WAREHOUSE_POOL = "warehouse_writer"
# Stopping waits this long for running tasks, then for standalone's own shutdown, before it
# ends whatever is left: `crmw airflow` always stops within about a minute.
_SCHEDULER_GRACE_SECONDS = 25
_STANDALONE_GRACE_SECONDS = 20
# A traceback's last line, e.g. "extract_load.load.ExtractError: source crm.customers: ..."
_EXCEPTION_LINE = re.compile(r"^\s*[\w.]*(Error|Exception): ")


class RunError(RuntimeError):
    """A step of `crmw run` failed; the message says which and where to look."""


def airflow_environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` plus this project's Airflow settings; settings already in `base` win.

    WAREHOUSE_URL, CRMW_SOURCE_DIR and CRMW_EXPORT_DIR are made absolute, since dbt runs in a copy
    of the project and tasks in folders of their own.
    """
    env = dict(base)
    warehouse = parse_warehouse_url(env.get("WAREHOUSE_URL"))
    env["WAREHOUSE_URL"] = warehouse.url
    env["CRMW_SOURCE_DIR"] = str(Path(env.get("CRMW_SOURCE_DIR") or DEFAULT_SOURCE_DIR).resolve())
    if env.get("CRMW_EXPORT_DIR"):
        env["CRMW_EXPORT_DIR"] = str(Path(env["CRMW_EXPORT_DIR"]).resolve())
    home = Path(env.setdefault("AIRFLOW_HOME", str(PROJECT_ROOT / ".local" / "airflow"))).resolve()
    env["AIRFLOW_HOME"] = str(home)
    defaults = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # Two cores here: more parallel tasks only queue behind the one-slot DuckDB pool.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        # The UI and API on this machine only: its login is the simple auth manager's, meant for
        # development. AIRFLOW__API__HOST=0.0.0.0 serves other machines.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # Cosmos reports usage to a web service by default; this machine has no network to spare.
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        # By default Cosmos' dbt producer rewrites a Variable holding every XCom it wrote so far at each
        # XCom it writes (quadratic: 50 of a 129 s build on the end-to-end tests' data). Off, the
        # statuses are still saved when the producer fails; only a killed producer loses them, and
        # each model's task then runs its model itself (README, "The dbt producer's XComs").
        "AIRFLOW__COSMOS__ENABLE_WATCHER_RELIABLE_RETRY": "False",
        # A task process tells the API server it started before running anything. On a busy two-core
        # machine that call once waited 37.5 s on the SQLite metadata DB, past the 5 s default: the task
        # failed unstarted, and the retried call was refused since the first had gone through after all.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "120",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    # Task processes report to the API server's execution API, which Airflow looks for on port 8080
    # unless told otherwise: point it at the port (and address) the API server actually uses.
    if not any(
        key in env
        for key in ("AIRFLOW__API__BASE_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__WORKERS__EXECUTION_API_SERVER_URL")
    ):
        host = env.get("AIRFLOW__API__HOST", "")
        host = "localhost" if host in ("", "0.0.0.0", "::") else f"[{host}]" if ":" in host else host
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://{host}:{env['AIRFLOW__API__PORT']}/execution/"
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    home.mkdir(parents=True, exist_ok=True)
    return env


def pool_slots(env: Mapping[str, str]) -> int:
    """One writer on a DuckDB file, and on a local Spark folder (its Derby metastore lets one
    process at a time open it); PostgreSQL takes CRMW_WAREHOUSE_POOL_SLOTS (default 4)."""
    if parse_warehouse_url(env["WAREHOUSE_URL"]).engine in ("duckdb", "spark"):
        return 1
    text = env.get("CRMW_WAREHOUSE_POOL_SLOTS", "4")
    if not text.isdigit() or int(text) < 1:
        raise RunError(f"CRMW_WAREHOUSE_POOL_SLOTS={text!r}: expected a positive whole number")
    return int(text)


@contextmanager
def warehouse_run_lock(env: Mapping[str, str], holder: str) -> Iterator[None]:
    """Hold the warehouse for one `crmw run`: while held, another run on it is refused at once
    with a RunError that names `holder` (what, which process, since when). Two runs at once would
    otherwise fight over the DuckDB file or replace each other's DAG run in Airflow's metadata.

    An OS lock (flock), so a run killed with kill -9 releases it. On DuckDB the lock file sits beside
    the warehouse file and on Spark inside the warehouse's folder, which catches runs from any Airflow
    home; on PostgreSQL it sits in AIRFLOW_HOME, named for the server and database.
    """
    import fcntl

    warehouse = parse_warehouse_url(env["WAREHOUSE_URL"])
    if warehouse.duckdb_path is not None:
        path = warehouse.duckdb_path.with_name(warehouse.duckdb_path.name + ".crmw-run.lock")
    elif warehouse.spark_folder is not None:
        path = warehouse.spark_folder / ".crmw-run.lock"
    else:
        _, _, location = warehouse.url.rpartition("@")  # server and database, never the password
        path = Path(env["AIRFLOW_HOME"]) / f"crmw-run-{sha256(location.encode()).hexdigest()[:16]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            running = lock.read().strip() or "another crmw run, starting"
            raise RunError(
                f"WAREHOUSE_URL={warehouse.redacted()!r} is in use by {running}; wait for it to end or stop it"
            ) from None
        lock.truncate(0)
        lock.write(holder)
        lock.flush()
        yield


# `airflow db migrate` then `airflow pools set`, in one process: each `airflow` command spends ~4 s
# importing Airflow before its work.
_PREPARE = """
import sys
from airflow.models.pool import Pool
from airflow.utils.db import upgradedb
from airflow.utils.providers_configuration_loader import providers_configuration_loaded

providers_configuration_loaded(upgradedb)()
Pool.create_or_update_pool(sys.argv[1], int(sys.argv[2]), sys.argv[3], include_deferred=False)
"""


def prepare_airflow(env: Mapping[str, str]) -> None:
    """Create or upgrade the metadata DB and size the warehouse pool."""
    result = subprocess.run(
        [sys.executable, "-c", _PREPARE, WAREHOUSE_POOL, str(pool_slots(env)), "Tasks that write the warehouse"],
        env=dict(env), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-15:])
        raise RunError(f"preparing Airflow's metadata DB and the {WAREHOUSE_POOL} pool failed (exit {result.returncode}):\n{tail}")


def run_dag(env: Mapping[str, str], dates: Sequence[dt.date], full_refresh: bool = False,
            params: Mapping[str, object] | None = None, retries: int = 0) -> None:
    """Run crm_daily through Airflow for each logical date, in order; stop at the first failure.
    With `full_refresh` the first date reloads every source from scratch, the next ones load
    their increments. `params` (DAG params such as model settings) apply to every date.

    Each task is retried `retries` times (the scheduled DAG keeps CRMW_TASK_RETRIES): someone at a
    terminal would otherwise wait through minutes of retry delays before seeing a failure."""
    prepare_airflow(env)
    run_env = {**env, "CRMW_TASK_RETRIES": str(retries)}
    for position, logical_date in enumerate(dates):
        started = time.monotonic()
        # One log per run, never overwritten: a rerun of the date keeps the earlier run's log.
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        log_path = Path(env["AIRFLOW_HOME"]) / "logs" / f"crmw-run-{DAG_ID}-{logical_date}-{stamp}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"crmw: running {DAG_ID} for {logical_date} (Airflow's output: {log_path}) ...", flush=True)
        run_params = {**(params or {}), **({"full_refresh": True} if full_refresh and position == 0 else {})}
        conf = ["--conf", json.dumps(run_params)] if run_params else []
        began = dt.datetime.now(dt.timezone.utc)
        exit_code, run_id = _run_reporting_tasks(run_env, ["dags", "test", DAG_ID, logical_date.isoformat(), *conf], log_path)
        state = _finish_run(env, run_id, began)
        if exit_code != 0 or state != "success":
            output = log_path.read_text(encoding="utf-8", errors="replace")
            errors = [line.strip() for line in output.splitlines() if _EXCEPTION_LINE.match(line)]
            cause = f"; last error: {errors[-1][:500]}" if errors else ""
            raise RunError(
                f"{DAG_ID} for {logical_date} ended {state or 'without a run'} (exit {exit_code}){cause};"
                f" Airflow's output is in {log_path}"
            )
        print(f"crmw: {DAG_ID} for {logical_date} succeeded in {time.monotonic() - started:.1f} s", flush=True)


# `airflow dags test` output: the run's id, each task's start and end, and its state updates in between.
_RUN_CREATED = re.compile(r"Created dag run\..* dagrun=<DagRun \S+ @ .*?: (\S+), state:")
_TASK_STARTED = re.compile(r"^(\S+) .*\[DAG TEST\] starting task_id=(\S+)")
_TASK_ENDED = re.compile(r"^(\S+) .*\[DAG TEST\] end task task_id=(\S+)")
_TASK_STATE = re.compile(r" new_state=(\w+)")
# (task id, state or None, when it got that state or None, whether it was ever run), per task of a DAG run.
_TaskStates = Sequence[tuple[str, str | None, dt.datetime | None, bool]]
# Airflow's task states that no longer change within a run.
_FINAL_STATES = {"success", "failed", "skipped", "upstream_failed", "removed"}


def _run_reporting_tasks(env: Mapping[str, str], args: Sequence[str], log_path: Path) -> tuple[int, str | None]:
    """Run `airflow *args` with its output going straight to `log_path` (so the log survives a kill -9
    of crmw), and print a line as each task starts and ends, with its state and duration. Returns the
    exit code and the id of the DAG run it created (None if it created none)."""
    from sqlalchemy import create_engine

    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=dict(env), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    metadata = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with log_path.open(encoding="utf-8", errors="replace") as output:
            report = _TaskReport(lambda run_id: _task_states(metadata, run_id))
            pending = ""
            while True:
                finished = process.poll() is not None
                pending += output.read()
                *lines, pending = pending.split("\n")
                for line in lines:
                    report.read(line)
                if finished:
                    report.finish()
                    return process.returncode, report.run_id
                time.sleep(0.5)
    finally:
        metadata.dispose()


def _task_states(metadata: Engine, run_id: str) -> _TaskStates:
    """Each task of DAG run `run_id` with its state, read from Airflow's metadata DB; nothing when
    the DB cannot be read just now (busy): the next read catches up."""
    from sqlalchemy import DateTime, String, text
    from sqlalchemy.exc import SQLAlchemyError

    query = text(
        "select task_id, state, end_date, try_number > 0 from task_instance where dag_id = :dag_id and run_id = :run_id"
    ).columns(task_id=String, state=String, end_date=DateTime)
    try:
        with metadata.connect() as connection:
            rows = connection.execute(query, {"dag_id": DAG_ID, "run_id": run_id}).all()
    except SQLAlchemyError:
        return []
    return [
        (task, state, ended and ended.replace(tzinfo=ended.tzinfo or dt.timezone.utc), bool(ran))
        for task, state, ended, ran in rows
    ]


class _TaskReport:
    """Turns `airflow dags test` output, a line at a time, into a progress line per task start and end.

    Tasks that are never run (skipped, or upstream_failed after a failure) leave no output there: their
    final state is read from Airflow's metadata (`task_states`, for a run id) whenever a task starts,
    and for all that are left once the run is over, so every task ends with one line."""

    def __init__(self, task_states: Callable[[str], _TaskStates]) -> None:
        self.task_states = task_states
        self.run_id: str | None = None
        self.started: dict[str, dt.datetime] = {}
        self.ended: set[str] = set()
        self.state = "ended"

    def read(self, line: str) -> None:
        if match := _RUN_CREATED.search(line):
            self.run_id = match[1]
        elif match := _TASK_STARTED.match(line):
            self._report_not_run(over=False)
            self.started[match[2]] = _timestamp(match[1])
            self.state = "ended"
            print(f"crmw:   {self.started[match[2]]:%H:%M:%S} start {match[2]}", flush=True)
        elif match := _TASK_STATE.search(line):
            self.state = match[1]
        elif (match := _TASK_ENDED.match(line)) and match[2] in self.started:
            self._print_end(match[2], self.state, _timestamp(match[1]))

    def finish(self) -> None:
        """The run is over: a line for each task that has none yet, in the order they ended."""
        self._report_not_run(over=True)

    def _report_not_run(self, over: bool) -> None:
        """A line for each task that has ended without being run; once the run is `over`, for each task
        still without an end line too (one cut short, or one never reached: "not run"). A task that
        was run is left to its own end line, which the output may not have reached yet."""
        if self.run_id is None:
            return
        never = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        for task, state, ended, ran in sorted(self.task_states(self.run_id), key=lambda row: (row[2] or never, row[0])):
            if task not in self.ended and (over or (not ran and state in _FINAL_STATES)):
                self._print_end(task, state or "not run", ended or dt.datetime.now(dt.timezone.utc))

    def _print_end(self, task: str, state: str, ended: dt.datetime) -> None:
        self.ended.add(task)
        begun = self.started.pop(task, None)
        ran = f" (started {begun:%H:%M:%S}, {(ended - begun).total_seconds():.1f} s)" if begun else ""
        print(f"crmw:   {ended:%H:%M:%S} {state:<7} {task}{ran}", flush=True)


def _timestamp(text: str) -> dt.datetime:
    """A log line's leading UTC timestamp, e.g. 2026-11-30T13:09:14.373173Z."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _finish_run(env: Mapping[str, str], run_id: str | None, began: dt.datetime) -> str | None:
    """The state of DAG run `run_id` (None when there is no run), after giving it its real start.

    `airflow dags test` records a run as started on its logical date (apache/airflow#66127, open), so
    the UI showed a run of yesterday's date as lasting a day and the DAG's total as years; a failure to
    correct it only costs the UI that figure. Read and written with SQL on Airflow's metadata DB, as
    the task states are: two `airflow` processes did the same in ~8 s a date, most of it importing
    Airflow.
    """
    from sqlalchemy import DateTime, bindparam, create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    if run_id is None:
        return None
    key = {"dag_id": DAG_ID, "run_id": run_id}
    metadata = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        try:
            with metadata.begin() as connection:
                connection.execute(
                    text("update dag_run set start_date = :began where dag_id = :dag_id and run_id = :run_id").bindparams(
                        bindparam("began", type_=DateTime(timezone=True))
                    ),
                    {**key, "began": began},
                )
        except SQLAlchemyError as error:
            print(f"crmw: could not record the run's real start in Airflow's metadata: {error}".splitlines()[0], flush=True)
        with metadata.connect() as connection:
            return connection.execute(text("select state from dag_run where dag_id = :dag_id and run_id = :run_id"), key).scalar()
    finally:
        metadata.dispose()


def serve(env: Mapping[str, str]) -> int:
    """Run `airflow standalone` (API server, scheduler, DAG processor, triggerer) until Ctrl-C or SIGTERM."""
    prepare_airflow(env)
    home = Path(env["AIRFLOW_HOME"])
    stop_requests: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stop_requests.append(signum)

    # Handled before standalone starts, so it starts with SIGINT at the default (KeyboardInterrupt)
    # even when crmw was started with SIGINT ignored (e.g. in the background of a script). A hang-up
    # stops it too, unless crmw runs under nohup.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signum != signal.SIGHUP or signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, stop)
    # A process group of its own, so that Ctrl-C reaches only crmw, which stops the components in order.
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow"), "standalone"], env=dict(env), cwd=PROJECT_ROOT, process_group=0
    )
    passwords = home / "simple_auth_manager_passwords.json.generated"
    port = env["AIRFLOW__API__PORT"]
    deadline = time.monotonic() + 120
    while process.poll() is None and not stop_requests and time.monotonic() < deadline and not _logins(passwords):
        time.sleep(1)
    if logins := _logins(passwords):
        login = ", ".join(f"user {user} / password {password}" for user, password in logins.items())
        print(f"\ncrmw: Airflow UI at http://localhost:{port} — {login}\ncrmw: stop with Ctrl-C\n", flush=True)
    while process.poll() is None and not stop_requests:
        time.sleep(0.5)
    if process.poll() is None:
        _stop_standalone(process, stop_requests)
    code = process.wait()
    # A stop the user asked for is a normal end, even when leftovers had to be killed.
    return 0 if stop_requests else code


def _logins(passwords: Path) -> dict[str, str]:
    """User -> password from the auth manager's generated file; empty until it is written."""
    try:
        return json.loads(passwords.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _stop_standalone(process: subprocess.Popen, stop_requests: list[int]) -> None:
    """Stop the scheduler first, then the rest through standalone, then anything left in its group.

    Standalone stops all components at once; a task still running then cannot report to the gone API
    server, retries for minutes, and the scheduler's LocalExecutor waits for it. Stopped first, the
    scheduler queues nothing more and waits for its running tasks while the API server takes their
    reports. Another Ctrl-C skips that wait, and so does a task that is still running after
    _SCHEDULER_GRACE_SECONDS.
    """
    import psutil

    def alive(proc: psutil.Process) -> bool:
        try:
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    try:
        schedulers = [child for child in psutil.Process(process.pid).children() if child.cmdline()[-1:] == ["scheduler"]]
    except psutil.Error:
        schedulers = []
    requests = len(stop_requests)
    if schedulers:
        print("crmw: stopping the scheduler; it waits for running tasks (Ctrl-C again not to wait) ...", flush=True)
        for scheduler in schedulers:
            try:
                scheduler.terminate()
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + _SCHEDULER_GRACE_SECONDS
        while any(alive(scheduler) for scheduler in schedulers) and len(stop_requests) == requests:
            if time.monotonic() > deadline:
                print(f"crmw: the scheduler did not stop within {_SCHEDULER_GRACE_SECONDS} s; stopping everything", flush=True)
                break
            time.sleep(0.5)
    # SIGINT: standalone stops each component; SIGTERM would leave them running.
    process.send_signal(signal.SIGINT)
    try:
        process.wait(_STANDALONE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    # Whatever outlived standalone in its process group: processes of tasks cut short, a stuck component.
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            process.poll()  # reap standalone if it was the one left
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
