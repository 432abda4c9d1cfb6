"""Shared fixtures: one PostgreSQL server per session, and a warehouse per test on each engine."""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.postgres_server import throwaway_postgres

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its home when first imported: keep tests away from the developer's .local/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="crmw-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
ENGINES = ["duckdb", "postgres"]
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """WAREHOUSE_URL when it names a PostgreSQL server (its user needs CREATEDB), else a
    throwaway server started from the machine's binaries for this session."""
    given = os.environ.get("WAREHOUSE_URL", "")
    if given.startswith("postgres"):
        yield given
        return
    with throwaway_postgres() as url:
        yield url


def new_postgres_database(server_url: str, name: str) -> str:
    """Create an empty database `name` on the server and return its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f"drop database if exists {name} with (force)")
        con.execute(f"create database {name}")
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    return new_postgres_database(postgres_server_url, f"crmw_test_{os.getpid()}_{next(_database_numbers)}")


@pytest.fixture(params=ENGINES)
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty warehouse on each engine: a DuckDB file, or a fresh PostgreSQL database."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    return request.getfixturevalue("postgres_url")


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The CLI's promise for expected failures: exit 2, nothing on stdout, and exactly one line on
    stderr, starting 'crmw: error:' and naming every fragment; no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("crmw: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    return lines[0]
