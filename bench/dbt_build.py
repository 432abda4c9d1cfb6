"""dbt build time: a full `dbt build` of the project, and the incremental build of one more day.

    .venv/bin/python -m bench.dbt_build --sources /path/to/simulated --engine duckdb --runs 3
    .venv/bin/python -m bench.dbt_build --sources /path/to/simulated --engine postgres --warehouse-url postgresql://...

- The sources (a `crmw simulate` output) are copied (or, with --in-place, used as they are: at a
  million customers a copy is 20 GB), then raw is loaded up to their last day (timed, not part of
  the figures).
- Full build: `dbt build --full-refresh` (models, seeds, data and unit tests), --runs times on the
  same raw; each run rebuilds every table from scratch.
- Catch-up: the first load delivers every SQL row on the last day, so the facts' reprocessing
  window (3 days) holds all history until a build has seen deliveries 4 days later. The simulator
  appends --catch-up-days days, raw loads each, and one `dbt build` catches up (timed, reported).
- Incremental day: one more day appended and loaded, then `dbt build` runs --runs times (a rerun
  redoes the same reprocessing window): a steady day of the daily schedule.
- Prints JSON lines: each run (seconds, dbt's status counts, the slowest nodes), then the medians.

PostgreSQL runs use --warehouse-url (a server whose user may create databases) or a throwaway
server started from the machine's binaries, as the tests do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench.extract_load_throughput import _warehouse_factory
from simulator import append_day
from crmw.scratch import load_raw, run_dbt

SLOWEST_NODES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, required=True, help="a simulator output (copied, never changed, unless --in-place)")
    parser.add_argument("--in-place", action="store_true", help="use --sources without a copy: the next day is appended to them")
    parser.add_argument("--engine", choices=("duckdb", "postgres"), default="duckdb")
    parser.add_argument("--warehouse-url", help="PostgreSQL server URL for --engine postgres")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--catch-up-days", type=int, default=4,
                        help="days loaded and built once before the measured day (reprocessing window + 1)")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crmw-bench-dbt-"))

    sources = args.sources
    if not args.in_place:
        sources = workdir / "sources"
        shutil.copytree(args.sources, sources)
    last_day = max(dt.date.fromisoformat(path.name) for path in (sources / "crm").iterdir())
    with ExitStack() as stack:
        url = _warehouse_factory(args, workdir, stack)()
        _load(args.engine, url, sources, last_day)
        full = [_build(url, workdir, "full build", run, "--full-refresh") for run in range(args.runs)]

        for offset in range(1, args.catch_up_days + 1):
            day = last_day + dt.timedelta(days=offset)
            append_day(sources, day)
            _load(args.engine, url, sources, day)
        if args.catch_up_days:
            _build(url, workdir, f"catch-up build ({args.catch_up_days} days)", 0)
        measured_day = last_day + dt.timedelta(days=args.catch_up_days + 1)
        append_day(sources, measured_day)
        _load(args.engine, url, sources, measured_day)
        incremental = [_build(url, workdir, "incremental day", run) for run in range(args.runs)]

    print(json.dumps({
        "engine": args.engine,
        "sources": str(args.sources),
        "runs": args.runs,
        "median_full_build_seconds": statistics.median(full),
        "median_incremental_day_seconds": statistics.median(incremental),
    }), flush=True)


def _load(engine: str, url: str, sources: Path, day: dt.date) -> None:
    """Raw takes the sources' deliveries up to `day` (timed, not part of the figures)."""
    started = time.perf_counter()
    load_raw(url, sources, day)
    print(json.dumps({"engine": engine, "step": "raw load", "day": day.isoformat(),
                      "seconds": round(time.perf_counter() - started, 2)}), flush=True)


def _build(url: str, workdir: Path, step: str, run: int, *flags: str) -> float:
    """One timed `dbt build`; reports its outcome and slowest nodes from dbt's run_results.json."""
    started = time.perf_counter()
    result = run_dbt(url, "build", *flags, tmp_path=workdir, check=False)
    seconds = round(time.perf_counter() - started, 2)
    outcome = json.loads((workdir / "dbt-target" / "run_results.json").read_text())["results"]
    slowest = sorted(outcome, key=lambda node: node["execution_time"], reverse=True)[:SLOWEST_NODES]
    print(json.dumps({
        "step": step,
        "run": run,
        "seconds": seconds,
        "exit_code": result.returncode,
        "statuses": Counter(node["status"] for node in outcome),
        "slowest": {node["unique_id"].split(".", 2)[2]: round(node["execution_time"], 2) for node in slowest},
    }), flush=True)
    return seconds


if __name__ == "__main__":
    main()
