"""`crmw` fails on bad input with one line on stderr naming the input and what was expected, exit
status 2, and no traceback, before it starts Airflow or writes anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error

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
