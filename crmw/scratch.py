"""Scratch warehouses for tests and benchmarks: a throwaway PostgreSQL server from the machine's
binaries, a fresh database on it, raw loaded from sources as the DAG's extract groups load it, and
the dbt CLI run against a warehouse URL without touching the manifest the DAG renders from."""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from warehouse import PROJECT_ROOT

DBT_PROJECT = PROJECT_ROOT / "dbt_project"


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    found = candidates[-1] if candidates else shutil.which("initdb")
    if not found:
        raise RuntimeError(
            "no PostgreSQL server binaries (initdb) found: install the Debian 'postgresql' package,"
            " or set WAREHOUSE_URL=postgresql://user:password@host:port/db to use a running server"
        )
    return Path(found).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a private server on a loopback port; yield the URL of its `postgres` database.

    initdb refuses to run as root, so as root the server runs as the `postgres` user in a folder
    it owns. Durability settings are off: the data dies with the test run anyway.
    """
    bin_dir = _bin_dir()
    base = Path(tempfile.mkdtemp(prefix="crmw-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group="postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-o", options, "-w", "start")
        yield f"postgresql://postgres:postgres@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as error:
        log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
        raise RuntimeError(f"throwaway PostgreSQL failed: {error.stderr.decode(errors='replace')}\n{log}") from error
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_postgres_database(server_url: str, name: str) -> str:
    """Create an empty database `name` on the server and return its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f"drop database if exists {name} with (force)")
        con.execute(f"create database {name}")
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def load_raw(url: str, source_dir: Path, day: dt.date) -> None:
    """Extract every source up to `day` and reconcile the SQL ones, as the DAG's extract groups do."""
    from extract_load.contract import load_contract
    from extract_load.load import ExtractSettings, extract_system, reconcile_system

    settings = ExtractSettings(source_dir=source_dir, sales_db_url=f"sqlite:///{source_dir / 'sales.sqlite'}")
    for system, spec in load_contract().systems.items():
        extract_system(system, day, f"test-{day}", settings=settings, warehouse_url=url)
        if spec.format == "sql":
            reconcile_system(system, day, f"test-{day}", settings=settings, warehouse_url=url)


def run_dbt(url: str, *args: str, tmp_path: Path, check: bool = True, as_of_date: dt.date | None = None) -> subprocess.CompletedProcess:
    """Run the dbt CLI on the project against `url`; target and logs go to `tmp_path` so a test
    never touches the manifest the DAG renders from. `as_of_date` is passed as the DAG passes it,
    in the environment (macro as_of_date_sql)."""
    dbt = Path(sys.executable).parent / "dbt"
    command = [str(dbt), *args, "--profiles-dir", ".", "--project-dir", ".",
               "--target-path", str(tmp_path / "dbt-target"), "--log-path", str(tmp_path / "dbt-logs")]
    env = {**os.environ, "WAREHOUSE_URL": url}
    if as_of_date is not None:
        env["CRMW_AS_OF_DATE"] = as_of_date.isoformat()
    result = subprocess.run(command, cwd=DBT_PROJECT, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dbt {' '.join(args)} failed on {url.split('://')[0]}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}")
    return result
