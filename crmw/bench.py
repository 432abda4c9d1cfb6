"""End-to-end benchmark (`crmw bench`): the whole daily pipeline on simulated sources, stage by stage.

A run simulates a tier's sources into a scratch folder and, on a fresh warehouse, times: simulate,
extract-load, reconcile, `dbt build` (full refresh), each registered model in registry order,
publish; then `catch_up_days` more days are appended, loaded and built untimed, and the models run
for the last of them (so the steady day follows an incremental build and a day's models, as a
production day does; the days were first needed to take the facts' former three-day reprocessing
window past the first load, which delivers every SQL row on its last day), and a steady day is
timed end to end: the simulator appends it, then extract-load, reconcile, `dbt build`, the models
and publish for it. Past the tiny tier, one more day is then appended and run as a user runs it,
`crmw run` (the crm_daily DAG through Airflow), and timed whole: what the stages cost plus what
Airflow adds.

On Spark (a local folder, `spark:///…`) the run starts Spark in this process, timed as a stage of the
full run of its own ("start Spark": the JVM and the Derby metastore, which a user's `crmw run` pays
once per DAG run), and every later stage joins that session, dbt included (dbt-spark's session
method, run in this process as the DAG's Cosmos tasks run it: a dbt of its own would find the
folder's Derby metastore locked by this process). The steady day therefore runs on a warm JVM. The
day through Airflow needs the folder free, so this process ends its JVM first (untimed) and `crmw run`
starts its own, as a user's does. Each run ends its JVM, so the next starts afresh on its own folder.

Per stage: wall and CPU seconds (this process and its children: those it waited for, dbt included,
and those still running, Spark's JVM; a PostgreSQL server's own CPU is not counted), rows and
rows/s where a row count is natural, and the peak resident memory of this process and its children
(the JVM and its Python workers on Spark), sampled. Several runs give medians.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import resource
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from warehouse import PROJECT_ROOT, WarehouseUrlError, connect
from warehouse.adapter import duckdb_settings
from warehouse.bi import SALT_SETTING
from warehouse.spark import end_local_spark

log = logging.getLogger(__name__)
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
START = dt.date(2024, 1, 1)
SEED = 11


@dataclasses.dataclass(frozen=True)
class Tier:
    customers: int
    days: int
    # Days loaded and built, untimed, between the full run and the steady day (see the docstring);
    # the tiny tier, there to exercise the harness, skips them, and the day through Airflow.
    catch_up_days: int = 4
    through_airflow: bool = True


TIERS = {
    "tiny": Tier(customers=200, days=60, catch_up_days=0, through_airflow=False),
    "small": Tier(customers=10_000, days=730),
    "medium": Tier(customers=100_000, days=730),
    "large": Tier(customers=1_000_000, days=730),
}
FIELDS = ("wall_seconds", "cpu_seconds", "rows", "rows_per_second", "peak_rss_mb")
FULL_RUN, STEADY_DAY = "full run (after simulating)", "steady day (after simulating)"
START_SPARK = "start Spark"
THROUGH_AIRFLOW = "next day: crmw run, through Airflow (after simulating)"
# The storage budget per schema, in MB for 100,000 customers × 730 days (the medium tier): the
# warehouse in 6 GB there, on either engine (PostgreSQL's rows are the larger). Other tiers scale it
# by customers × days. The split says where the bytes may go: raw keeps every version delivered, so
# it gets the most; staging holds their latest versions; features are per customer and month; BI's
# schema is views (and one row of bi_info), the audit schema the erasure log.
STORAGE_BUDGET_MB = {
    "raw_sales": 1_900, "raw_crm": 250, "raw_service": 300, "raw_meta": 400, "staging": 900, "intermediate": 250,
    "marts": 450, "published": 450, "features": 1_000, "ml": 200, "activation": 40, "bi": 1, "audit": 1,
}
BUDGET_CUSTOMER_DAYS = 100_000 * 730
# How many of a build's slowest dbt nodes, and of the warehouse's largest tables, a result keeps.
SLOWEST_NODES, LARGEST_TABLES = 12, 10


@dataclasses.dataclass
class Measure:
    """What a timed stage reports: its rows (None where no count is natural) and any notes."""

    rows: int | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its children: the kernel counts a child once this process
    waited for it (dbt's CLI, `crmw run`); one still running, Spark's JVM, which lives through a run,
    is read from /proc, with the children it waited for in turn (its Python workers)."""
    import psutil

    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # it ended between the listing and the reading
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class _Run:
    """One run's stage records, printed as JSON lines as they complete."""

    def __init__(self, tier: str, engine: str, number: int, emit: Callable[[str], None]) -> None:
        self.header = {"tier": tier, "engine": engine, "run": number}
        self.stages: dict[str, dict[str, Any]] = {}
        self.storage_mb: dict[str, dict[str, float]] = {}
        self.largest_tables_mb: dict[str, dict[str, float]] = {}
        self.spark_settings: dict[str, str] = {}
        self.emit = emit

    def timed(self, stage: str, work: Callable[[], Measure]) -> Measure:
        from ml_tasks.tasks import peak_memory

        cpu, started = _cpu_seconds(), time.perf_counter()
        with peak_memory(include_children=True) as peak:
            measure = work()
            peak_mb = peak()
        wall = time.perf_counter() - started
        self.add(stage, wall, _cpu_seconds() - cpu, measure.rows, peak_mb, measure.notes)
        return measure

    def add(self, stage: str, wall: float, cpu: float, rows: int | None, peak_mb: float, notes: dict | None = None) -> None:
        record = {
            "stage": stage,
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "rows": rows,
            "rows_per_second": round(rows / wall) if rows is not None and wall > 0 else None,
            "peak_rss_mb": peak_mb,
            **(notes or {}),
        }
        self.stages[stage] = record
        self.emit(json.dumps({**self.header, **record}))

    def total(self, stage: str, parts: list[str]) -> None:
        records = [self.stages[part] for part in parts]
        self.add(
            stage,
            sum(record["wall_seconds"] for record in records),
            sum(record["cpu_seconds"] for record in records),
            None,
            max(record["peak_rss_mb"] for record in records),
        )


