"""Extract-load throughput: a first load of years of simulated sources, and whether a daily
increment slows down as history grows.

    .venv/bin/python -m bench.extract_load_throughput --customers 100000 --days 730 --engine duckdb --runs 3
    .venv/bin/python -m bench.extract_load_throughput --sources /path/to/simulated --engine postgres

- First load: every source, all history at once, into an empty warehouse; rows read per second
  (the issue's targets at 100,000 customers: 200k rows/s on DuckDB, 50k rows/s on PostgreSQL).
- Daily increment: the day after the history, loaded onto (a) the whole history and (b) the same
  sources cut to their last 30 days, so both load exactly the same increment; each is run --runs
  times (a rerun redoes the same work) and the medians compared (target: at most 1.2x).
- Key reconciliation of the SQL tables (its own DAG task after each table's extract): it reads
  every key, so it grows with the history; timed beside the increment.

PostgreSQL runs use --warehouse-url (a server whose user may create databases) or a throwaway
server started from the machine's binaries, as the tests do. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from extract_load.contract import load_contract
from extract_load.load import ExtractSettings, extract_system, reconcile_system
from simulator import SimulationSettings, append_day, simulate

START = dt.date(2024, 1, 1)
RECENT_DAYS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--sources", type=Path, help="a simulator output to use (copied, never changed)")
    parser.add_argument("--engine", choices=("duckdb", "postgres"), default="duckdb")
    parser.add_argument("--warehouse-url", help="PostgreSQL server URL for --engine postgres")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmw-bench-extract-"))

    whole = workdir / "whole-history"
    if args.sources:
        shutil.copytree(args.sources, whole)
    else:
        simulate(SimulationSettings(customers=args.customers, start=START, days=args.days, seed=11, out=whole))
    last_day = max(dt.date.fromisoformat(path.name) for path in (whole / "crm").iterdir())
    increment_day = last_day + dt.timedelta(days=1)
    append_day(whole, increment_day)
    recent = workdir / "last-30-days"
    _cut_to_recent(whole, recent, last_day - dt.timedelta(days=RECENT_DAYS - 1))

    with ExitStack() as stack:
        new_warehouse = _warehouse_factory(args, workdir, stack)
        results = {}
        for label, sources in (("24 months" if args.days >= 700 else f"{args.days} days", whole), ("1 month", recent)):
            url = new_warehouse()
            first = _load(url, sources, last_day, "first-load")
            print(json.dumps({"history": label, "step": "first load", **first}), flush=True)
            timings = []
            for run in range(args.runs):
                timings.append(_load(url, sources, increment_day, f"increment-{run}"))
                print(json.dumps({"history": label, "step": "daily increment", "run": run, **timings[-1]}), flush=True)
            results[label] = timings
        (long_label, long_runs), (short_label, short_runs) = results.items()
        long_median = statistics.median(run["seconds"] for run in long_runs)
        short_median = statistics.median(run["seconds"] for run in short_runs)
        print(json.dumps({
            "engine": args.engine,
            "increment_rows": long_runs[0]["rows_read"],
            f"median_seconds_{long_label}": long_median,
            f"median_seconds_{short_label}": short_median,
            "ratio": round(long_median / short_median, 2),
            f"median_reconcile_seconds_{long_label}": statistics.median(run["reconcile_seconds"] for run in long_runs),
            f"median_reconcile_seconds_{short_label}": statistics.median(run["reconcile_seconds"] for run in short_runs),
        }), flush=True)


def _cut_to_recent(whole: Path, recent: Path, first_kept: dt.date) -> None:
    """A copy of `whole` holding only what was written from `first_kept` on."""
    shutil.copytree(whole, recent)
    for system in ("crm", "service"):
        for folder in (recent / system).iterdir():
            if dt.date.fromisoformat(folder.name) < first_kept:
                shutil.rmtree(folder)
    with sqlite3.connect(recent / "sales.sqlite") as db:
        for entity in load_contract().entities.values():
            if entity.system.format == "sql" and entity.name != "products":
                db.execute(f"delete from {entity.name} where {entity.cursor} < ?", (first_kept.isoformat(),))
    with sqlite3.connect(recent / "sales.sqlite") as db:
        db.execute("vacuum")


def _warehouse_factory(args: argparse.Namespace, workdir: Path, stack: ExitStack):
    """A function giving a new empty warehouse URL on the chosen engine each call."""
    if args.engine == "duckdb":
        return lambda: f"duckdb:///{workdir / f'warehouse-{uuid.uuid4().hex[:8]}.duckdb'}"
    from crmw.scratch import new_postgres_database, throwaway_postgres

    server = args.warehouse_url or stack.enter_context(throwaway_postgres())
    return lambda: new_postgres_database(server, f"crmw_bench_{uuid.uuid4().hex[:8]}")


def _load(url: str, sources: Path, day: dt.date, run_id: str) -> dict:
    settings = ExtractSettings(
        source_dir=sources, sales_db_url=f"sqlite:///{sources / 'sales.sqlite'}", max_quarantine_ratio=1.0
    )
    contract = load_contract()
    started = time.perf_counter()
    audits = [
        audit
        for system in contract.systems
        for audit in extract_system(system, day, run_id, settings=settings, warehouse_url=url)
    ]
    seconds = time.perf_counter() - started
    reconcile_started = time.perf_counter()
    reconciled = [
        audit
        for system in contract.systems
        if contract.systems[system].format == "sql"
        for audit in reconcile_system(system, day, run_id, settings=settings, warehouse_url=url)
    ]
    reconcile_seconds = time.perf_counter() - reconcile_started
    rows = sum(audit.rows_read for audit in audits)
    return {
        "seconds": round(seconds, 2),
        "rows_read": rows,
        "rows_per_second": round(rows / seconds),
        "reconcile_seconds": round(reconcile_seconds, 2),
        "deleted": sum(audit.rows_deleted for audit in reconciled),
        "recovered": sum(audit.rows_recovered for audit in reconciled),
        "per_table_seconds": {f"{audit.system}.{audit.entity}:{audit.step}": audit.seconds for audit in audits + reconciled},
    }


if __name__ == "__main__":
    main()
