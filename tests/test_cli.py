"""`crmw` fails on bad input with one line on stderr naming the input and what was expected, exit
status 2, and no traceback, before it starts Airflow or writes anything; it says what it reads, and
serves the Airflow UI on this machine only unless told otherwise."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crmw.airflow_runner import RunError, airflow_environment, warehouse_run_lock
from tests.conftest import PROJECT_ROOT, assert_one_line_error

CRMW = Path(sys.executable).parent / "crmw"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A clean environment: Airflow home, warehouse and sources all inside tmp_path."""
    sources = tmp_path / "sources"
    sources.mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "CRMW_", "WAREHOUSE_"))}
    environment.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        WAREHOUSE_URL=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        CRMW_SOURCE_DIR=str(sources),
        PYTHONWARNINGS="ignore",
    )
    return environment


def crmw(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CRMW), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def assert_one_line_error_after_progress(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A run that started Airflow: progress lines on stdout, then the one-line error on stderr."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("crmw: error: ") and all(fragment in line for fragment in fragments), line
    return line


def assert_airflow_not_started(env: dict[str, str]) -> None:
    home = Path(env["AIRFLOW_HOME"])
    assert not (home / "airflow.db").exists()
    assert not (home / "logs").exists()


def test_run_with_a_badly_written_date_names_date_and_the_expected_format(env):
    result = crmw(env, "run", "--date", "2025/01/31")
    assert_one_line_error(result, "--date", "'2025/01/31'", "YYYY-MM-DD")
    assert_airflow_not_started(env)


def test_run_with_an_unknown_warehouse_url_names_warehouse_url(env):
    env["WAREHOUSE_URL"] = "mysql://x"
    result = crmw(env, "run", "--date", "2025-01-31")
    assert_one_line_error(result, "WAREHOUSE_URL='mysql://x'", "expected duckdb:///", "postgresql://")
    assert_airflow_not_started(env)


def test_run_on_a_spark_folder_without_java_names_what_spark_lacks_before_airflow_starts(env, tmp_path):
    env["WAREHOUSE_URL"] = f"spark://{tmp_path / 'spark'}"
    env.pop("JAVA_HOME", None)
    env["PATH"] = str(tmp_path / "bin-without-java")
    result = crmw(env, "run", "--date", "2025-01-31")
    assert_one_line_error(result, "WAREHOUSE_URL=", "a local Spark cannot start here", "Java 17", "openjdk-17-jre-headless")
    assert_airflow_not_started(env)


def test_run_never_prints_the_warehouse_password(env):
    env["WAREHOUSE_URL"] = "postgresql://:hunter2xyzzy@db.example.com/crm"
    result = crmw(env, "run", "--date", "2025-01-31")
    line = assert_one_line_error(result, "WAREHOUSE_URL=")
    assert "hunter2xyzzy" not in line and "hunter2xyzzy" not in result.stdout


def test_run_with_a_missing_source_folder_names_crmw_source_dir(env, tmp_path):
    env["CRMW_SOURCE_DIR"] = str(tmp_path / "no-such-folder")
    result = crmw(env, "run", "--date", "2025-01-31")
    assert_one_line_error(result, "CRMW_SOURCE_DIR=", "no-such-folder", "folder not found", "crmw simulate")
    assert_airflow_not_started(env)
    assert not (tmp_path / "warehouse.duckdb").exists()


def test_run_with_a_range_that_ends_before_it_starts_fails(env):
    result = crmw(env, "run", "--from", "2025-01-05", "--to", "2025-01-01")
    assert_one_line_error(result, "--to 2025-01-01", "--from 2025-01-05")
    assert_airflow_not_started(env)


@pytest.mark.parametrize("args", [["--date", "2099-01-01"], ["--from", "2025-01-01", "--to", "2099-01-01"]])
def test_run_for_a_date_after_today_is_refused_before_anything_starts(env, args):
    result = crmw(env, "run", *args)
    assert_one_line_error(result, "2099-01-01", "after today", "UTC")
    assert_airflow_not_started(env)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["run"], ["--date", "--from", "--to"]),
        (["run", "--from", "2025-01-01"], ["--from", "--to"]),
        (["run", "--date", "2025-01-01", "--from", "2025-01-01", "--to", "2025-01-02"], ["--date", "not both"]),
        (["run", "--from", "2025-13-01", "--to", "2025-12-31"], ["--from", "'2025-13-01'", "YYYY-MM-DD"]),
    ],
)
def test_run_with_other_bad_date_arguments_fails_naming_them(env, args, fragments):
    assert_one_line_error(crmw(env, *args), *fragments)
    assert_airflow_not_started(env)


