"""`crmw`: run the pipeline through Airflow, generate sample sources, write a run report, erase a customer, serve the Airflow UI.

Expected failures (a bad argument or setting, a failed run) end with one line on stderr naming
the input and what was expected, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from crmw.airflow_runner import RunError, airflow_environment, run_dag, serve, warehouse_run_lock
from crmw.bench import TIERS
from warehouse import WarehouseSettingsError, WarehouseUrlError, connect, parse_warehouse_url

OUTPUT_SCHEMAS = ("staging", "marts", "published", "features", "ml", "activation")


# What `crmw run --help` says it reads: the settings a first run needs, and where the rest are.
RUN_ENVIRONMENT = """\
environment variables read (README "Configuration" lists every setting):
  WAREHOUSE_URL            the warehouse: duckdb:///path/file.duckdb or
                           postgresql://user:password@host:port/database
                           (default duckdb:///<repo>/.local/warehouse.duckdb)
  CRMW_SOURCE_DIR          folder of the source exports (default <repo>/.local/sources)
  CRMW_SALES_DB_URL        the sales database (default sqlite:///$CRMW_SOURCE_DIR/sales.sqlite)
  CRMW_SOURCE_CONTRACT     the source contract file (default extract_load/source_contract.yml)
  CRMW_EXPORT_DIR          files written for other tools (default <repo>/.local/exports)
  AIRFLOW_HOME             Airflow's metadata and run logs (default <repo>/.local/airflow)
  CRMW_RETRY_DELAY_SECONDS the delay before a retry (--retries) (default 300)
  CRMW_<MODEL>__<SETTING>  a model setting, e.g. CRMW_ASSOCIATION_RULES__TOP_K_OFFERS=10
"""


class UsageError(ValueError):
    """A command-line argument is wrong."""


def _date(option: str, text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected a date as YYYY-MM-DD") from None


def _dates(args: argparse.Namespace) -> list[dt.date]:
    if args.date:
        if args.date_from or args.date_to:
            raise UsageError("--date: give either --date or --from/--to, not both")
        return [_not_future("--date", _date("--date", args.date))]
    if not (args.date_from and args.date_to):
        raise UsageError("run: expected --date D, or --from D1 --to D2")
    first, last = _date("--from", args.date_from), _date("--to", args.date_to)
    if last < first:
        raise UsageError(f"--to {last}: expected a date on or after --from {first}")
    _not_future("--to", last)
    return [first + dt.timedelta(days=offset) for offset in range((last - first).days + 1)]


def _not_future(option: str, day: dt.date) -> dt.date:
    """A run's logical date is a day whose data may have arrived: never after today (UTC). A typo
    such as 2099 would otherwise publish features and segments as of that day, and BI's `_latest`
    views would show them."""
    today = dt.datetime.now(dt.timezone.utc).date()
    if day > today:
        raise UsageError(f"{option} {day}: a logical date after today ({today}, UTC) has no data yet; expected {today} or earlier")
    return day


def _retries(text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"--retries {text!r}: expected a whole number of retries, 0 or more")
    return int(text)


def _params(pairs: list[str]) -> dict[str, object]:
    """--param NAME=VALUE pairs as DAG params; a VALUE that reads as JSON (a number, true, null) is
    taken as such. A model setting, `<model>__<setting>=VALUE`, goes into its model's param."""
    import json

    from ml_tasks.contract import BadParameter, nest_setting_params

    parsed = []
    for pair in pairs:
        name, separator, text = pair.partition("=")
        if not separator or not name:
            raise UsageError(f"--param {pair!r}: expected NAME=VALUE, e.g. association_rules__top_k_offers=10")
        try:
            parsed.append((name, json.loads(text)))
        except ValueError:
            parsed.append((name, text))
    try:
        return nest_setting_params(parsed)
    except BadParameter as error:
        raise UsageError(f"--{error}") from None


def _check_reachable(url: str) -> None:
    """Fail fast, before Airflow starts, on a warehouse that cannot be reached. A local Spark folder is
    always there, but Spark may not start: its runtime is checked without starting one, which would
    cost a JVM held through the run (and Derby, its metastore, admits one process at a time)."""
    warehouse = parse_warehouse_url(url)
    if warehouse.engine == "spark":
        from warehouse.spark import spark_missing

        missing = spark_missing()
        if missing:
            raise WarehouseUrlError(f"WAREHOUSE_URL={warehouse.redacted()!r}: a local Spark cannot start here: {missing}")
        return
    with connect(url):
        pass


def _command_run(args: argparse.Namespace) -> int:
    from extract_load.load import stale_deliveries

    dates = _dates(args)
    retries = _retries(args.retries)
    env = airflow_environment(os.environ)
    sources = Path(env["CRMW_SOURCE_DIR"])
    if not sources.is_dir():
        raise UsageError(
            f"CRMW_SOURCE_DIR={str(sources)!r}: folder not found; expected the source exports"
            " (generate sample ones with 'crmw simulate')"
        )
    params = _params(args.param)
    span = f"{dates[0]}" if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    holder = f"crmw run for {span} (pid {os.getpid()}, since {started} UTC, logs in {Path(env['AIRFLOW_HOME']) / 'logs'})"
    with warehouse_run_lock(env, holder):
        _check_reachable(env["WAREHOUSE_URL"])
        run_dag(env, dates, full_refresh=args.full_refresh, params=params, retries=retries)
        with connect(env["WAREHOUSE_URL"]) as warehouse:
            counts = warehouse.row_counts(OUTPUT_SCHEMAS)
            stale = [f"{day}: {line}" for day, lines in stale_deliveries(warehouse, dates).items() for line in lines]
    print(f"\nOutput tables in {env['WAREHOUSE_URL'].split('@')[-1]}:")
    width = max((len(name) for name, _ in counts), default=0)
    for name, rows in counts:
        print(f"  {name:<{width}}  {rows:>10,} rows")
    if stale:
        print("\nWarning: deliveries missing for the run's dates (the models used what had arrived):")
        for line in stale:
            print(f"  {line}")
    from ml_tasks.tasks import export_dir

    folder = export_dir(env)
    exports = sorted(path for path in folder.glob("*/*.csv") if path.stem.endswith(dates[-1].isoformat()))
    if exports:
        print(f"\nFiles for other tools ({folder}):")
        for path in exports:
            print(f"  {path.relative_to(folder)}")
    from reporting.run_report import report_dir, report_path

    report = report_path(report_dir(env), dates[-1])
    if report.exists():
        print(f"\nRun report (open it in a browser): {report}")
    return 0


def _command_report(args: argparse.Namespace) -> int:
    from reporting.run_report import write_report

    day = _not_future("--date", _date("--date", args.date))
    env = airflow_environment(os.environ)
    path = write_report(day, args.run_id, env["WAREHOUSE_URL"])
    print(f"crmw: wrote {path} (index: {path.with_name('index.html')})")
    return 0


def _command_simulate(args: argparse.Namespace) -> int:
    from simulator import SimulationSettings, append_day, simulate
    from simulator.generate import print_progress

    out = Path(args.out).resolve()
    if args.append_day:
        counts = append_day(out, _date("--append-day", args.append_day), progress=print_progress)
    else:
        missing = [name for name in ("customers", "start", "days") if getattr(args, name) is None]
        if missing:
            raise UsageError(f"--{missing[0]}: required (or give --append-day DATE to extend an existing --out)")
        settings = SimulationSettings(
            customers=args.customers,
            start=_date("--start", args.start),
            days=args.days,
            seed=args.seed,
            out=out,
            sales_db=args.sales_db,
            dirty_rate=args.dirty_rate,
            new_column_day=_date("--new-column-day", args.new_column_day) if args.new_column_day else None,
        )
        counts = simulate(settings, progress=print_progress)
    summary = ", ".join(f"{entity} {rows:,}" for entity, rows in counts.items())
    print(f"crmw: wrote sources to {out} ({summary} rows)")
    return 0


def _command_bi_export(args: argparse.Namespace) -> int:
    from ml_tasks.tasks import bi_export
    from warehouse.bi import BiSettingsError

    env = airflow_environment(os.environ)
    as_of = _date("--date", args.date) if args.date else None
    try:
        out, rows = bi_export(Path(args.out) if args.out else None, as_of, env["WAREHOUSE_URL"], env)
    except (BiSettingsError, ValueError) as error:
        raise UsageError(str(error)) from None
    print(f"crmw: wrote {out} ({len(rows)} tables, {sum(rows.values()):,} rows; no names, contacts or source ids,"
          " customers by salted key, ages in bands)")
    return 0


def _command_forget(args: argparse.Namespace) -> int:
    import getpass

    from ml_tasks.tasks import export_dir
    from warehouse.erasure import UnknownCustomer, forget

    env = airflow_environment(os.environ)
    requested_by = args.requested_by or f"crmw forget ({getpass.getuser()})"
    try:
        erasures = forget(args.customer, requested_by, export_dir(env) / "activation", env["WAREHOUSE_URL"])
    except UnknownCustomer as error:
        raise UsageError(f"--customer: {error}") from None
    for erasure in erasures:
        print(f"crmw: erased {erasure.summary()}")
    print("crmw: logged in audit.erasures; a later delivery of these customers' CRM ids or emails is erased as it loads")
    return 0


def _command_bench(args: argparse.Namespace) -> int:
    from crmw.bench import run_benchmark

    if args.runs < 1:
        raise UsageError(f"--runs {args.runs}: expected 1 or more runs")
    path = run_benchmark(args.tier, args.engine, args.runs)
    print(f"crmw: wrote {path} and {path.with_suffix('.md').name}")
    return 0


def _command_airflow(_args: argparse.Namespace) -> int:
    return serve(airflow_environment(os.environ))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crmw", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the crm_daily DAG through Airflow for logical dates, in order",
        description="Run the crm_daily DAG through Airflow for logical dates, in order.",
        epilog=RUN_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--date", help="one logical date, YYYY-MM-DD")
    run.add_argument("--from", dest="date_from", help="first logical date of a range")
    run.add_argument("--to", dest="date_to", help="last logical date of a range (inclusive)")
    run.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a DAG param for the run, e.g. a model setting: association_rules__top_k_offers=10 (repeatable)",
    )
    run.add_argument(
        "--retries", default="0", metavar="N",
        help="retry a failed task N times (default 0: fail at once; the scheduled DAG uses CRMW_TASK_RETRIES)",
    )
    run.add_argument(
        "--full-refresh", action="store_true", help="reload every source from scratch at the first date (DAG param full_refresh)"
    )
    run.set_defaults(handler=_command_run)

    simulate = commands.add_parser("simulate", help="generate sample source systems with planted truth")
    simulate.add_argument("--customers", type=int, help="customers at the start (the base grows a little daily)")
    simulate.add_argument("--start", help="first simulated day, YYYY-MM-DD")
    simulate.add_argument("--days", type=int, help="number of days")
    simulate.add_argument("--seed", type=int, default=0, help="random seed: same seed, same output (default 0)")
    simulate.add_argument("--out", required=True, help="new or empty folder to write to (or the one to extend)")
    simulate.add_argument("--sales-db", help="sales database URL (default: sqlite file sales.sqlite in --out)")
    simulate.add_argument("--dirty-rate", type=float, default=0.01, help="share of records given a defect (default 0.01)")
    simulate.add_argument("--new-column-day", help="from this day on, customers.csv carries an extra column")
    simulate.add_argument("--append-day", help="add this day (the day after the last one written) to --out")
    simulate.set_defaults(handler=_command_simulate)

    report = commands.add_parser(
        "report",
        help="write the run report of an as-of date from what the warehouse holds (the DAG's report task does it daily)",
        description="Write the run report of an as-of date: a self-contained HTML page of the published KPIs, each"
        " model's results and quality and the load's data quality, kept beside an index of earlier reports in"
        " $CRMW_EXPORT_DIR/reports.",
    )
    report.add_argument("--date", required=True, help="the as-of date, YYYY-MM-DD")
    report.add_argument("--run-id", default="crmw report", help="what the report names as its run (default 'crmw report')")
    report.set_defaults(handler=_command_report)

    bi_export = commands.add_parser(
        "bi-export",
        help="write BI's tables, without personal data, into a DuckDB file of their own (DuckDB warehouses)",
        description="Write the published marts and the models' tables into a DuckDB file of their own, for a desktop"
        " BI tool: no names, contacts, source ids or comments, customers by a salted key (CRMW_BI_KEY_SALT), ages"
        " in bands. The file is replaced whole; one written with another salt is refused.",
    )
    bi_export.add_argument("--out", help="the file to write (default $CRMW_EXPORT_DIR/bi/crm_bi.duckdb)")
    bi_export.add_argument("--date", help="the date ages are counted at (default: the newest published as-of date)")
    bi_export.set_defaults(handler=_command_bi_export)

    forget = commands.add_parser(
        "forget",
        help="the right to erasure: erase customers' personal fields in every schema and the activation files",
        description="Erase the personal fields (names, emails, phone, street, birth date, comments) of customers in"
        " raw, staging, marts, published, ML and activation tables and the dated activation CSV files, keeping"
        " keys and amounts; log it in audit.erasures. A later delivery of the same person is erased as it loads.",
    )
    forget.add_argument("--customer", action="append", required=True, metavar="KEY",
                        help="a customer key (customer_id of marts.dim_customers); repeatable")
    forget.add_argument("--requested-by", help="who asked, for the audit (default 'crmw forget (<login>)')")
    forget.set_defaults(handler=_command_forget)

    bench = commands.add_parser(
        "bench",
        help="time every stage of the pipeline on simulated sources, then a steady day",
        description="Time every stage of the pipeline on simulated sources of a tier (customers × days),"
        " then a steady incremental day; results go to bench/results/ as JSON and a markdown table.",
    )
    bench.add_argument("--tier", choices=tuple(TIERS), default="small",
                       help="tiny 200 × 60 days, small 10,000, medium 100,000, large 1,000,000 customers × 730 days (default small)")
    bench.add_argument("--engine", choices=("duckdb", "postgres", "spark"), default="duckdb",
                       help="the warehouse: a scratch DuckDB file, a throwaway PostgreSQL server or a scratch local Spark"
                       " folder, Spark running in this process (needs pyspark and Java 17) (default duckdb)")
    bench.add_argument("--runs", type=int, default=1, help="runs of the whole tier; medians are reported (default 1)")
    bench.set_defaults(handler=_command_bench)

    airflow = commands.add_parser("airflow", help="serve the Airflow UI and scheduler for this project")
    airflow.set_defaults(handler=_command_airflow)
    return parser


def main(argv: list[str] | None = None) -> int:
    from extract_load.contract import ContractError
    from simulator import SimulationError

    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, WarehouseUrlError, WarehouseSettingsError, RunError, SimulationError, ContractError) as error:
        print(f"crmw: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