def run_benchmark(
    tier: str,
    engine: str,
    runs: int,
    results_dir: Path = RESULTS_DIR,
    emit: Callable[[str], None] = lambda line: print(line, flush=True),
) -> Path:
    """Run the tier `runs` times on `engine` ("duckdb", "postgres" or "spark"); write the results as
    JSON and a markdown table in `results_dir` and return the JSON file's path."""
    from unittest import mock

    if engine == "spark":
        _check_spark_can_start()
    spec = TIERS[tier]
    started = dt.datetime.now(dt.timezone.utc)
    records, storage, largest_tables, spark_settings = [], [], [], []
    with ExitStack() as stack:
        server = None
        if engine == "postgres":
            from crmw.scratch import throwaway_postgres

            server = stack.enter_context(throwaway_postgres())
        for number in range(runs):
            run = _Run(tier, engine, number, emit)
            # A run's sources, warehouse file and exports go before the next run: a large tier's
            # are tens of GB.
            with tempfile.TemporaryDirectory(prefix=f"crmw-bench-{tier}-") as folder:
                workdir = Path(folder)
                # Publish makes BI's views (on PostgreSQL it needs the key salt): a throwaway
                # warehouse's keys need no secret salt.
                bench_settings = {"CRMW_EXPORT_DIR": str(workdir / "exports"),
                                  SALT_SETTING: os.environ.get(SALT_SETTING) or "crmw bench: a throwaway warehouse"}
                with mock.patch.dict(os.environ, bench_settings):
                    try:
                        _one_run(run, spec, _new_warehouse(engine, server, workdir, number), workdir)
                    finally:
                        if engine == "spark":
                            end_local_spark()
            records.append(run.stages)
            storage.append(run.storage_mb)
            largest_tables.append(run.largest_tables_mb)
            spark_settings.append(run.spark_settings)

    result = {
        "tier": tier,
        "engine": engine,
        "customers": spec.customers,
        "days": spec.days,
        "catch_up_days": spec.catch_up_days,
        "runs": runs,
        "started": started.isoformat(timespec="seconds"),
        "machine": _machine(),
        # What the engine could hold and use, beside the peaks it reached (Spark's: the first run's).
        **({"duckdb_settings": duckdb_settings()} if engine == "duckdb" else {}),
        **({"spark_settings": spark_settings[0]} if engine == "spark" else {}),
        "stages": _medians(records),
        # Megabytes per schema after the full run and after the steady day; every run holds the
        # same data (one seed), so the first run's.
        "storage_mb": storage[0],
        "storage_budget_mb": storage_budget_mb(spec),
        "largest_tables_mb": largest_tables[0],
        "each_run": records,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{tier}-{engine}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    path.with_suffix(".md").write_text(table)
    emit(table)
    return path


def _check_spark_can_start() -> None:
    """Refuse before simulating where Spark cannot start, or where a session already runs in this
    process: Spark keeps one per process, and the bench starts and ends its own, one per run."""
    from warehouse.spark import spark_missing

    missing = spark_missing()
    if missing:
        raise WarehouseUrlError(f"--engine spark: a local Spark cannot start here: {missing}")
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is not None:
        raise WarehouseUrlError("--engine spark: a Spark session already runs in this process;"
                                " stop it first (the bench starts one per run, on a folder of its own)")


def _start_spark(run: _Run, url: str) -> Measure:
    """Start the run's Spark session (the JVM, then the Derby metastore in the folder) and note what
    it may use: its cores (the master), the JVM's heap (spark.driver.memory, Spark's default 1g where
    nothing sets it) and the shuffle partitions."""
    from pyspark.sql import SparkSession

    with connect(url):
        session = SparkSession.getActiveSession()
        # The first look at the catalog starts the Hive client and creates Derby's tables (tens of
        # seconds): without it, the extract-load after would pay for them.
        session.catalog.listDatabases()
        conf = session.sparkContext.getConf()
    run.spark_settings = {"master": conf.get("spark.master"), "driver_memory": conf.get("spark.driver.memory", "1g"),
                          "shuffle_partitions": conf.get("spark.sql.shuffle.partitions")}
    return Measure()


def _new_warehouse(engine: str, server: str | None, workdir: Path, number: int) -> str:
    if engine == "duckdb":
        return f"duckdb:///{workdir / 'warehouse.duckdb'}"
    if engine == "spark":
        return f"spark://{workdir / 'warehouse'}"  # the folder's absolute path: spark:///tmp/…
    from crmw.scratch import new_postgres_database

    return new_postgres_database(server, f"crmw_bench_{os.getpid()}_{number}")


def _one_run(run: _Run, spec: Tier, url: str, workdir: Path) -> None:
    from simulator import SimulationSettings, append_day, simulate

    sources = workdir / "sources"
    last_day = START + dt.timedelta(days=spec.days - 1)
    run.timed("simulate", lambda: Measure(sum(simulate(
        SimulationSettings(customers=spec.customers, start=START, days=spec.days, seed=SEED, out=sources)
    ).values())))
    on_spark = url.startswith("spark:")
    if on_spark:
        run.timed(START_SPARK, lambda: _start_spark(run, url))
    full_stages = _pipeline_day(run, url, sources, last_day, workdir, prefix="", full_refresh=True)
    run.total(FULL_RUN, [START_SPARK, *full_stages] if on_spark else full_stages)
    _measure_storage(run, "full run", url)

    day = last_day
    for _ in range(spec.catch_up_days):
        day += dt.timedelta(days=1)
        append_day(sources, day)
        _extract(url, sources, day)
        _reconcile(url, sources, day)
    if spec.catch_up_days:
        _dbt_build(url, day, workdir, full_refresh=False)
        # The models ran yesterday too, as the daily DAG's would: the steady day reuses a fit
        # while the training data moved within its tolerance, as it does in production.
        from ml_tasks import registry

        for model in registry.MODELS:
            _model(model, day, url)

    day += dt.timedelta(days=1)
    run.timed("steady day: simulate", lambda: Measure(sum(append_day(sources, day).values())))
    steady_stages = _pipeline_day(run, url, sources, day, workdir, prefix="steady day: ", full_refresh=False)
    run.total(STEADY_DAY, steady_stages)
    _measure_storage(run, "steady day", url)

    if spec.through_airflow:
        from crmw.airflow_runner import airflow_environment, prepare_airflow

        day += dt.timedelta(days=1)
        append_day(sources, day)
        env = airflow_environment({**os.environ, "WAREHOUSE_URL": url, "CRMW_SOURCE_DIR": str(sources),
                                   "AIRFLOW_HOME": str(workdir / "airflow")})
        if on_spark:
            end_local_spark()  # untimed: `crmw run` opens the folder in a process of its own (see the docstring)
        # Airflow's metadata database is created before, untimed: a user's first run does it once.
        prepare_airflow(env)
        run.timed(THROUGH_AIRFLOW, lambda: _crmw_run(env, day))


def _measure_storage(run: _Run, moment: str, url: str) -> None:
    """The warehouse's megabytes on disk per schema and in total (the storage budget), and its
    largest tables, after `moment`."""
    with connect(url) as warehouse:
        run.storage_mb[moment] = {schema: round(size / 2**20, 1) for schema, size in warehouse.storage_bytes().items()}
        largest = sorted(warehouse.table_bytes().items(), key=lambda item: -item[1])[:LARGEST_TABLES]
    run.largest_tables_mb[moment] = {name: round(size / 2**20, 1) for name, size in largest}


def _pipeline_day(run: _Run, url: str, sources: Path, day: dt.date, workdir: Path, prefix: str, full_refresh: bool) -> list[str]:
    """Time one day of the pipeline after the simulator; returns the stage names it recorded."""
    from ml_tasks import registry

    stages = [f"{prefix}extract-load", f"{prefix}reconcile", f"{prefix}dbt build"]
    run.timed(stages[0], lambda: _extract(url, sources, day))
    run.timed(stages[1], lambda: _reconcile(url, sources, day))
    run.timed(stages[2], lambda: _dbt_build(url, day, workdir, full_refresh))
    for spec in registry.MODELS:
        stages.append(f"{prefix}ml: {spec.name}")
        run.timed(stages[-1], lambda: _model(spec, day, url))
    stages.append(f"{prefix}publish")
    run.timed(stages[-1], lambda: _publish(day, url))
    return stages


def _crmw_run(env: dict[str, str], day: dt.date) -> Measure:
    """The day as a user runs it: `crmw run --date day`, the crm_daily DAG through Airflow's `dags
    test` (every stage above, plus Airflow's own costs: its processes, task bookkeeping, Cosmos'
    dbt watchers, and `crmw run` checking the metadata database and pool)."""
    from crmw.airflow_runner import RunError, run_dag

    try:
        run_dag(env, [day])
    except RunError as error:  # recorded, and the tier's other results kept
        return Measure(notes={"status": "failed", "message": str(error)})
    return Measure(notes={"status": "success"})


def _extract_settings(sources: Path):
    from extract_load.load import ExtractSettings

    return ExtractSettings(source_dir=sources, sales_db_url=f"sqlite:///{sources / 'sales.sqlite'}")


def _extract(url: str, sources: Path, day: dt.date) -> Measure:
    from extract_load.contract import load_contract
    from extract_load.load import extract_system

    settings = _extract_settings(sources)
    audits = [
        audit
        for system in load_contract().systems
        for audit in extract_system(system, day, f"bench-{day}", settings=settings, warehouse_url=url)
    ]
    return Measure(sum(audit.rows_read for audit in audits), {"rows_loaded": sum(audit.rows_loaded for audit in audits)})


def _reconcile(url: str, sources: Path, day: dt.date) -> Measure:
    from extract_load.contract import load_contract
    from extract_load.load import reconcile_system

    settings = _extract_settings(sources)
    audits = [
        audit
        for system, spec in load_contract().systems.items()
        if spec.format == "sql"
        for audit in reconcile_system(system, day, f"bench-{day}", settings=settings, warehouse_url=url)
    ]
    return Measure(notes={
        "rows_deleted": sum(audit.rows_deleted for audit in audits),
        "rows_recovered": sum(audit.rows_recovered for audit in audits),
    })


def _dbt_build(url: str, day: dt.date, workdir: Path, full_refresh: bool) -> Measure:
    """`dbt build` as the DAG runs it for `day`: a full refresh tests whole tables; a daily build
    tests what the incremental facts wrote, as on the schedule's weekdays, and leaves the unit tests
    to `make test`. Rows: the marts' rows."""
    from crmw.scratch import run_dbt

    scope = "all" if full_refresh else "written"
    flags = ["--full-refresh"] if full_refresh else []
    args = ["build", *flags, "--exclude-resource-type", "unit_test", "--vars", f"{{test_scope: {scope}}}"]
    run_dbt(url, *args, tmp_path=workdir, as_of_date=day)
    with connect(url) as warehouse:
        rows = sum(rows for _, rows in warehouse.row_counts(["marts"]))
    return Measure(rows, {"slowest_nodes": _slowest_nodes(workdir / "dbt-target" / "run_results.json")})


def _slowest_nodes(run_results: Path) -> dict[str, float]:
    """The build's slowest models and tests by dbt's own timing, name -> seconds: where a build's
    time went, kept with its figures (the scratch target goes with the run)."""
    results = json.loads(run_results.read_text())["results"]
    slowest = sorted(results, key=lambda result: -result["execution_time"])[:SLOWEST_NODES]
    return {_node_name(result["unique_id"]): round(result["execution_time"], 2) for result in slowest}


def _node_name(unique_id: str) -> str:
    """A model by its name, another node by its kind and name: 'customer_360', 'test unique_key_…'."""
    kind, _, name = unique_id.split(".")[:3]
    return name if kind == "model" else f"{kind} {name}"


def _model(spec, day: dt.date, url: str) -> Measure:
    """One registered model as its DAG task runs it. A quality floor missed (small tiers give models
    little to learn from) or a model's failure is reported, not fatal, as in the DAG, where the
    other models still run: the time spent counts all the same."""
    from ml_tasks.contract import QualityBelowFloor
    from ml_tasks.tasks import run_model

    try:
        run = run_model(spec, day, f"bench-{day}", warehouse_url=url)
    except QualityBelowFloor as error:
        return Measure(notes={"status": "below_floor", "message": str(error)})
    except Exception as error:  # recorded in ml.model_runs by run_model; the traceback goes to the log
        log.exception("%s failed for %s", spec.name, day)
        return Measure(notes={"status": "failed", "message": f"{type(error).__name__}: {error}"})
    return Measure(run["rows_in"], {"status": run["status"], "rows_out": run["rows_out"], "phase_seconds": run["phase_seconds"],
                                    "refitted": run["metrics"].get("refitted"), "refit_reason": run["metrics"].get("refit_reason")})


def _publish(day: dt.date, url: str) -> Measure:
    from ml_tasks.tasks import publish

    return Measure(sum(publish(day, f"bench-{day}", url).values()))


def _medians(records: list[dict[str, dict]]) -> list[dict[str, Any]]:
    """Per stage, in the first run's order: the median of each measured field over the runs."""
    medians = []
    for stage in records[0]:
        row: dict[str, Any] = {"stage": stage}
        for field in FIELDS:
            values = [run[stage][field] for run in records if run[stage][field] is not None]
            row[field] = statistics.median(values) if values else None
        if "slowest_nodes" in records[0][stage]:
            row["slowest_nodes"] = records[0][stage]["slowest_nodes"]  # the first run's: a list, not a median
        if "status" in records[0][stage]:
            row["status"] = sorted({run[stage]["status"] for run in records})
        phases = [run[stage].get("phase_seconds") or {} for run in records]
        if any(phases):
            row["phase_seconds"] = {name: statistics.median(run.get(name, 0.0) for run in phases) for name in phases[0]}
            row["refitted"] = any(run[stage].get("refitted") for run in records)
            reasons = sorted({run[stage]["refit_reason"] for run in records if run[stage].get("refit_reason")})
            if reasons:
                row["refit_reasons"] = reasons
        medians.append(row)
    return medians


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def storage_budget_mb(spec: Tier) -> dict[str, float]:
    """STORAGE_BUDGET_MB scaled to the tier, with its total."""
    scale = spec.customers * spec.days / BUDGET_CUSTOMER_DAYS
    budget = {schema: round(megabytes * scale, 1) for schema, megabytes in STORAGE_BUDGET_MB.items()}
    return {**budget, "total": round(sum(STORAGE_BUDGET_MB.values()) * scale, 1)}


def markdown_table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"{result['tier']} tier ({result['customers']:,} customers × {result['days']} days) on {result['engine']},"
        f" median of {result['runs']} run(s), {result['started']}; {machine['cpus']} CPUs,"
        f" {machine['memory_gb']} GB, load {machine['load_average'][0]} at the end"
        + "".join(f"; {engine} {', '.join(f'{name} {value}' for name, value in result[key].items())}"
                  for engine, key in (("DuckDB", "duckdb_settings"), ("Spark", "spark_settings")) if key in result),
        "",
        "| stage | wall s | CPU s | rows | rows/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["stages"]:
        cells = [_cell(row[field]) for field in FIELDS]
        notes = [*row["status"]] if row.get("status") and row["status"] != ["published"] else []
        if row.get("phase_seconds"):
            # Where a model's time went; "refitted" when its training data changed (else a stored fit scored).
            refitted = f"refitted ({'; '.join(row['refit_reasons'])}): " if row.get("refit_reasons") else "refitted: "
            notes.append((refitted if row["refitted"] else "") + ", ".join(
                f"{name} {_cell(seconds)} s" for name, seconds in row["phase_seconds"].items()))
        label = f"{row['stage']} ({'; '.join(notes)})" if notes else row["stage"]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += _megabytes_table("schema", result.get("storage_mb") or {}, result.get("storage_budget_mb"))
    lines += _megabytes_table("largest tables", result.get("largest_tables_mb") or {})
    for row in result["stages"]:
        if row.get("slowest_nodes"):
            lines += ["", f"Slowest dbt nodes of {row['stage']} (first run): "
                      + ", ".join(f"{name} {_cell(seconds)} s" for name, seconds in row["slowest_nodes"].items())]
    return "\n".join(lines) + "\n"


def _megabytes_table(title: str, by_moment: dict[str, dict[str, float]], budget: dict[str, float] | None = None) -> list[str]:
    """Markdown lines of megabytes per name (a schema, a table) after each moment, a column per
    moment, after a blank line; none when nothing was measured. With a `budget` per name, its
    column and by how much the largest of the moments exceeds it (blank: within it)."""
    if not by_moment:
        return []
    moments = list(by_moment)
    headers = [f"MB after the {moment}" for moment in moments] + (["budget MB", "over budget MB"] if budget else [])
    lines = ["", f"| {title} | {' | '.join(headers)} |", f"|---|{'---:|' * len(headers)}"]
    for name in dict.fromkeys(name for sizes in by_moment.values() for name in sizes):
        cells = [_cell(by_moment[moment].get(name)) for moment in moments]
        if budget:
            allowed, held = budget.get(name), max((sizes.get(name) or 0.0) for sizes in by_moment.values())
            cells += [_cell(allowed), _cell(round(held - allowed, 1)) if allowed is not None and held > allowed else ""]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if isinstance(value, int) or abs(value) >= 100 else f"{value:,.2f}"