def test_a_model_setting_given_to_run_goes_into_its_models_param():
    from crmw.cli import _params

    assert _params(["association_rules__top_k_offers=10", "full_refresh=true", "association_rules__min_lift=1.5"]) == {
        "association_rules": {"top_k_offers": 10, "min_lift": 1.5},
        "full_refresh": True,
    }
    assert _params(['association_rules={"min_lift": 2}', "association_rules__top_k_offers=3"]) == {
        "association_rules": {"min_lift": 2, "top_k_offers": 3}}


@pytest.mark.parametrize("pairs", [["association_rules=5", "association_rules__top_k_offers=3"],
                                   ["association_rules__top_k_offers=3", "association_rules=5"]])
def test_a_model_given_both_a_value_and_settings_is_refused(pairs):
    from crmw.cli import UsageError, _params

    with pytest.raises(UsageError, match=r"^--param association_rules\S*: association_rules is given both as settings and as 5;"
                                         r" give its settings as association_rules__<setting>=VALUE or as one object$"):
        _params(pairs)


def test_simulate_with_no_customers_names_customers(env, tmp_path):
    out = tmp_path / "generated"
    result = crmw(env, "simulate", "--customers", "0", "--start", "2025-01-01", "--days", "2", "--out", str(out))
    assert_one_line_error(result, "--customers 0", "positive")
    assert not out.exists()


def test_simulate_with_no_days_names_days(env, tmp_path):
    result = crmw(env, "simulate", "--customers", "5", "--start", "2025-01-01", "--days", "0", "--out", str(tmp_path / "g"))
    assert_one_line_error(result, "--days 0", "positive")


def test_simulate_with_a_bad_start_date_names_start(env, tmp_path):
    result = crmw(env, "simulate", "--customers", "5", "--start", "Jan 1", "--days", "1", "--out", str(tmp_path / "g"))
    assert_one_line_error(result, "--start", "YYYY-MM-DD")


def test_simulate_into_a_folder_holding_files_names_out_and_leaves_it_alone(env, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = crmw(env, "simulate", "--customers", "5", "--start", "2025-01-01", "--days", "1", "--out", str(out))
    assert_one_line_error(result, "--out", str(out), "empty")
    assert sorted(path.name for path in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".simulate-")) == []


