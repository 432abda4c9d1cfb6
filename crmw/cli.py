"""`crmw`: run the pipeline through Airflow, generate sample sources, serve the Airflow UI.

Expected failures (a bad argument or setting, a failed run) end with one line on stderr naming
the input and what was expected, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from crmw.airflow_runner import RunError, airflow_environment, run_dag, serve
from warehouse import WarehouseUrlError, connect

OUTPUT_SCHEMAS = ("staging", "marts", "features", "ml", "activation")


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


def _params(pairs: list[str]) -> dict[str, object]:
    """--param NAME=VALUE pairs; a VALUE that reads as JSON (a number, true, null) is taken as such."""
    import json

    params: dict[str, object] = {}
    for pair in pairs:
        name, separator, text = pair.partition("=")
        if not separator or not name:
            raise UsageError(f"--param {pair!r}: expected NAME=VALUE, e.g. association_rules__top_k_offers=10")
        try:
            params[name] = json.loads(text)
        except ValueError:
            params[name] = text
    return params


def _command_run(args: argparse.Namespace) -> int:
    dates = _dates(args)
    env = airflow_environment(os.environ)
    sources = Path(env["CRMW_SOURCE_DIR"])
    if not sources.is_dir():
        raise UsageError(
            f"CRMW_SOURCE_DIR={str(sources)!r}: folder not found; expected the source exports"
            " (generate sample ones with 'crmw simulate')"
        )
    with connect(env["WAREHOUSE_URL"]):
        pass  # fail fast, before Airflow starts, on a warehouse that cannot be reached
    run_dag(env, dates, full_refresh=args.full_refresh, params=_params(args.param))
    with connect(env["WAREHOUSE_URL"]) as warehouse:
        counts = warehouse.row_counts(OUTPUT_SCHEMAS)
    print(f"\nOutput tables in {env['WAREHOUSE_URL'].split('@')[-1]}:")
    width = max((len(name) for name, _ in counts), default=0)
    for name, rows in counts:
        print(f"  {name:<{width}}  {rows:>10,} rows")
    from ml_tasks.tasks import export_dir

    folder = export_dir(env)
    exports = sorted(path for path in folder.glob("*/*.csv") if path.stem.endswith(dates[-1].isoformat()))
    if exports:
        print(f"\nFiles for other tools ({folder}):")
        for path in exports:
            print(f"  {path.relative_to(folder)}")
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


def _command_airflow(_args: argparse.Namespace) -> int:
    return serve(airflow_environment(os.environ))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crmw", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the crm_daily DAG through Airflow for logical dates, in order")
    run.add_argument("--date", help="one logical date, YYYY-MM-DD")
    run.add_argument("--from", dest="date_from", help="first logical date of a range")
    run.add_argument("--to", dest="date_to", help="last logical date of a range (inclusive)")
    run.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a DAG param for the run, e.g. a model setting: association_rules__top_k_offers=10 (repeatable)",
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

    airflow = commands.add_parser("airflow", help="serve the Airflow UI and scheduler for this project")
    airflow.set_defaults(handler=_command_airflow)
    return parser


def main(argv: list[str] | None = None) -> int:
    from extract_load.contract import ContractError
    from simulator import SimulationError

    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, WarehouseUrlError, RunError, SimulationError, ContractError) as error:
        print(f"crmw: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