def test_simulate_writes_the_sources_and_says_where(env, tmp_path):
    out = tmp_path / "generated"
    result = crmw(env, "simulate", "--customers", "20", "--start", "2025-01-01", "--days", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote sources to {out}" in result.stdout
    assert (out / "sales.sqlite").is_file()
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*/*")) == [
        f"crm/{day}/{entity}.csv"
        for day in ("2025-01-01", "2025-01-02")
        for entity in ("campaign_members", "campaigns", "customers", "interactions")
    ] + ["service/2025-01-01/tickets.jsonl", "service/2025-01-02/tickets.jsonl"]


@pytest.mark.parametrize(
    "warehouse", ["duckdb", "postgresql://crmw:hunter2xyzzy@db.example.com:5432/crm"], ids=["duckdb", "postgres"]
)
def test_a_second_run_on_a_busy_warehouse_is_refused_naming_the_run_that_holds_it(env, warehouse):
    if warehouse != "duckdb":
        env["WAREHOUSE_URL"] = warehouse
    held_by = "crmw run for 2025-01-30 (pid 4242, since 2026-01-01 06:00:00 UTC)"
    with warehouse_run_lock(airflow_environment(env), held_by):
        result = crmw(env, "run", "--date", "2025-01-31")
    line = assert_one_line_error(result, "WAREHOUSE_URL=", "in use by " + held_by)
    assert "hunter2xyzzy" not in line
    assert_airflow_not_started(env)


def test_the_run_lock_is_per_warehouse_and_released_when_the_run_ends(env, tmp_path):
    first = airflow_environment(env)
    other = airflow_environment({**env, "WAREHOUSE_URL": f"duckdb:///{tmp_path / 'other.duckdb'}"})
    with warehouse_run_lock(first, "first run"), warehouse_run_lock(other, "a run on another warehouse"):
        with pytest.raises(RunError, match="in use by first run"):
            with warehouse_run_lock(first, "second run"):
                pass
    with warehouse_run_lock(first, "a later run"):
        pass


def test_run_help_names_the_environment_variables_it_reads(env):
    result = crmw(env, "run", "--help")
    assert result.returncode == 0, result.stderr
    named = set(re.findall(r"\b(?:WAREHOUSE_URL|AIRFLOW_HOME|CRMW_[A-Z_<>]+)", result.stdout))
    assert {"WAREHOUSE_URL", "CRMW_SOURCE_DIR", "CRMW_EXPORT_DIR", "AIRFLOW_HOME", "CRMW_TASK_RETRIES"} <= named
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    configuration = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    undocumented = {name for name in named if not re.search(f"`{re.escape(name)}[`=]", configuration)}
    assert undocumented == set(), "named in --help but not in README's Configuration"


def test_airflow_ui_listens_on_this_machine_only_unless_told_otherwise(env):
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    local = airflow_environment(env)
    assert local["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert local["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    # Airflow warns that the set-up "looks like production" for a non-local host, among others.
    assert not SimpleAuthManager._looks_like_production(
        sql_conn=local["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        api_host=local["AIRFLOW__API__HOST"],
        executor=local["AIRFLOW__CORE__EXECUTOR"],
    )
    shared = airflow_environment({**env, "AIRFLOW__API__HOST": "0.0.0.0"})
    assert shared["AIRFLOW__API__HOST"] == "0.0.0.0"


def test_dag_list_describes_crm_daily_and_the_docs_say_which_dates_the_demo_can_trigger(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    makefile = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    first = dt.date.fromisoformat(re.search(r"^DEMO_START \?= (\S+)", makefile, re.M).group(1))
    days = int(re.search(r"^DEMO_DAYS \?= (\d+)", makefile, re.M).group(1))
    demo_dates = (str(first), str(first + dt.timedelta(days=days - 1)))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["crm_daily"]
    assert dag.description and "extract" in dag.description.lower()
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    ui_section = readme.split("### The Airflow UI", 1)[1].split("\n## ", 1)[0]
    for text in (ui_section, dag.doc_md):
        assert "Logical Date" in text and "Unpause" in text
        assert all(day in text for day in demo_dates), demo_dates


def test_task_progress_lines_give_each_task_its_start_end_state_and_duration(capsys):
    from crmw.airflow_runner import _TaskReport

    report = _TaskReport(lambda run_id: [])
    for line in [
        "2026-11-30T13:09:14.578519Z [info     ] [DAG TEST] starting task_id=extract_sales.orders map_index=-1 [x] loc=dag.py:1501",
        "2026-11-30T13:09:15.441629Z [info     ] Task instance state updated    [x] new_state=failed rows_affected=1 ti_id=1",
        "2026-11-30T13:09:16.078519Z [info     ] [DAG TEST] end task task_id=extract_sales.orders map_index=-1 [x] loc=dag.py:1563",
    ]:
        report.read(line)
    assert capsys.readouterr().out.splitlines() == [
        "crmw:   13:09:14 start extract_sales.orders",
        "crmw:   13:09:16 failed  extract_sales.orders (started 13:09:14, 1.5 s)",
    ]


def test_tasks_that_are_never_run_get_one_line_naming_their_state_as_soon_as_airflow_settles_it(capsys):
    from crmw.airflow_runner import _TaskReport

    def at(clock: str) -> dt.datetime:
        return dt.datetime.fromisoformat(f"2026-11-30T{clock}+00:00")

    # What Airflow's metadata says of run "manual__1" at each read: (task, state, ended, ever run).
    metadata = {"manual__1": []}
    report = _TaskReport(lambda run_id: metadata[run_id])
    report.read("2026-11-30T13:09:10.1Z [info     ] Created dag run.  [x] dagrun=<DagRun crm_daily @ 2025-01-31 00:00:00+00:00:"
                " manual__1, state:running, queued_at: None. run_type: manual> loc=dagrun.py:2464")
    for line in [
        "2026-11-30T13:09:14.0Z [info     ] [DAG TEST] starting task_id=is_current_day map_index=-1 [x]",
        "2026-11-30T13:09:15.0Z [info     ] Task instance state updated    [x] new_state=success rows_affected=1",
        "2026-11-30T13:09:15.5Z [info     ] [DAG TEST] end task task_id=is_current_day map_index=-1 [x]",
    ]:
        report.read(line)
    # Read before the next task's start line: the short-circuit has skipped source_freshness; the
    # extract already ran (its own lines are still to come) and publish has no state yet.
    metadata["manual__1"] = [
        ("is_current_day", "success", at("13:09:15"), True),
        ("source_freshness", "skipped", at("13:09:15"), False),
        ("extract_sales.orders", "failed", at("13:09:17"), True),
        ("publish", None, None, False),
    ]
    for line in [
        "2026-11-30T13:09:16.0Z [info     ] [DAG TEST] starting task_id=extract_sales.orders map_index=-1 [x]",
        "2026-11-30T13:09:17.0Z [info     ] Task instance state updated    [x] new_state=failed rows_affected=1",
        "2026-11-30T13:09:17.5Z [info     ] [DAG TEST] end task task_id=extract_sales.orders map_index=-1 [x]",
    ]:
        report.read(line)
    metadata["manual__1"][3] = ("publish", "upstream_failed", at("13:09:18"), False)
    report.finish()
    assert capsys.readouterr().out.splitlines() == [
        "crmw:   13:09:14 start is_current_day",
        "crmw:   13:09:15 success is_current_day (started 13:09:14, 1.5 s)",
        "crmw:   13:09:15 skipped source_freshness",
        "crmw:   13:09:16 start extract_sales.orders",
        "crmw:   13:09:17 failed  extract_sales.orders (started 13:09:16, 1.5 s)",
        "crmw:   13:09:18 upstream_failed publish",
    ]


def test_a_failing_run_reports_its_tasks_as_it_goes_fails_without_retrying_and_keeps_a_log_per_run(env):
    # No sales database in the sources: the sales extract fails, a failure a retry could not fix.
    started = time.monotonic()
    started_at = dt.datetime.now(dt.timezone.utc)
    result = crmw(env, "run", "--date", "2025-01-31")
    # The one line names the cause: the last error of the run, which names the source and table.
    line = assert_one_line_error_after_progress(
        result, "crm_daily for 2025-01-31 ended failed", "last error:", "sales database", "no such table", "Airflow's output is in"
    )
    assert time.monotonic() - started < 110  # a retry waits CRMW_RETRY_DELAY_SECONDS, 300 s
    assert "crmw:   " in result.stdout and " start check_model_params" in result.stdout
    assert re.search(r"failed  extract_sales\.\w+ \(started \d\d:\d\d:\d\d, \d+\.\d s\)", result.stdout), result.stdout
    # Every task of the run ends with one line naming its state, those never run too, before the error.
    ended = [task for state, task in re.findall(r"^crmw:   \d\d:\d\d:\d\d (\w+) +(\S+)", result.stdout, re.M) if state != "start"]
    assert re.search(r"^crmw:   \d\d:\d\d:\d\d upstream_failed publish$", result.stdout, re.M), result.stdout
    (log,) = (Path(env["AIRFLOW_HOME"]) / "logs").glob("crmw-run-crm_daily-2025-01-31-*.log")
    assert str(log) in line
    output = log.read_text()
    assert "[DAG TEST] starting task_id=check_model_params" in output and "up_for_retry" not in output
    # The UI shows the run's real start and duration, not a start on its logical date.
    listing = subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "list-runs", "crm_daily", "--output", "json"],
                             env=airflow_environment(env), capture_output=True, text=True).stdout
    (run,) = [run for run in json.loads(listing[listing.index("[{"):].splitlines()[0]) if str(run["logical_date"]).startswith("2025-01-31")]
    # Compared with the test's own wall clock, so a run that crosses midnight passes too.
    assert started_at <= dt.datetime.fromisoformat(str(run["start_date"])) <= dt.datetime.now(dt.timezone.utc), run
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as metadata:
        tasks = [task for (task,) in metadata.execute("select task_id from task_instance where run_id = ?", [run["run_id"]])]
    assert sorted(ended) == sorted(tasks) and len(tasks) > 50
